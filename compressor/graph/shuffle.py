"""Channel shuffles as permutations, inside modules that thinning may make thin (ShuffleNet-V2's unit).

Elsewhere a channel shuffle (``view(b, g, c // g, h, w)``, ``transpose(1, 2)``, ``view(b, c, h,
w)``) is followed by coupling channel ``k`` of every group (``channel_ops.split_channels``), and
``x.chunk(2, dim=1)`` by a ``Balanced`` record: the dense forward then still computes on the
thinned widths. In ShuffleNet-V2 that nests the classes of a stage's residual stream so that it
cannot lose a channel. Inside a *shuffle unit* (torchvision's ``InvertedResidual``, by qualified
class name so nothing here imports torchvision; ``SHUFFLE_UNITS``) the analysis instead follows:

* ``x.chunk(2, dim=1)`` as two ranges of the channel list, with no balance: the thin unit splits
  its input at stored sizes (``split_at``);
* the shuffle as what it is, a permutation of the channel list (no channel meets another): the
  split ``view`` gives a ``ChannelGrid`` (the list over two dims), ``transpose`` moves its dims,
  and the ``view`` that merges them back gives the permuted list. The thin unit applies the
  permutation of the channels it keeps as a stored index (``permute_channels``).

Each unit gets a ``UnitShuffle`` record (the split's parts and the permuted list), from which the
thinning recipe writes the unit's sizes and index; ``compressor.thinning.shuffle`` makes the unit
its thin subclass. The thin forward calls ``split_at`` and ``permute_channels`` (wrapped for
torch.fx there, so they are one node each), whose named rules below read the same records, so a
thinned model is analysed (and thinned again) like a dense one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import nn

from .nodes import module_path, node_shape, nodes_in, qualified_name, where
from .records import ChannelInfo, ChannelTuple, UnitShuffle

if TYPE_CHECKING:
    from .analyzer import Analyzer

#: Classes whose forward thinning may replace by the thin unit's (same attributes and layout as
#: torchvision's: ``stride``, ``branch1``, ``branch2``; chunk, branches, cat, shuffle).
SHUFFLE_UNITS = {"torchvision.models.shufflenetv2.InvertedResidual"}


def split_at(x: torch.Tensor, sizes: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """``x`` cut along dim 1 into consecutive parts of ``sizes`` channels (a part may be empty)."""
    out, start = [], 0
    for n in sizes:
        out.append(x[:, start:start + n])
        start += n
    return tuple(out)


def permute_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Channel ``p`` of the result is channel ``index[p]`` of ``x`` (a thinned channel shuffle)."""
    return x.index_select(1, index)


def is_shuffle_unit(mod: Optional[nn.Module]) -> bool:
    """Whether ``mod`` is a unit whose shuffle may be followed as a permutation: an exact class of
    ``SHUFFLE_UNITS`` (a subclass may have a forward of its own), or its thin subclass."""
    if mod is None:
        return False
    cls = type(mod)
    return qualified_name(cls) in SHUFFLE_UNITS or getattr(cls, "thin_shuffle_unit", False) is True


def unit_of(an: "Analyzer", node) -> Optional[str]:
    """The path of the shuffle unit whose own forward holds ``node``, else None."""
    path = module_path(node)
    return path if path and is_shuffle_unit(an.modules.get(path)) else None


class ChannelGrid:
    """The channels of a tensor after a split ``view``: channel ``a * B + b`` of the list ``ids``
    sits at index ``a`` of dim ``da`` and index ``b`` of dim ``db`` (``A`` groups of ``B``)."""

    __slots__ = ("ids", "dirty", "A", "B", "da", "db", "unit")

    def __init__(self, ids, dirty, A: int, B: int, da: int, db: int, unit: str):
        self.ids, self.dirty, self.A, self.B, self.da, self.db, self.unit = \
            ids, dirty, A, B, da, db, unit


def _record(an: "Analyzer", unit: str, node) -> Optional[UnitShuffle]:
    rec = an.g.shuffles.get(unit)
    if rec is None:
        rec = an.g.shuffles[unit] = UnitShuffle(unit)
    return rec


def _twice(an: "Analyzer", node, info, unit: str, what: str) -> None:
    rec = an.g.shuffles[unit]
    rec.bad = f"{what} at node '{node.name}' (in {where(node)}): the unit splits or shuffles twice"
    return an.mixing(node, info, rec.bad)


def unit_chunk(an: "Analyzer", node, info: ChannelInfo, sizes: List[int], unit: str,
               what: str) -> Optional[ChannelTuple]:
    """``x.chunk(2, dim=1)`` in a shuffle unit: two ranges, no balance (the thin unit splits at
    the sizes it keeps)."""
    rec = _record(an, unit, node)
    if rec.parts is not None:
        return _twice(an, node, info, unit, what)
    parts, start = [], 0
    for n in sizes:
        dirty = None if info.dirty is None else info.dirty[start:start + n]
        parts.append(ChannelInfo(info.ids[start:start + n], info.cdim, dirty))
        start += n
    rec.parts = [list(p.ids) for p in parts]
    return ChannelTuple(parts)


def unit_split_view(an: "Analyzer", node, info: ChannelInfo, out_shape, j: int,
                    unit: str) -> ChannelGrid:
    """A view splitting the channels into ``out_shape[j]`` groups, in a shuffle unit."""
    return ChannelGrid(list(info.ids), info.dirty, out_shape[j], out_shape[j + 1], j, j + 1, unit)


