"""Sparsity and size metrics: pure functions of a tensor or of a model's parameters.

Every function here reads its input and returns a number; nothing is modified, nothing is printed.
The definitions follow Distiller's ``distiller/utils.py`` so that numbers reported by both projects
agree, including Distiller's "transposed GEMM" naming of rows and columns (see ``sparsity_cols``).
The structures counted (kernels, filters, channels, stored rows and columns) are the partitions
that ``groups.py`` defines, so a structure means the same here as in pruners and regularizers.

Conventions shared by all functions:

* A value counts as zero only when it compares equal to ``0`` (``-0.0`` is zero, ``NaN`` is not).
* Per-tensor metrics are fractions in ``[0, 1]``.  ``model_params_stats`` and the summary tables
  report percents, as Distiller does.
* An empty tensor (or a tensor with no structures of the asked kind) has no zeros to count: its
  sparsity is ``0.0`` and its density ``1.0``, so ``density + sparsity == 1`` always holds and an
  empty parameter never shows up as "pruned".
* A structured metric asked of a tensor whose rank does not have that structure returns ``0.0``
  (Distiller's behaviour), e.g. ``sparsity_3D`` of a 2D weight.
"""
from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence, Tuple

import torch
from torch import nn

from .groups import group_norms

__all__ = [
    "density", "sparsity",
    "density_2D", "sparsity_2D",
    "density_3D", "sparsity_3D",
    "density_ch", "sparsity_ch", "non_zero_channels",
    "sparsity_matrix", "density_rows", "sparsity_rows", "density_cols", "sparsity_cols",
    "model_sparsity", "model_numel", "model_params_stats", "ParamsStats",
    "selected_params", "size_to_str", "volume",
    "DEFAULT_PARAM_DIMS", "DEFAULT_PARAM_TYPES",
]

DEFAULT_PARAM_DIMS: Tuple[int, ...] = (2, 4)
DEFAULT_PARAM_TYPES: Tuple[str, ...] = ("weight", "bias")


# ---------------------------------------------------------------------------------------------
# Element-wise


def density(t: torch.Tensor) -> float:
    """Fraction of the elements of ``t`` that are non-zero (``1.0`` for an empty tensor)."""
    n = t.numel()
    if n == 0:
        return 1.0
    return int(torch.count_nonzero(t.detach())) / n


def sparsity(t: torch.Tensor) -> float:
    """Fraction of the elements of ``t`` that are zero: ``1 - density(t)`` (``0.0`` if empty)."""
    return 1.0 - density(t)


# ---------------------------------------------------------------------------------------------
# Structured


def _zero_group_fraction(t: torch.Tensor, group_type: str) -> float:
    """Fraction of the groups of ``group_type`` (``groups.py``) that are entirely zero.

    Counting non-zeros (not summing ``abs``) keeps the answer exact when positive and negative
    values would cancel or underflow.
    """
    if t.numel() == 0:
        # Structures with no element hold no zero either: report them as dense.
        return 0.0
    nnz = group_norms(t.detach(), group_type, "nnz")
    return 1.0 - int((nnz != 0).sum()) / nnz.numel()


def sparsity_2D(t: torch.Tensor) -> float:
    """Fraction of all-zero 2D structures.

    * 4D convolution weight ``(out, in, kh, kw)``: the structures are the ``out * in`` kernels of
      shape ``kh x kw``; the result is the fraction of kernels that are all zero.
    * 2D weight: the structures are the *stored rows* (``t[i, :]``; for ``nn.Linear`` one row per
      output feature), as in Distiller, which only supports rows here.
    * Any other rank: ``0.0``.
    """
    if t.dim() == 4:
        return _zero_group_fraction(t, "2D")
    if t.dim() == 2:
        return _zero_group_fraction(t, "OutputNeurons")
    return 0.0


def density_2D(t: torch.Tensor) -> float:
    """``1 - sparsity_2D(t)``."""
    return 1.0 - sparsity_2D(t)


def sparsity_3D(t: torch.Tensor) -> float:
    """Fraction of all-zero filters ``t[o, :, :, :]`` of a 4D weight; ``0.0`` for other ranks."""
    if t.dim() != 4:
        return 0.0
    return _zero_group_fraction(t, "Filters")


def density_3D(t: torch.Tensor) -> float:
    """``1 - sparsity_3D(t)``."""
    return 1.0 - sparsity_3D(t)


def non_zero_channels(t: torch.Tensor) -> torch.Tensor:
    """Indices of the input channels ``t[:, c, :, :]`` of a 4D weight holding a non-zero value."""
    if t.dim() != 4:
        raise ValueError(f"non_zero_channels expects a 4D tensor, got shape {tuple(t.shape)}")
    return torch.nonzero(group_norms(t.detach(), "Channels", "nnz")).flatten()


def sparsity_ch(t: torch.Tensor) -> float:
    """Fraction of all-zero input channels ``t[:, c, :, :]`` of a 4D weight; ``0.0`` otherwise.

    Zeroing input channel ``c`` of every filter is what lets thinning remove the ``c``-th output
    channel of the layer that feeds this one.
    """
    if t.dim() != 4:
        return 0.0
    return _zero_group_fraction(t, "Channels")


def density_ch(t: torch.Tensor) -> float:
    """``1 - sparsity_ch(t)``."""
    return 1.0 - sparsity_ch(t)


def sparsity_matrix(t: torch.Tensor, dim: int) -> float:
    """Fraction of all-zero slices of a 2D tensor along ``dim`` (``0.0`` for other ranks).

    ``dim=0`` counts the stored rows ``t[i, :]``; ``dim=1`` counts the stored columns ``t[:, j]``.
    """
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 or 1, got {dim}")
    if t.dim() != 2:
        return 0.0
    return _zero_group_fraction(t, "OutputNeurons" if dim == 0 else "InputFeatures")


