"""Batch-norm channel selection in a thinning plan: channels a batch norm can drop although its
input keeps them.

When a batch norm's channel is zero (gamma = beta = 0) or ignored by every consumer after it, but
its class stays because its input is shared (a pre-activation ResNet's residual stream, which the
shortcut carries on), the batch norm *selects* channels instead: it drops the channel, reads only
the kept ones of its input, and the layers after it lose the channel (``add_selections``; see
``selection`` for the module side). Nothing else changes, so without such channels the plan is
the plain one (``plan``).
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set

import torch
from torch import nn

from ..graph import ChannelGraph, Consumer, Follower, Producer

if TYPE_CHECKING:   # plan imports this module; the type is only for annotations
    from .plan import Plan


def named_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by full name."""
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out



def _bn_zero_outputs(f: Follower, tensors: Dict[str, torch.Tensor]) -> List[bool]:
    """Per output channel of a batch norm: zero whatever its input (gamma = beta = 0), in eval
    and in training mode alike."""
    w, b = tensors.get(f"{f.module}.weight"), tensors.get(f"{f.module}.bias")
    if w is None or b is None:
        return [False] * len(f.ids)
    return ((w.detach() == 0) & (b.detach() == 0)).tolist()


def add_selections(plan: "Plan", model: nn.Module, pzero, czero) -> "Plan":
    """``plan`` plus the channels batch norms can drop although their input keeps them.

    The batch norms with such a channel (zero, or ignored by some consumer, in a class the plan
    keeps) get their links cut (``ChannelGraph.cut``); what the plan removes is removed in the cut
    graph too, and the classes on either side of a cut link that are now removable on their own
    are added. Returns ``plan`` itself when there are none, so the recipe is then the plain one.
    """
    tensors = named_tensors(model)
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
    return replace(plan, graph=gk, removed=removed | chosen, ignored=ignored | (unread & chosen),
                   warnings=plan.warnings + notes)


def _selection_candidates(plan: "Plan", zero_out: Dict[str, List[bool]], czero) -> Set[str]:
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
            mark(f.ids, bn_shift(tensors, f.shift, model, f.module) if f.shift else
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


def bn_shift(tensors, names, model, module) -> Optional[torch.Tensor]:
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
