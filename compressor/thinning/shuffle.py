"""ShuffleNet-V2's unit with any channels removed: ``Thin<class name>``.

torchvision's ``InvertedResidual`` cuts its input in two equal halves (``x.chunk(2, dim=1)``,
stride 1) and ends with a channel shuffle written for equal halves (``view(b, 2, c // 2, h, w)``,
``transpose(1, 2)``, ``view(b, c, h, w)``). The shuffle is only a permutation, so with it applied
as an index any set of channels can go: the thin unit (a subclass made on first use, the same
object, the same Parameter objects, names and ``state_dict`` keys, as thin attention and
channel-selecting batch norms are) splits its input at stored sizes (``split_sizes``) and applies
its stored permutation of the concatenated branches (``shuffle_index``, a buffer kept out of the
``state_dict``: the recipe holds it). ``graph.shuffle`` follows both, dense or thin; a recipe's
``"shuffles"`` entry makes the unit thin and sets them (``set_shuffle``), so ``replay`` rebuilds
the thin units of a freshly built dense model before its weights load.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.fx
from torch import nn

from ..graph.shuffle import is_shuffle_unit, permute_channels, split_at
from .swap import set_index_buffer, swap_class

# one node each in the traced graph: graph.shuffle's named rules read them
torch.fx.wrap("split_at")
torch.fx.wrap("permute_channels")


class _ThinShuffleUnit:
    """The unit's forward with its split and its shuffle stored (see the module docstring)."""

    thin_shuffle_unit = True
    split_sizes: Optional[tuple]
    shuffle_index: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            parts = split_at(x, self.split_sizes)
            out = torch.cat((parts[0], self.branch2(parts[1])), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return permute_channels(out, self.shuffle_index)

    def extra_repr(self) -> str:
        split = "" if self.split_sizes is None else f"split_sizes={list(self.split_sizes)}, "
        return f"{split}channels={self.shuffle_index.numel()}"


_THIN: Dict[type, type] = {}


def make_thin_unit(mod: nn.Module) -> nn.Module:
    """Make the shuffle unit ``mod`` its thin subclass in place (a thin one stays); returns it."""
    if getattr(type(mod), "thin_shuffle_unit", False):
        return mod
    return swap_class(mod, _ThinShuffleUnit, _THIN)


def set_shuffle(mod: nn.Module, split: Optional[Sequence[int]], index: Sequence[int]) -> None:
    """Make ``mod`` thin and give it its split sizes and its shuffle's index."""
    make_thin_unit(mod)
    mod.split_sizes = None if split is None else tuple(int(n) for n in split)
    set_index_buffer(mod, "shuffle_index", index, persistent=False)


def can_shuffle(mod: nn.Module) -> bool:
    """Whether a recipe may make ``mod`` a thin shuffle unit."""
    return is_shuffle_unit(mod)