def sparsity_cols(t: torch.Tensor, transposed: bool = True) -> float:
    """Column sparsity of a 2D weight, in Distiller's "transposed GEMM" convention.

    PyTorch stores an ``nn.Linear`` weight as ``(out_features, in_features)`` and computes
    ``x @ W.T``; Distiller names rows and columns after the GEMM operand ``W.T``, not after the
    stored tensor.  So with the default ``transposed=True`` a "column" is a *stored row*
    ``t[i, :]`` (one output feature) and this returns the fraction of all-zero stored rows.
    With ``transposed=False`` it returns the fraction of all-zero stored columns ``t[:, j]``.
    Returns ``0.0`` for tensors that are not 2D (convolution weights included).
    """
    return sparsity_matrix(t, 0 if transposed else 1)


def sparsity_rows(t: torch.Tensor, transposed: bool = True) -> float:
    """Row sparsity of a 2D weight, in Distiller's "transposed GEMM" convention.

    With the default ``transposed=True`` a "row" is a *stored column* ``t[:, j]`` (one input
    feature of an ``nn.Linear``) and this returns the fraction of all-zero stored columns.
    With ``transposed=False`` it returns the fraction of all-zero stored rows ``t[i, :]``.
    Returns ``0.0`` for tensors that are not 2D.
    """
    return sparsity_matrix(t, 1 if transposed else 0)


def density_cols(t: torch.Tensor, transposed: bool = True) -> float:
    """``1 - sparsity_cols(t, transposed)``."""
    return 1.0 - sparsity_cols(t, transposed)


def density_rows(t: torch.Tensor, transposed: bool = True) -> float:
    """``1 - sparsity_rows(t, transposed)``."""
    return 1.0 - sparsity_rows(t, transposed)


# ---------------------------------------------------------------------------------------------
# Whole model


def selected_params(model: nn.Module, param_dims: Iterable[int] = DEFAULT_PARAM_DIMS,
                    param_types: Iterable[str] = DEFAULT_PARAM_TYPES
                    ) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(name, parameter)`` for the parameters the model-level metrics look at.

    A parameter is selected when its rank is in ``param_dims`` and its name contains one of
    ``param_types`` (substring match, as Distiller).  Names are the model's own
    (``module.``-prefixed for ``DataParallel``/``DistributedDataParallel``); a tensor shared by
    two modules is reported once.  Parameters are read rather than ``state_dict()`` so that
    buffers (running statistics, masks kept as buffers) are never counted as weights.
    """
    dims = frozenset(param_dims)
    types = tuple(param_types)
    for name, param in model.named_parameters():
        if param.dim() in dims and any(tp in name for tp in types):
            yield name, param


class ParamsStats(NamedTuple):
    """Result of ``model_params_stats``; unpacks like Distiller's 3-tuple."""

    sparsity_pct: float  #: percent of zeros among the selected parameters' elements
    numel: int           #: number of elements of the selected parameters
    nnz: int             #: number of non-zero elements of the selected parameters


def model_params_stats(model: nn.Module, param_dims: Iterable[int] = DEFAULT_PARAM_DIMS,
                       param_types: Iterable[str] = DEFAULT_PARAM_TYPES) -> ParamsStats:
    """Sparsity (in percent, as Distiller), element count and non-zero count of a model.

    Only parameters chosen by ``selected_params`` count.  A model with no selected parameter
    reports ``ParamsStats(0.0, 0, 0)``.
    """
    numel, nnz = _count(model, param_dims, param_types)
    pct = 100.0 * (1.0 - nnz / numel) if numel else 0.0
    return ParamsStats(pct, numel, nnz)


def _count(model: nn.Module, param_dims: Iterable[int], param_types: Iterable[str]
           ) -> Tuple[int, int]:
    numel = nnz = 0
    for _, param in selected_params(model, param_dims, param_types):
        numel += param.numel()
        nnz += int(torch.count_nonzero(param.detach()))
    return numel, nnz


def model_sparsity(model: nn.Module, param_dims: Iterable[int] = DEFAULT_PARAM_DIMS,
                   param_types: Iterable[str] = DEFAULT_PARAM_TYPES) -> float:
    """Fraction of zeros, in ``[0, 1]``, among the elements of the selected parameters.

    Unlike Distiller, whose ``model_sparsity`` documents a fraction but returns a percent, this
    returns a fraction like every other ``sparsity*`` function; use ``model_params_stats`` or
    ``weights_sparsity_summary(..., return_total_sparsity=True)`` for the percent.
    """
    numel, nnz = _count(model, param_dims, param_types)
    return 1.0 - nnz / numel if numel else 0.0


def model_numel(model: nn.Module, param_dims: Iterable[int] = DEFAULT_PARAM_DIMS,
                param_types: Iterable[str] = DEFAULT_PARAM_TYPES) -> int:
    """Number of elements of the selected parameters (zeros included)."""
    return sum(p.numel() for _, p in selected_params(model, param_dims, param_types))


# ---------------------------------------------------------------------------------------------
# Small helpers the summary tables share


def volume(t: torch.Tensor | torch.Size | Sequence[int]) -> int:
    """Number of elements of a tensor or of a shape."""
    if isinstance(t, torch.Tensor):
        return t.numel()
    n = 1
    for d in t:
        n *= int(d)
    return n


def size_to_str(shape: torch.Size | Sequence[int]) -> str:
    """Format a shape as Distiller does: ``(64, 3, 7, 7)``; a 1D shape is ``(64)``."""
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"
