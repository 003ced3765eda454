"""A thinning plan -> the recipe that carries it out (typed, see ``recipe``) and a summary of what
it removes (``ThinningResult``); changes nothing.

Producers lose filters, consumers input channels (grouped convolutions per group, depthwise ones
by their attributes), per-channel layers after them the same channels, and batch norms that select
channels get their new ``Selection``. Removed channels that carried a non-zero bias or batch-norm
shift while a consumer still read them are counted, since the masked network was not exactly zero
there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

from torch import nn

from ..errors import ThinningError
from .bn_plan import bn_shift, named_tensors
from .rms import rescales_for
from ..graph import ChannelGraph, Follower
from .recipe import (RECIPE_VERSION, SELECTION_RECIPE_VERSION, SHUFFLE_RECIPE_VERSION,
                     ModuleChange, Recipe, Selection, ShuffleChange, SliceOp, TensorChange)

if TYPE_CHECKING:
    from .plan import Plan


@dataclass
class ThinningResult:
    """What one thinning did.

    ``removed``: {layer: (channels removed, channels before)} for every layer that lost output
    channels. ``nonzero_bias_removed``: how many removed (layer, channel) pairs carried a non-zero
    bias or batch-norm shift although a consumer still read them (the masked network was not exactly
    zero there; structured pruners mask those too). ``selected``: {batch norm: (channels it reads,
    channels of its input)} for every batch norm whose channel selection this thinning set or
    changed. ``typed_recipe`` (a ``Recipe``) is None when nothing was removed; ``recipe`` is its
    plain data (what a checkpoint holds), built afresh on each access.
    """
    kind: str
    typed_recipe: Optional[Recipe] = None
    removed: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    nonzero_bias_removed: int = 0
    nonzero_bias_layers: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    selected: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    #: {LayerNorm told the mask: the positions of its channels that stay} (``norms``)
    norm_keeps: Dict[str, List[int]] = field(default_factory=dict, repr=False)

    @property
    def recipe(self) -> Optional[dict]:
        return None if self.typed_recipe is None else self.typed_recipe.to_dict()

    @property
    def changed(self) -> bool:
        return self.typed_recipe is not None

    def __repr__(self) -> str:
        n = sum(r for r, _ in self.removed.values())
        sel = f", selecting_batch_norms={len(self.selected)}" if self.selected else ""
        return (f"ThinningResult(kind={self.kind!r}, channels_removed={n}, "
                f"layers={len(self.removed)}, "
                f"nonzero_bias_removed={self.nonzero_bias_removed}{sel})")


def _kept(graph: ChannelGraph, ids: List[int], removed: Set[int]) -> List[int]:
    find = graph.uf.find
    return [i for i, x in enumerate(ids) if find(x) not in removed]


def build_recipe(plan: "Plan", model: nn.Module) -> ThinningResult:
    """Turn a plan into a recipe and a result summary; changes nothing."""
    graph, removed = plan.graph, plan.removed
    result = ThinningResult(plan.kind, warnings=list(plan.warnings))
    if not removed:
        return result
    _check_balanced(graph, removed)
    tensors = named_tensors(model)
    entries: Dict[str, TensorChange] = {}
    modules: Dict[str, ModuleChange] = {}

    def op(name: str, spec: SliceOp) -> None:
        entries.setdefault(name, TensorChange(list(tensors[name].shape))).ops.append(spec)

    def attrs(module: str) -> Dict[str, int]:
        return modules.setdefault(module, ModuleChange()).attrs

    find = graph.uf.find
    for p in graph.producers:
        keep = _kept(graph, p.ids, removed)
        if len(keep) == len(p.ids):
            continue
        op(p.weight, SliceOp(p.out_dim, keep))
        if p.bias:
            op(p.bias, SliceOp(0, keep))
        if p.attr:   # '' : no attribute counts these rows (a packed q/k/v weight)
            attrs(p.module)[p.attr] = len(keep)
        result.removed[p.module] = (len(p.ids) - len(keep), len(p.ids))
        if p.bias:
            b = tensors[p.bias].detach()
            n = sum(1 for i, x in enumerate(p.ids) if find(x) in removed
                    and find(x) not in plan.ignored and float(b[i]) != 0.0)
            if n:
                result.nonzero_bias_layers[p.module] = result.nonzero_bias_layers.get(p.module, 0) + n
    for c in graph.consumers:
        keep = _kept(graph, c.ids, removed)
        if len(keep) == len(c.ids):
            continue
        if c.kind == "dense":
            op(c.weight, SliceOp(c.in_dim, keep))
            attrs(c.module)[c.attr] = len(keep)
        elif c.kind == "depthwise":   # its filters were selected as a producer
            attrs(c.module).update({"in_channels": len(keep), "groups": len(keep)})
        else:
            per = len(c.ids) // c.groups
            local = [[i - j * per for i in keep if j * per <= i < (j + 1) * per]
                     for j in range(c.groups)]
            op(c.weight, SliceOp(c.in_dim, local, c.groups))
            attrs(c.module)[c.attr] = len(keep)
    for ps in graph.params:   # parameters read directly (layer scale, position embedding ...)
        keep = _kept(graph, ps.ids, removed)
        if len(keep) != len(ps.ids):
            op(ps.tensor, SliceOp(ps.dim, keep))
    for w in graph.widths:    # widths the forward reads from module attributes
        keep = _kept(graph, w.ids, removed)
        if len(keep) != len(w.ids):
            attrs(w.module)[w.attr] = len(keep)
    selections: Dict[str, Selection] = {}
    for f in graph.followers:
        keep = _kept(graph, f.ids, removed)
        selection = _selection(graph, f, keep, removed) if f.in_ids is not None else None
        if selection is not None:
            selections[f.module] = selection
            result.selected[f.module] = (len(selection.index), selection.in_channels)
        if len(keep) == len(f.ids):
            continue
        for t in f.tensors:
            op(t, SliceOp(0, keep))
        if "normalized_shape" in f.attrs:
            result.norm_keeps[f.module] = keep
        for a in f.attrs:
            attrs(f.module)[a] = len(keep)
        if f.shift:
            shift = bn_shift(tensors, f.shift, model, f.module)
            if shift is not None:
                n = sum(1 for i, x in enumerate(f.ids) if find(x) in removed
                        and find(x) not in plan.ignored and float(shift[i]) != 0.0)
                if n:
                    result.nonzero_bias_layers[f.module] = result.nonzero_bias_layers.get(f.module, 0) + n
    shuffles = _shuffles(graph, removed)
    rms = rescales_for(graph, removed)   # RMS norms that lose channels (thinning.rms)
    result.nonzero_bias_removed = sum(result.nonzero_bias_layers.values())
    version = SHUFFLE_RECIPE_VERSION if shuffles else \
        SELECTION_RECIPE_VERSION if selections else RECIPE_VERSION
    result.typed_recipe = Recipe(plan.kind, modules, entries, selections or None, version,
                                 shuffles or None, rms_norms=rms or None)
    return result


def _shuffles(graph: ChannelGraph, removed: Set[int]) -> Dict[str, ShuffleChange]:
    """Each shuffle unit (``graph.shuffle``) that loses a channel of its split or its shuffle:
    the sizes of the parts it keeps, and its shuffle as the index of the kept channels."""
    out: Dict[str, ShuffleChange] = {}
    for name, rec in graph.shuffles.items():
        if rec.bad is not None or rec.perm is None:
            continue
        parts = None if rec.parts is None else [_kept(graph, p, removed) for p in rec.parts]
        keep = _kept(graph, rec.ids, removed)
        if len(keep) == len(rec.ids) and (parts is None or all(
                len(k) == len(p) for k, p in zip(parts, rec.parts))):
            continue
        rank = {q: i for i, q in enumerate(keep)}
        index = [rank[q] for q in rec.perm if q in rank]
        out[name] = ShuffleChange(None if parts is None else [len(k) for k in parts], index)
    return out


def _check_balanced(graph: ChannelGraph, removed: Set[int]) -> None:
    """Tensors cut into equal parts must lose as many channels from each (``plan`` balances them;
    this guards later changes to the plan, such as batch-norm selections)."""
    find = graph.uf.find
    for rec in graph.balanced:
        per = len(rec.ids) // rec.groups
        counts = {sum(1 for x in rec.ids[j * per:(j + 1) * per] if find(x) in removed)
                  for j in range(rec.groups)}
        if len(counts) != 1:
            raise ThinningError(f"cannot thin: {rec.what} would cut parts of different sizes "
                                f"(removed per part: {sorted(counts)}). Nothing was changed.")


def _selection(graph: ChannelGraph, f: Follower, keep_out: List[int],
               removed: Set[int]) -> Optional[Selection]:
    """What a batch norm must read after thinning, ``Selection(in_channels, index)``
    (positions in its thinned input), or None when that does not change (a plain batch norm still
    reading every channel of its input, or a selecting one whose input and output stay)."""
    keep_in = _kept(graph, f.in_ids, removed)
    reads = f.index if f.index is not None else range(len(f.in_ids))
    rank = {k: i for i, k in enumerate(keep_in)}
    if any(reads[j] not in rank for j in keep_out):   # _settle rules this out
        raise ThinningError(f"cannot thin {f.module}: an input channel it reads would be removed "
                            f"while the channel it feeds stays. Nothing was changed.")
    index = [rank[reads[j]] for j in keep_out]
    if f.index is None and index == list(range(len(keep_in))):
        return None
    if f.index is not None and len(keep_in) == len(f.in_ids) and len(keep_out) == len(f.ids):
        return None
    return Selection(len(keep_in), index)


