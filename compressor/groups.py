"""The structural groups of a weight tensor, as vectorized views.

A *group type* names a way to cut a weight tensor into equal-sized, non-overlapping groups (filters,
channels, kernels, rows, blocks ...). This module turns a group type and a shape into a
``GroupLayout``, computes one statistic per group (``group_norms``), expands a per-group keep vector
back to a mask of the weight's shape (``expand_group_mask``), and validates group type names and
their fit to a tensor's rank with errors written for people. Regularizers, structured pruners and
sparsity metrics all share it, so a name means the same thing everywhere.

Group types (``F, C, kh, kw`` = a convolution weight's filters, input channels, kernel height and
width; ``out, in`` = a ``Linear`` weight as PyTorch stores it):

=================  ==========  ===================================================  ==============
name               rank        one group is                                         groups, index
=================  ==========  ===================================================  ==============
``Filters``/``3D`` >= 3        one output filter ``W[f]`` (C*kh*kw elements)        F, by f
``Channels``       >= 2        one input channel across every filter ``W[:, c]``    C (in), by c
``2D``             4           one kh x kw kernel ``W[f, c]``                       F*C, f*C + c
``4D``             4           the whole tensor                                     1
``Rows``           2           input feature ``j``: stored column ``W[:, j]``       in, by j
``Cols``           2           output neuron ``i``: stored row ``W[i, :]``          out, by i
``InputFeatures``  2           input feature ``j``: stored column ``W[:, j]``       in, by j
``OutputNeurons``  2           output neuron ``i``: stored row ``W[i, :]``          out, by i
``Blocks``         any >= 2    a tile of shape ``block_shape`` (must divide the     row-major over
                               shape), e.g. ``[1, 8, 1, 1]`` = 8 consecutive        the tile grid
                               channels at one kernel position of one filter
=================  ==========  ===================================================  ==============

**Rows and Cols follow Distiller's "transposed GEMM" convention.** PyTorch stores a ``Linear``
weight as ``(out, in)`` and computes ``y = x @ W.T``; Distiller reasons about the GEMM operand
``W.T`` of shape ``(in, out)``, whose *rows* are input features and whose *columns* are output
neurons. So here ``Rows`` = one group per input feature (a stored column, dim 1 of ``W``) and
``Cols`` = one group per output neuron (a stored row, dim 0 of ``W``). This is what Distiller's
ranked structure pruner (Rows pruning of an FC layer removes input features) and its ``Rows (%)``
/ ``Cols (%)`` sparsity columns mean. On a 2D weight ``Channels`` is the same partition as ``Rows``.
Distiller's own group-lasso regularizer and structure thresholding used the opposite (stored-matrix)
meaning, so ``compressor.regularizers`` translates those two names for Distiller's sake; the
unambiguous ``InputFeatures`` / ``OutputNeurons`` mean the same groups everywhere.

Combined types (``Rows+Cols``, ``Channels+4D`` ...) overlap, so they are not partitions; this
module only names them (``COMBINED_GROUP_TYPES``, ``split_group_type``) and checks that each part
fits. Users of a combined type handle each part separately (a group-lasso penalty sums them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

from .errors import ComponentArgError, listing, suggest

# Canonical names; "3D" is Distiller's alias of "Filters".
GROUP_TYPES: Tuple[str, ...] = ("2D", "3D", "4D", "Blocks", "Channels", "Cols", "Filters",
                                "InputFeatures", "OutputNeurons", "Rows")
GROUP_TYPE_ALIASES: Dict[str, str] = {"3D": "Filters"}

# Overlapping combinations: the name -> its parts, each a partition type above.
COMBINED_GROUP_TYPES: Dict[str, Tuple[str, ...]] = {
    "Rows+Cols": ("Rows", "Cols"),
    "Cols+Rows": ("Cols", "Rows"),
    "Channels+4D": ("Channels", "4D"),
    "4D+Channels": ("4D", "Channels"),
}

# Per-group statistics accepted by ``group_norms`` (case-insensitive, so Distiller's
# 'Max', 'Mean_Abs', 'L1', 'L2', 'Mean_L1', 'Mean_L2' spellings work too).
NORMS: Tuple[str, ...] = ("l1", "l2", "max", "mean_abs", "mean_l1", "mean_l2", "nnz")


def _fits(group_type: str, rank: int) -> bool:
    """Whether a partition type (canonical or alias) is defined for tensors of ``rank``."""
    t = GROUP_TYPE_ALIASES.get(group_type, group_type)
    if t == "Filters":
        return rank >= 3
    if t == "Channels" or t == "Blocks":
        return rank >= 2
    if t in ("2D", "4D"):
        return rank == 4
    if t in ("Rows", "Cols", "InputFeatures", "OutputNeurons"):
        return rank == 2
    return False


def split_group_type(group_type: str) -> Tuple[str, ...]:
    """Partition types behind a name: ``'Rows+Cols'`` -> ``('Rows', 'Cols')``; ``'3D'`` -> ``('3D',)``."""
    return COMBINED_GROUP_TYPES.get(group_type, (group_type,))


def canonical_group_type(group_type: str) -> str:
    """Resolve aliases (``'3D'`` -> ``'Filters'``); other names are returned unchanged."""
    return GROUP_TYPE_ALIASES.get(group_type, group_type)


def valid_group_types(rank: int, allowed: Optional[Iterable[str]] = None) -> list:
    """The names in ``allowed`` (default: every partition type) that fit a rank-``rank`` tensor, sorted."""
    names = GROUP_TYPES if allowed is None else tuple(allowed)
    return sorted(n for n in names if all(_fits(p, rank) for p in split_group_type(n)))


def validate_group_type_name(group_type, key: str = "group_type",
                             allowed: Optional[Iterable[str]] = None) -> str:
    """Return ``group_type`` if it is one of ``allowed`` (default: ``GROUP_TYPES``), else raise.

    Shape-independent: use it where the tensor is not known yet (constructors).
    """
    names = tuple(GROUP_TYPES if allowed is None else allowed)
    if isinstance(group_type, str) and group_type not in names and (
            group_type in GROUP_TYPES or group_type in COMBINED_GROUP_TYPES):
        raise ComponentArgError(
            key, f"group type {group_type!r} is not supported here; valid: {listing(names, limit=40)}")
    if not isinstance(group_type, str) or group_type not in names:
        raise ComponentArgError(
            key, f"unknown group type {group_type!r}{suggest(str(group_type), names)}; "
                 f"valid: {listing(names, limit=40)}")
    return group_type


def validate_block_shape(block_shape, key: str = "block_shape") -> Tuple[int, ...]:
    """Return ``block_shape`` as a tuple of positive ints, or raise ``ComponentArgError``."""
    ok = (isinstance(block_shape, (list, tuple)) and len(block_shape) >= 2
          and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block_shape))
    if not ok:
        raise ComponentArgError(
            key, f"block_shape must be a list of positive integers, one per weight dimension, "
                 f"got {block_shape!r}; valid: e.g. [1, 8, 1, 1] for a conv weight")
    return tuple(block_shape)


def check_group_type(group_type, shape: Sequence[int], key: str = "group_type", *,
                     block_shape=None, what: str = "a tensor",
                     allowed: Optional[Iterable[str]] = None) -> None:
    """Raise ``ComponentArgError(key, ...)`` unless ``group_type`` can cut a tensor of ``shape``.

    Checks the name (against ``allowed``, default ``GROUP_TYPES``; combined names are accepted when
    listed in ``allowed``), that every part fits the tensor's rank, and for ``Blocks`` that
    ``block_shape`` has one entry per dimension and divides the shape. ``what`` names the tensor in
    the message (e.g. ``"parameter 'fc.weight'"``). The message lists the valid types for that rank.
    """
    validate_group_type_name(group_type, key, allowed)
    shape = tuple(int(s) for s in shape)
    rank = len(shape)
    for part in split_group_type(group_type):
        if not _fits(part, rank):
            valid = valid_group_types(rank, allowed)
            raise ComponentArgError(
                key, f"group type {group_type!r} does not fit {what} of shape {shape} (rank {rank}); "
                     f"valid for rank {rank}: {listing(valid, limit=40) if valid else 'none'}")
        if canonical_group_type(part) == "Blocks":
            if block_shape is None:
                raise ComponentArgError(
                    key, "group type 'Blocks' needs a block_shape; valid: a list with one positive "
                         f"integer per dimension of {what}, e.g. {[1] * (rank - 1) + [rank]}")
            bs = validate_block_shape(block_shape, key)
            if len(bs) != rank:
                raise ComponentArgError(
                    key, f"block_shape {list(bs)} has {len(bs)} entries but {what} of shape {shape} "
                         f"has rank {rank}; valid: one entry per dimension")
            bad = [d for d in range(rank) if shape[d] % bs[d]]
            if bad:
                d = bad[0]
                raise ComponentArgError(
                    key, f"block_shape {list(bs)} does not divide {what} of shape {shape} "
                         f"(dimension {d}: {shape[d]} is not a multiple of {bs[d]}); "
                         f"valid: block sizes that divide each dimension")


@dataclass(frozen=True)
class GroupLayout:
    """How a weight of ``weight_shape`` is cut into groups.

    The weight is reshaped (a view for contiguous tensors) to ``view_shape``; ``group_dims`` are the
    dimensions of that view that index groups and ``reduce_dims`` the ones a per-group statistic
    reduces over. Groups are numbered row-major over ``grid_shape``.
    """
    weight_shape: Tuple[int, ...]
    view_shape: Tuple[int, ...]
    group_dims: Tuple[int, ...]

    @property
    def reduce_dims(self) -> Tuple[int, ...]:
        return tuple(d for d in range(len(self.view_shape)) if d not in self.group_dims)

    @property
    def grid_shape(self) -> Tuple[int, ...]:
        return tuple(self.view_shape[d] for d in self.group_dims)

    @property
    def n_groups(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def group_size(self) -> int:
        return math.prod(self.view_shape[d] for d in self.reduce_dims)


@lru_cache(maxsize=1024)
def _layout(shape: Tuple[int, ...], group_type: str, block_shape: Optional[Tuple[int, ...]]) -> GroupLayout:
    t = canonical_group_type(group_type)
    if t == "Blocks":
        view = tuple(x for n, b in zip(shape, block_shape) for x in (n // b, b))
        return GroupLayout(shape, view, tuple(range(0, len(view), 2)))
    # Every partition type below leaves at least one dimension to reduce over (an empty dim tuple
    # would make torch reductions reduce over *all* dimensions).
    dims = {"Filters": (0,), "Channels": (1,), "2D": (0, 1), "4D": (), "Rows": (1,), "Cols": (0,),
            "InputFeatures": (1,), "OutputNeurons": (0,)}[t]
    return GroupLayout(shape, shape, dims)


def group_layout(shape: Sequence[int], group_type: str, block_shape: Optional[Sequence[int]] = None,
                 key: str = "group_type") -> GroupLayout:
    """The ``GroupLayout`` of a ``shape`` cut by a partition ``group_type`` (validated; see module doc)."""
    shape = tuple(int(s) for s in shape)
    if group_type in COMBINED_GROUP_TYPES:
        raise ComponentArgError(
            key, f"{group_type!r} combines overlapping groups and has no single layout; "
                 f"use its parts {list(COMBINED_GROUP_TYPES[group_type])} one at a time")
    check_group_type(group_type, shape, key, block_shape=block_shape)
    bs = tuple(block_shape) if canonical_group_type(group_type) == "Blocks" else None
    return _layout(shape, group_type, bs)


def num_groups(shape: Sequence[int], group_type: str, block_shape: Optional[Sequence[int]] = None) -> int:
    """How many groups ``group_type`` cuts a tensor of ``shape`` into."""
    return group_layout(shape, group_type, block_shape).n_groups


def _l2(x: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    """Euclidean norm over ``dims`` whose gradient is 0, not NaN, at an all-zero group (no epsilon)."""
    if x.dim() <= 4:
        return torch.linalg.vector_norm(x, 2, dim=dims)
    # Blocks views have up to 8 interleaved dimensions, where vector_norm's backward is several
    # times slower than a sum of squares; take the square root only where it is differentiable.
    sq = x.square().sum(dim=dims)
    nonzero = sq > 0
    return torch.where(nonzero, sq, torch.ones_like(sq)).sqrt() * nonzero


def _reduce(x: torch.Tensor, norm: str, dims: Tuple[int, ...], size: int) -> torch.Tensor:
    n = norm.lower()
    if n in ("l2", "mean_l2"):
        out = _l2(x, dims)
        return out / size if n == "mean_l2" else out
    if n == "l1":
        return x.abs().sum(dim=dims)
    if n == "max":
        return x.abs().amax(dim=dims)
    if n in ("mean_abs", "mean_l1"):
        return x.abs().mean(dim=dims)
    if n == "nnz":
        return (x != 0).sum(dim=dims)
    raise ValueError(f"unknown norm {norm!r}{suggest(n, NORMS)}; valid: {', '.join(NORMS)}")


def group_norms(weight: torch.Tensor, group_type: str, norm: str = "l2", *,
                block_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """One statistic per group, as a 1D tensor of length ``n_groups`` in group order.

    ``norm`` (case-insensitive): ``l1`` (sum |w|), ``l2`` (Euclidean norm), ``max`` (max |w|),
    ``mean_abs`` = ``mean_l1`` (l1 / group size), ``mean_l2`` (l2 / group size, Distiller's
    length-normalized L2), ``nnz`` (count of non-zeros). The result carries gradients to ``weight``
    (except ``nnz``); ``l2`` has gradient 0, not NaN, at an all-zero group.
    """
    layout = group_layout(weight.shape, group_type, block_shape)
    x = weight.reshape(layout.view_shape)
    return _reduce(x, norm, layout.reduce_dims, layout.group_size).reshape(-1)


def expand_group_mask(keep: torch.Tensor, weight_shape: Sequence[int], group_type: str, *,
                      block_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Broadcast a per-group vector (``keep[g]``, in group order) to a tensor of ``weight_shape``.

    Every element takes its group's value, so a boolean ``keep`` gives a boolean mask that zeroes
    exactly the dropped groups. The dtype of ``keep`` is kept (float keeps work too). The result is
    contiguous, so it can be modified in place.
    """
    layout = group_layout(weight_shape, group_type, block_shape)
    keep = torch.as_tensor(keep)
    if keep.numel() != layout.n_groups:
        raise ValueError(f"keep has {keep.numel()} entries but group type {group_type!r} cuts shape "
                         f"{tuple(layout.weight_shape)} into {layout.n_groups} groups")
    bcast = [1] * len(layout.view_shape)
    for d in layout.group_dims:
        bcast[d] = layout.view_shape[d]
    return (keep.reshape(bcast).expand(layout.view_shape)
            .reshape(layout.weight_shape).contiguous())


def threshold_group_mask(weight: torch.Tensor, group_type: str, threshold: float,
                         norm: str = "mean_abs", *,
                         block_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Boolean mask keeping the groups whose ``norm`` statistic is strictly above ``threshold``.

    Groups at or below the threshold are zeroed (Distiller's structure thresholding). Computed
    without gradients.
    """
    with torch.no_grad():
        stat = group_norms(weight.detach(), group_type, norm, block_shape=block_shape)
        return expand_group_mask(stat > threshold, weight.shape, group_type, block_shape=block_shape)
