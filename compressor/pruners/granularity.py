"""Which structures a ranked pruner removes: a group type (and block shape) applied to weights.

A ``Granularity`` is the pruner-side view of ``compressor.groups``: it validates the group type
for ranking, checks that it fits each weight (with an error naming the parameter, its shape and the
valid types), counts the groups, computes per-group statistics and expands a per-group keep vector
back to a mask. Ranked pruners accept every partition type that has more than one group:

======================  ==================  ============================================
group type              weights             one structure is
======================  ==================  ============================================
``Filters`` / ``3D``    conv (rank >= 3)    an output filter ``W[f]``
``Channels``            conv, Linear        an input channel ``W[:, c]`` (Linear: a column)
``2D``                  conv (rank 4)       one kernel ``W[f, c]``
``Rows``                Linear              an input feature ``W[:, j]`` (Distiller's GEMM view)
``Cols``                Linear              an output neuron ``W[i, :]``
``Blocks``              any rank >= 2       a ``block_shape`` tile (``kwargs: {block_shape: ...}``)
======================  ==================  ============================================
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ComponentArgError, listing
from ..groups import (canonical_group_type, check_group_type, expand_group_mask, group_layout,
                      group_norms, validate_block_shape, validate_group_type_name)

#: Group types a ranked pruner can rank (``4D`` is one group per tensor, so it cannot be ranked).
RANKABLE_GROUP_TYPES: Tuple[str, ...] = ("2D", "3D", "Blocks", "Channels", "Cols", "Filters", "Rows")
#: Group types of the filter-only pruners (activation, gradient, BN-gamma, random, Bernoulli).
FILTER_GROUP_TYPES: Tuple[str, ...] = ("3D", "Filters")


class Granularity:
    """A group type, with its ``block_shape`` for ``Blocks``, as used for ranking."""

    def __init__(self, group_type, kwargs: Optional[Mapping] = None,
                 allowed: Sequence[str] = RANKABLE_GROUP_TYPES):
        self.allowed = tuple(allowed)
        self.group_type = validate_group_type_name(group_type, "group_type", self.allowed)
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ComponentArgError("kwargs", f"must be a mapping such as {{block_shape: [1, 8, 1, 1]}}; "
                                              f"got {kwargs!r}")
        kwargs = dict(kwargs or {})
        unknown = sorted(str(k) for k in kwargs if k != "block_shape")
        if unknown:
            raise ComponentArgError(f"kwargs.{unknown[0]}", "unknown key; valid: block_shape")
        self.block_shape: Optional[Tuple[int, ...]] = None
        if self.canonical == "Blocks":
            if "block_shape" not in kwargs:
                raise ComponentArgError("kwargs", "group type 'Blocks' needs kwargs: {block_shape: [...]}, "
                                                  "one positive integer per weight dimension, e.g. [1, 8, 1, 1]")
            self.block_shape = validate_block_shape(kwargs["block_shape"], "kwargs.block_shape")
        elif "block_shape" in kwargs:
            raise ComponentArgError("kwargs.block_shape", f"is only used with group_type 'Blocks', "
                                                          f"not {self.group_type!r}")

    @property
    def canonical(self) -> str:
        return canonical_group_type(self.group_type)

    @property
    def along_outputs(self) -> bool:
        """Whether a structure is one output unit: a conv filter, or a Linear output neuron (Cols).

        Only then do the layer's bias entry and following batch norm belong to the structure.
        """
        return self.canonical in ("Filters", "Cols")

    def _type(self, shape: Sequence[int]) -> str:
        """The group type for a weight of ``shape``: ``Filters`` on a Linear weight (rank 2) that
        is coupled to convolutions (ConvNeXt's and ViT's residual streams) is its output neurons,
        ``Cols``, and ``Cols`` on a coupled convolution its filters; listed weights are checked
        strictly (``check``)."""
        if self.canonical == "Filters" and len(shape) == 2:
            return "Cols"
        if self.canonical == "Cols" and len(shape) >= 3:   # a conv coupled to linear layers
            return "Filters"
        return self.group_type

    def check(self, name: str, shape: Sequence[int], coupled: bool = False) -> None:
        """``ComponentArgError('group_type', ...)`` unless the type cuts parameter ``name``
        (``coupled``: a weight coupled to a listed one, see ``_type``)."""
        check_group_type(self._type(shape) if coupled else self.group_type, shape, "group_type",
                         block_shape=self.block_shape, what=f"parameter '{name}'",
                         allowed=self.allowed + ("Cols", "Filters") if coupled else self.allowed)
        if self.n_groups(shape) < 2:
            raise ComponentArgError(
                "group_type", f"group type {self.group_type!r} cuts parameter '{name}' of shape "
                              f"{tuple(shape)} into a single group, which cannot be ranked; valid: "
                              f"{listing(self.allowed)} with more than one group")

    def n_groups(self, shape: Sequence[int]) -> int:
        return group_layout(shape, self._type(shape), self.block_shape).n_groups

    def norms(self, weight: torch.Tensor, norm: str) -> torch.Tensor:
        """One statistic per structure (see ``groups.group_norms``), in group order."""
        return group_norms(weight.detach(), self._type(weight.shape), norm,
                           block_shape=self.block_shape)

    def sums(self, t: torch.Tensor) -> torch.Tensor:
        """The signed sum of ``t`` over each structure, in group order."""
        layout = group_layout(t.shape, self._type(t.shape), self.block_shape)
        return t.reshape(layout.view_shape).sum(dim=layout.reduce_dims).reshape(-1)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """A per-structure vector broadcast to a tensor of ``shape``."""
        return expand_group_mask(keep, shape, self._type(shape), block_shape=self.block_shape)
