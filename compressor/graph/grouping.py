"""Which output channels a layer must lose in equal numbers: the groups of grouped convolutions.

Thinning keeps a grouped convolution's groups equal in size: it removes the same number of
channels from each group of its output channels, and of its input channels (``thinning/plan.py``
keeps extra zero channels until the counts balance). A pruner that zeroes filters without knowing
this wastes them: a group loses only as many channels as its least-pruned group. ``balanced_cells``
tells the pruner, per producing layer, which of its output channels fall in the same group of each
grouped convolution they feed or are, so it can prune the same count from every group. Tensors that
``torch.chunk`` cuts into equal parts along channels are balanced the same way.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Sequence

from .records import ChannelGraph


def _grouped_records(graph: ChannelGraph):
    """(channel classes in position order, groups) for each grouped conv's outputs and inputs,
    and each tensor cut into equal parts (``Balanced``: ``torch.chunk`` along channels)."""
    records = list(graph.producers) + list(graph.consumers) + list(getattr(graph, "balanced", []))
    for rec in records:
        if rec.kind == "grouped" and rec.groups > 1 and len(rec.ids) % rec.groups == 0:
            yield graph.roots(rec.ids), rec.groups


def balanced_cells(graph: ChannelGraph, order: Sequence[str] = ()) -> Dict[str, List[int]]:
    """{producer weight: a cell number per output channel} for layers whose channels meet a grouped
    convolution; a pruner that zeroes the same number of filters in every cell leaves thinning
    nothing to keep for balance.

    A producer is constrained by a grouped convolution (as its output or its input) whose channel
    classes are exactly the producer's own: channel ``i`` falls in the group of its class there.
    The cells are the common refinement of all such constraints (the tuple of group numbers per
    channel, numbered in sorted order, so layers under the same constraints number them alike). Cells of unequal sizes (constraints that do
    not nest, or channels that repeat a class) give no entry, nor do channels shared with other
    layers in a concatenation: there the producer alone cannot balance the groups, and thinning
    balances them as before. ``order`` (parameter names) only orders the result.
    """
    group_of: List[Dict[int, int]] = []   # per grouped record: class root -> its group number
    for roots, groups in _grouped_records(graph):
        per = len(roots) // groups
        mapping: Dict[int, int] = {}
        # a class may sit at several places (a channel shuffle couples them): fine while all
        # are in one group, else no producer can balance that record by itself
        if all(mapping.setdefault(r, i // per) == i // per for i, r in enumerate(roots)):
            group_of.append(mapping)
    if not group_of:
        return {}
    out: Dict[str, List[int]] = {}
    for p in graph.producers:
        roots = graph.roots(p.ids)
        own = set(roots)
        if len(own) != len(roots):
            continue
        keys: List[tuple] = [() for _ in roots]
        for mapping in group_of:
            if own == set(mapping):
                keys = [k + (mapping[r],) for k, r in zip(keys, roots)]
        if not keys or not keys[0]:
            continue
        number = {k: i for i, k in enumerate(sorted(set(keys)))}   # the same for every layer
        cells = [number[k] for k in keys]                          # under the same constraints
        if len(number) > 1 and len(set(Counter(cells).values())) == 1:
            out[p.weight] = cells
    rank = {n: i for i, n in enumerate(order)}
    return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))
