"""Channel selection: a batch norm that reads only some channels of its input.

In a pre-activation ResNet each block's ``pre_bn`` reads the residual stream, which the shortcut
carries on unchanged. When network slimming zeroes channel c of ``pre_bn`` (gamma = beta = 0, so
the block sees exactly zero there), the stream itself cannot lose channel c, but the block need not
read it: the batch norm keeps only its other channels and picks them out of its input first, and
the block's first convolution (and a 1x1 downsample reading the same pre-activation) loses those
input channels. This is the "channel selection layer" of network slimming (Liu et al., ICCV 2017).

A plain ``BatchNorm1d/2d/3d`` becomes selecting by changing its class in place
(``set_selection``): the same object with the same Parameter objects and hooks, so whatever holds
a reference to it (an optimizer, a mask store, a pruner) keeps working, and parameter names stay
(``layer1.0.pre_bn.weight``, now with fewer elements). The selection is a buffer ``index``, so
``state_dict`` and checkpoints carry it; thinning recipes record it (``"selections"``), so
``replay`` rebuilds it on a freshly built dense model before the weights load.

The class attribute ``selects_channels`` tells ``compressor.graph.symbolic_trace`` to keep the
module a leaf of the torch.fx graph (its ``index_select`` then needs no special tracing) and tells
the graph helpers that its output channels are not its input's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .swap import set_index_buffer


class _ChannelSelecting:
    """Mixin: ``forward(x)`` is the batch norm of ``x.index_select(1, self.index)``."""

    selects_channels = True
    index: torch.Tensor
    in_channels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(1, self.index))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, in_channels={self.in_channels}"


class SelectingBatchNorm1d(_ChannelSelecting, nn.BatchNorm1d):
    """A BatchNorm1d over the input channels ``index`` (of ``in_channels``)."""


class SelectingBatchNorm2d(_ChannelSelecting, nn.BatchNorm2d):
    """A BatchNorm2d over the input channels ``index`` (of ``in_channels``)."""


class SelectingBatchNorm3d(_ChannelSelecting, nn.BatchNorm3d):
    """A BatchNorm3d over the input channels ``index`` (of ``in_channels``)."""


# Only these exact classes: a subclass (SyncBatchNorm, a user's own) may have a forward of its own.
_SELECTING = {nn.BatchNorm1d: SelectingBatchNorm1d, nn.BatchNorm2d: SelectingBatchNorm2d,
              nn.BatchNorm3d: SelectingBatchNorm3d}


def is_selecting(module: nn.Module) -> bool:
    """Whether ``module`` already reads only some channels of its input."""
    return isinstance(module, _ChannelSelecting)


def can_select(module: nn.Module) -> bool:
    """Whether thinning may make ``module`` select channels (a plain BatchNorm1d/2d/3d)."""
    return type(module) in _SELECTING or is_selecting(module)


def set_selection(bn: nn.Module, in_channels: int, index: Sequence[int]) -> None:
    """Make ``bn`` read channels ``index`` of an ``in_channels``-channel input, in place.

    ``bn``'s per-channel tensors must already have ``len(index)`` entries. The class changes rather
    than the module being replaced, so every reference to ``bn`` and its parameters stays valid.
    """
    if not is_selecting(bn):
        bn.__class__ = _SELECTING[type(bn)]
    set_index_buffer(bn, "index", index)
    bn.in_channels = int(in_channels)
