"""Zero structures -> which channel classes to remove -> a recipe of plain data.

A channel class (see ``graph``) is removed

* by its *filters* (``remove_filters``) when every layer producing it has an all-zero filter for
  it: the channel is then zero in the masked network (up to biases and batch-norm shifts, which
  the result counts), so no consumer notices it is gone;
* by its *channels* (``remove_channels``) when every layer consuming it has all-zero weights for
  it: no consumer reads it, so whatever the producers compute there does not matter;
* by either (``contract_model``).

Each layer keeps at least one output channel (with a warning), and grouped convolutions remove the
same number of channels from each of their groups (extra zero channels are kept to balance them).

When a batch norm's channel is zero (gamma = beta = 0) or ignored by every consumer after it, but
its class stays because its input is shared (a pre-activation ResNet's residual stream, which the
shortcut carries on), the batch norm *selects* channels instead: it drops the channel, reads only
the kept ones of its input, and the layers after it lose the channel (``_add_selections``; see
``selection``). Nothing else changes, so without such channels the plan is the plain one.

The recipe lists, per tensor, the index selections to apply, per module, the attributes to set,
and per selecting batch norm, the input channels it reads; it holds only dicts, lists, ints and
strings, so it survives ``torch.save`` and ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from ..errors import ThinningError
from ..graph import ChannelGraph, Consumer, Follower, Producer

MODES = ("remove_filters", "remove_channels", "contract_model")
RECIPE_VERSION = 1
SELECTION_RECIPE_VERSION = 2   # a recipe with "selections"; older readers would ignore them


@dataclass
class ThinningResult:
    """What one thinning did.

    ``removed``: {layer: (channels removed, channels before)} for every layer that lost output
    channels. ``nonzero_bias_removed``: how many removed (layer, channel) pairs carried a non-zero
    bias or batch-norm shift although a consumer still read them (the masked network was not exactly
    zero there; structured pruners mask those too). ``selected``: {batch norm: (channels it reads,
    channels of its input)} for every batch norm whose channel selection this thinning set or
    changed. ``recipe`` is None when nothing was removed.
    """
    kind: str
    recipe: Optional[dict] = None
    removed: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    nonzero_bias_removed: int = 0
    nonzero_bias_layers: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    selected: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.recipe is not None

    def __repr__(self) -> str:
        n = sum(r for r, _ in self.removed.values())
        sel = f", selecting_batch_norms={len(self.selected)}" if self.selected else ""
        return (f"ThinningResult(kind={self.kind!r}, channels_removed={n}, "
                f"layers={len(self.removed)}, "
                f"nonzero_bias_removed={self.nonzero_bias_removed}{sel})")


def _tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


def _nonzero_2d(w: torch.Tensor) -> torch.Tensor:
    """(dim 0, dim 1) -> whether any weight of that pair is non-zero; one pass over the tensor."""
    nz = w.detach().ne(0)
    if nz.dim() == 1:
        return nz.unsqueeze(1)
    if nz.dim() > 2 and nz[0, 0].numel() == 1:   # 1x1 kernels: nothing to reduce
        return nz.reshape(nz.shape[0], nz.shape[1])
    return nz.flatten(2).any(dim=2) if nz.dim() > 2 else nz


def _zero_filters(p: Producer, nz: torch.Tensor) -> List[bool]:
    return (~nz.any(dim=1 - p.out_dim)).tolist()


def _zero_inputs(c: Consumer, nz: torch.Tensor) -> List[bool]:
    if c.kind == "dense":
        return (~nz.any(dim=1 - c.in_dim)).tolist()
    if c.kind == "depthwise":   # input channel i is read by filters i*q .. i*q+q-1
        return (~nz.reshape(len(c.ids), -1).any(dim=1)).tolist()
    g = c.groups
    return (~nz.reshape(g, nz.shape[0] // g, nz.shape[1]).any(dim=1).reshape(-1)).tolist()


@dataclass
class Plan:
    """The classes (union-find roots) to remove, before it is turned into a recipe."""
    graph: ChannelGraph
    kind: str
    removed: Set[int]
    ignored: Set[int]        # classes every consumer ignores (removal exact whatever their values)
    warnings: List[str]


def make_plan(graph: ChannelGraph, model: nn.Module, kind: str) -> Plan:
    """Choose the classes to remove; raises ThinningError when a wanted one is blocked."""
    if kind not in MODES:
        raise ValueError(f"unknown thinning kind {kind!r}; valid: {', '.join(MODES)}")
    tensors = _tensors(model)
    cache: Dict[str, torch.Tensor] = {}

    def nonzero(name: str) -> torch.Tensor:
        if name not in cache:
            cache[name] = _nonzero_2d(tensors[name])
        return cache[name]

    by_filters = kind in ("remove_filters", "contract_model")
    by_channels = kind in ("remove_channels", "contract_model")
    # per layer, per position: a zero filter (producers), an all-zero input channel (consumers)
    pzero = [_zero_filters(p, nonzero(p.weight)) for p in graph.producers] if by_filters else None
    czero = [_zero_inputs(c, nonzero(c.weight)) for c in graph.consumers] if by_channels else None
    fz: Dict[int, bool] = {}
    cz: Dict[int, bool] = {}
    owner: Dict[int, str] = {}
    for k, p in enumerate(graph.producers):
        roots = graph.roots(p.ids)
        for r in roots:
            owner.setdefault(r, p.module)
        if by_filters:
            for r, z in zip(roots, pzero[k]):
                fz[r] = fz.get(r, True) and z
    for k, c in enumerate(graph.consumers):
        roots = graph.roots(c.ids)
        for r in roots:
            owner.setdefault(r, c.module)
        if by_channels:
            for r, z in zip(roots, czero[k]):
                cz[r] = cz.get(r, True) and z
    ignored = {r for r, z in cz.items() if z} if by_channels else set()
    wanted = ({r for r, z in fz.items() if z} if by_filters else set()) | ignored

    errors: Dict[str, str] = {}
    removed: Set[int] = set()
    for r in sorted(wanted):
        if r in graph.hard:
            errors.setdefault(owner.get(r, "?"), graph.hard[r])
        elif r in graph.soft:
            continue
        elif r not in ignored and r in graph.dirty:
            errors.setdefault(owner.get(r, "?"), graph.dirty[r])
        else:
            removed.add(r)
    if errors:
        layer, reason = next(iter(errors.items()))
        more = f" (and {len(errors) - 1} more layers: {', '.join(list(errors)[1:4])}" \
               f"{' ...' if len(errors) > 4 else ''})" if len(errors) > 1 else ""
        raise ThinningError(f"cannot thin {layer}: {reason}; its zero channels cannot be removed "
                            f"exactly{more}. Nothing was changed.")

    notes: List[str] = []
    # every layer keeps one output channel; every consumer keeps one input
    for rec in list(graph.producers) + list(graph.consumers):
        roots = graph.roots(rec.ids)
        if roots and all(r in removed for r in roots):
            removed.discard(roots[0])
            role = "filter" if isinstance(rec, Producer) else "input channel"
            msg = (f"thinning {rec.module}: every {role} of '{rec.weight}' is removable; keeping "
                   f"channel 0 so the layer is not emptied")
            notes.append(msg)
            warnings.warn(msg, stacklevel=3)
    _balance_groups(graph, removed)
    return _add_selections(Plan(graph, kind, removed, ignored, notes), model, pzero, czero)


def _balance_groups(graph: ChannelGraph, removed: Set[int]) -> None:
    """Grouped convs keep equal channel counts per group: un-remove until they are balanced."""
    grouped = [r for r in list(graph.producers) + list(graph.consumers) if r.kind == "grouped"]
    changed = True
    while changed and grouped:
        changed = False
        for rec in grouped:
            roots = graph.roots(rec.ids)
            per = len(roots) // rec.groups
            counts = [sum(1 for r in roots[j * per:(j + 1) * per] if r in removed)
                      for j in range(rec.groups)]
            target = min(min(counts), per - 1)
            for j, n in enumerate(counts):
                extra = n - target
                for r in reversed(roots[j * per:(j + 1) * per]):
                    if extra <= 0:
                        break
                    if r in removed:
                        removed.discard(r)
                        changed = True
                        extra -= 1


# ---------------------------------------------------------------------------------------------
# Channel selection: a batch norm drops channels that its (shared) input keeps.


def _bn_zero_outputs(f: Follower, tensors: Dict[str, torch.Tensor]) -> List[bool]:
    """Per output channel of a batch norm: zero whatever its input (gamma = beta = 0), in eval
    and in training mode alike."""
    w, b = tensors.get(f"{f.module}.weight"), tensors.get(f"{f.module}.bias")
    if w is None or b is None:
        return [False] * len(f.ids)
    return ((w.detach() == 0) & (b.detach() == 0)).tolist()


def _add_selections(plan: Plan, model: nn.Module, pzero, czero) -> Plan:
    """``plan`` plus the channels batch norms can drop although their input keeps them.

    The batch norms with such a channel (zero, or ignored by some consumer, in a class the plan
    keeps) get their links cut (``ChannelGraph.cut``); what the plan removes is removed in the cut
    graph too, and the classes on either side of a cut link that are now removable on their own
    are added. Returns ``plan`` itself when there are none, so the recipe is then the plain one.
    """
    tensors = _tensors(model)
    zero_out = {f.module: _bn_zero_outputs(f, tensors) for f in plan.graph.followers
                if f.in_ids is not None}
    names = _selection_candidates(plan, zero_out, czero)
    if not names:
        return plan
    gk = plan.graph.cut(names)
    find_c, find_k = plan.graph.uf.find, gk.uf.find
    removed, ignored = set(), set()
    for e in range(len(gk.uf.parent)):
        r = find_c(e)
        if r in plan.removed:
            removed.add(find_k(e))
        if r in plan.ignored:
            ignored.add(find_k(e))
    cut = [f for f in gk.followers if f.module in names]
    chosen, unread, links = _selectable(gk, plan.kind, removed, cut, zero_out, pzero, czero,
                                        _exactly_zero(gk, names, tensors, model))
    notes = _settle(gk, removed, chosen, links, cut)
    if not chosen:
        return plan
    return Plan(gk, plan.kind, removed | chosen, ignored | (unread & chosen),
                plan.warnings + notes)


def _selection_candidates(plan: Plan, zero_out: Dict[str, List[bool]], czero) -> Set[str]:
    """Batch norms with a channel in a kept class that is zero (gamma = beta = 0) or that a
    consumer ignores: cutting their links may let them drop it."""
    g = plan.graph
    partly_ignored: Set[int] = set()
    if czero is not None:
        for c, zs in zip(g.consumers, czero):
            partly_ignored.update(r for r, z in zip(g.roots(c.ids), zs) if z)
    by_filters = plan.kind != "remove_channels"
    names: Set[str] = set()
    for f in g.followers:
        if f.in_ids is None:
            continue
        for r, z in zip(g.roots(f.ids), zero_out[f.module]):
            if r not in plan.removed and ((by_filters and z) or r in partly_ignored):
                names.add(f.module)
                break
    return names


def _exactly_zero(gk: ChannelGraph, cut: Set[str], tensors: Dict[str, torch.Tensor],
                  model: nn.Module) -> Callable[[int], bool]:
    """Whether a class stays exactly zero from zero filters on: no producer has a bias there, and
    no per-channel layer on its way (other than the cut batch norms) shifts it.

    Plain thinning removes such channels and counts them (``nonzero_bias_removed``); a selection
    is only made where it is exact.
    """
    shifted: Set[int] = set()

    def mark(ids: List[int], values: Optional[torch.Tensor]) -> None:
        if values is not None:
            shifted.update(r for r, nz in zip(gk.roots(ids), values.detach().ne(0).tolist()) if nz)

    for p in gk.producers:
        mark(p.ids, tensors[p.bias] if p.bias else None)
    for f in gk.followers:
        if f.module not in cut:
            bias = f"{f.module}.bias"
            mark(f.ids, _bn_shift(tensors, f.shift, model, f.module) if f.shift else
                 tensors[bias] if bias in f.tensors else None)
    return lambda r: r not in shifted


def _cut_links(gk: ChannelGraph, cut: List[Follower]):
    """({input class: output classes of cut batch norms reading it}, {output class: input
    classes}, {input class: modules reading it: its consumers and the cut batch norms}).

    A depthwise convolution is no reader: its filters continue the class it reads.
    """
    find = gk.uf.find
    links: Dict[int, Set[int]] = {}
    sources: Dict[int, Set[int]] = {}
    readers: Dict[int, Set[str]] = {}
    for f in cut:
        for o, i in f.links():
            a, b = find(i), find(o)
            links.setdefault(a, set()).add(b)
            sources.setdefault(b, set()).add(a)
            readers.setdefault(a, set()).add(f.module)
    for c in gk.consumers:
        if c.kind != "depthwise":
            for r in set(gk.roots(c.ids)):
                if r in readers:
                    readers[r].add(c.module)
    return links, sources, readers


def _selectable(gk: ChannelGraph, kind: str, removed: Set[int], cut: List[Follower],
                zero_out: Dict[str, List[bool]], pzero, czero, exactly_zero: Callable[[int], bool]):
    """The classes of the cut graph ``gk`` beside a cut link that can now go on their own.

    A class goes by its filters when all its producers, cut batch norms included, are zero there
    and it stays exactly zero on its way to its consumers (no bias or batch-norm shift, nothing
    mapping zero to non-zero), or by its channels when every consumer ignores it. Left alone:
    blocked classes; classes touching a grouped or depthwise convolution (whose groups stay
    balanced); and the output of a batch norm whose input nothing else reads: such an input is
    kept for a reason (group balancing, the model's input) that holds for the batch norm too, so
    it stays as it was. Returns (chosen classes, those chosen by their channels, links).
    """
    by_filters, by_channels = kind != "remove_channels", kind != "remove_filters"
    links, sources, readers = _cut_links(gk, cut)
    touched = set(links) | set(sources)
    produced: Dict[int, bool] = {}   # class -> every producer, cut batch norms included, is zero
    read: Dict[int, bool] = {}       # class -> some consumer reads it
    if by_filters:
        for f in cut:
            for b, z in zip(gk.roots(f.ids), zero_out[f.module]):
                produced[b] = produced.get(b, True) and z
        for p, zs in zip(gk.producers, pzero):
            for r, z in zip(gk.roots(p.ids), zs):
                if r in touched:
                    produced[r] = produced.get(r, True) and z
    if by_channels:
        for c, zs in zip(gk.consumers, czero):
            for r, z in zip(gk.roots(c.ids), zs):
                if r in touched:
                    read[r] = read.get(r, False) or not z
    odd = {r for rec in list(gk.producers) + list(gk.consumers) if rec.kind != "dense"
           for r in gk.roots(rec.ids)}
    chosen: Set[int] = set()
    unread: Set[int] = set()
    for r in touched - removed:
        if r in gk.hard or r in gk.soft or r in odd or \
                any(len(readers[a]) < 2 for a in sources.get(r, ())):
            continue
        if by_filters and produced.get(r) and r not in gk.dirty and exactly_zero(r):
            chosen.add(r)
        elif by_channels and (r in read or r in links) and not read.get(r, False):
            chosen.add(r)
            unread.add(r)
    return chosen, unread, links


def _settle(gk: ChannelGraph, removed: Set[int], chosen: Set[int], links: Dict[int, Set[int]],
            cut: List[Follower]) -> List[str]:
    """Un-choose classes (in place) until the choice is consistent; returns the warnings.

    A class read by a cut batch norm can go only with every output channel reading it (a batch norm
    cannot select a channel its input lost); and no layer, cut batch norms included, may lose all
    its channels.
    """
    notes: List[str] = []
    while True:
        stale = {r for r in chosen if any(b not in removed and b not in chosen
                                          for b in links.get(r, ()))}
        if stale:
            chosen -= stale
            continue
        emptied = False
        for rec in list(gk.producers) + list(gk.consumers) + cut:
            roots = gk.roots(rec.ids)
            if not roots or not all(r in removed or r in chosen for r in roots):
                continue
            j = next((j for j, r in enumerate(roots) if r in chosen), None)
            if j is None:
                continue
            chosen.discard(roots[j])
            emptied = True
            role = "filter" if isinstance(rec, Producer) else \
                "input channel" if isinstance(rec, Consumer) else "channel"
            msg = (f"thinning {rec.module}: every {role} would be removed or deselected; keeping "
                   f"{role} {j} so the layer is not emptied")
            notes.append(msg)
            warnings.warn(msg, stacklevel=5)
        if not emptied:
            return notes


def _kept(graph: ChannelGraph, ids: List[int], removed: Set[int]) -> List[int]:
    find = graph.uf.find
    return [i for i, x in enumerate(ids) if find(x) not in removed]


def build_recipe(plan: Plan, model: nn.Module) -> ThinningResult:
    """Turn a plan into a recipe (plain data) and a result summary; changes nothing."""
    graph, removed = plan.graph, plan.removed
    result = ThinningResult(plan.kind, warnings=list(plan.warnings))
    if not removed:
        return result
    tensors = _tensors(model)
    entries: Dict[str, dict] = {}
    modules: Dict[str, dict] = {}

    def op(name: str, spec: dict) -> None:
        entry = entries.setdefault(name, {"shape": list(tensors[name].shape), "ops": []})
        entry["ops"].append(spec)

    find = graph.uf.find
    for p in graph.producers:
        keep = _kept(graph, p.ids, removed)
        if len(keep) == len(p.ids):
            continue
        op(p.weight, {"dim": p.out_dim, "index": keep})
        if p.bias:
            op(p.bias, {"dim": 0, "index": keep})
        modules.setdefault(p.module, {})[p.attr] = len(keep)
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
            op(c.weight, {"dim": c.in_dim, "index": keep})
            modules.setdefault(c.module, {})[c.attr] = len(keep)
        elif c.kind == "depthwise":   # its filters were selected as a producer
            modules.setdefault(c.module, {}).update({"in_channels": len(keep), "groups": len(keep)})
        else:
            per = len(c.ids) // c.groups
            local = [[i - j * per for i in keep if j * per <= i < (j + 1) * per]
                     for j in range(c.groups)]
            op(c.weight, {"dim": c.in_dim, "groups": c.groups, "index": local})
            modules.setdefault(c.module, {})[c.attr] = len(keep)
    selections: Dict[str, dict] = {}
    for f in graph.followers:
        keep = _kept(graph, f.ids, removed)
        selection = _selection(graph, f, keep, removed) if f.in_ids is not None else None
        if selection is not None:
            selections[f.module] = selection
            result.selected[f.module] = (len(selection["index"]), selection["in_channels"])
        if len(keep) == len(f.ids):
            continue
        for t in f.tensors:
            op(t, {"dim": 0, "index": keep})
        for a in f.attrs:
            modules.setdefault(f.module, {})[a] = len(keep)
        if f.shift:
            shift = _bn_shift(tensors, f.shift, model, f.module)
            if shift is not None:
                n = sum(1 for i, x in enumerate(f.ids) if find(x) in removed
                        and find(x) not in plan.ignored and float(shift[i]) != 0.0)
                if n:
                    result.nonzero_bias_layers[f.module] = result.nonzero_bias_layers.get(f.module, 0) + n
    result.nonzero_bias_removed = sum(result.nonzero_bias_layers.values())
    result.recipe = {"version": RECIPE_VERSION, "kind": plan.kind, "modules": modules,
                     "tensors": entries}
    if selections:
        result.recipe.update(version=SELECTION_RECIPE_VERSION, selections=selections)
    return result


def _selection(graph: ChannelGraph, f: Follower, keep_out: List[int],
               removed: Set[int]) -> Optional[dict]:
    """What a batch norm must read after thinning, ``{"in_channels": n, "index": [...]}``
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
    return {"in_channels": len(keep_in), "index": index}


def _bn_shift(tensors, names, model, module) -> Optional[torch.Tensor]:
    """A batch norm's output for a zero input in eval mode: beta - gamma * mean / std."""
    bias, weight, mean, var = (tensors.get(n) if n else None for n in names)
    eps = getattr(model.get_submodule(module), "eps", 1e-5)
    with torch.no_grad():
        shift = torch.zeros_like(mean if mean is not None else bias) if (
            mean is not None or bias is not None) else None
        if shift is None:
            return None
        if mean is not None and var is not None:
            scale = weight.detach() if weight is not None else torch.ones_like(mean)
            shift = shift - scale * mean / torch.sqrt(var + eps)
        if bias is not None:
            shift = shift + bias.detach()
    return shift