def _finish_shuffle(an: "Analyzer", node, grid: ChannelGrid, perm: List[int], cdim: int,
                    what: str) -> Optional[ChannelInfo]:
    rec = _record(an, grid.unit, node)
    if rec.perm is not None:
        return _twice(an, node, grid, grid.unit, what)
    rec.ids, rec.perm = list(grid.ids), perm
    dirty = None if grid.dirty is None else [grid.dirty[q] for q in perm]
    return ChannelInfo([grid.ids[q] for q in perm], cdim, dirty)


def grid_op(an: "Analyzer", node, grid: ChannelGrid, what: str) -> Optional[ChannelInfo]:
    """The ops a channel shuffle applies to a ``ChannelGrid``: ``contiguous`` (and other copies),
    ``transpose`` / ``permute`` of its dims, and the ``view`` / ``reshape`` / ``flatten`` that
    merges its two dims back into one channel dim. Anything else blocks its channels."""
    tracked = [a for a in nodes_in((node.args, node.kwargs)) if an.env.get(a) is not None]
    if len(tracked) != 1 or node.args[0] is not tracked[0]:
        return an.mixing(node, grid, f"{what} on a split channel dimension")
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    in_shape, out_shape = node_shape(node.args[0]), node_shape(node)
    if in_shape is None or out_shape is None:
        return an.mixing(node, grid, f"{what} on a split channel dimension")
    rank = len(in_shape)
    if name in ("contiguous", "clone", "detach") and in_shape == out_shape:
        return grid
    if name in ("transpose", "swapaxes", "swapdims", "permute"):
        args = list(node.args[1:])
        if name == "permute":
            perm = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            perm = [p % rank for p in node.kwargs.get("dims", perm)]
        else:
            if len(args) < 2 or not all(isinstance(d, int) for d in args[:2]):
                return an.mixing(node, grid, f"{what} on a split channel dimension")
            d0, d1 = args[0] % rank, args[1] % rank
            perm = list(range(rank))
            perm[d0], perm[d1] = d1, d0
        return ChannelGrid(grid.ids, grid.dirty, grid.A, grid.B, perm.index(grid.da),
                           perm.index(grid.db), grid.unit)
    if name in ("view", "reshape", "flatten"):
        lo = min(grid.da, grid.db)
        if abs(grid.da - grid.db) == 1 and len(out_shape) == rank - 1 and \
                tuple(out_shape[:lo]) == tuple(in_shape[:lo]) and \
                out_shape[lo] == grid.A * grid.B and tuple(out_shape[lo + 1:]) == tuple(in_shape[lo + 2:]):
            A, B = grid.A, grid.B
            if grid.da == lo:   # groups outer: the original order
                perm = list(range(A * B))
            else:               # channels-per-group outer: channel k of every group, in turn
                perm = [a * B + b for b in range(B) for a in range(A)]
            return _finish_shuffle(an, node, grid, perm, lo, what)
    return an.mixing(node, grid, f"{what} on a split channel dimension (a channel shuffle "
                                 f"must merge the two dims back)")


# -- the thin unit's own ops ----------------------------------------------------------------------

def split_at_rule(an: "Analyzer", node, c) -> Optional[ChannelTuple]:
    """``split_at(x, sizes)`` in a thin unit: consecutive ranges of ``sizes`` channels."""
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("sizes")
    unit = unit_of(an, node)
    if not c.single or c.in_shape is None or c.info.cdim != 1 or unit is None or \
            not isinstance(sizes, (list, tuple)) or not all(isinstance(n, int) for n in sizes) or \
            sum(sizes) != len(c.info.ids):
        return an.fallback(node, c.name)
    return unit_chunk(an, node, c.info, list(sizes), unit, c.name)


def permute_rule(an: "Analyzer", node, c) -> Optional[ChannelInfo]:
    """``permute_channels(x, index)`` in a thin unit: the list permuted by the stored index."""
    idx = node.args[1] if len(node.args) > 1 else node.kwargs.get("index")
    unit = unit_of(an, node)
    name = idx.target if isinstance(idx, torch.fx.Node) and idx.op == "get_attr" else None
    t = an.tensor(name) if name is not None else None
    n = len(c.info.ids) if c.info is not None and not isinstance(c.info, ChannelTuple) else -1
    if not c.single or c.info.cdim != 1 or unit is None or t is None or t.dim() != 1 or \
            sorted(t.tolist()) != list(range(n)):
        return an.fallback(node, c.name)
    grid = ChannelGrid(list(c.info.ids), c.info.dirty, 1, n, 0, 1, unit)
    return _finish_shuffle(an, node, grid, [int(i) for i in t.tolist()], 1, c.name)


def finish_units(an: "Analyzer") -> None:
    """A unit whose split has no shuffle after it (or that did either twice) is not the layout
    the thin unit computes: its channels are blocked."""
    for rec in an.g.shuffles.values():
        if rec.bad is None and rec.perm is None:
            rec.bad = f"shuffle unit '{rec.module}' splits its channels but shuffles none"
        if rec.bad is not None:
            ids = [i for p in rec.parts or [] for i in p] + list(rec.ids or [])
            an.hard_ids(ids, rec.bad)
