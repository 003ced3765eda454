"""Zero structures -> which channel classes to remove (a ``Plan``).

A channel class (see ``graph``) is removed

* by its *filters* (``remove_filters``) when every layer producing it has an all-zero filter for
  it: the channel is then zero in the masked network (up to biases and batch-norm shifts, which
  the result counts), so no consumer notices it is gone;
* by its *channels* (``remove_channels``) when every layer consuming it has all-zero weights for
  it: no consumer reads it, so whatever the producers compute there does not matter;
* by either (``contract_model``).

Each layer keeps at least one output channel (with a warning), and grouped convolutions remove the
same number of channels from each of their groups (extra zero channels are kept to balance them).
Batch norms that can drop channels their shared input keeps are added by ``bn_plan``; ``build``
turns the plan into a recipe.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Set

import torch
from torch import nn

from ..errors import ThinningError
from .bn_plan import add_selections, named_tensors
from .rms import stream_roots
from ..graph import ChannelGraph, Consumer, Producer

MODES = ("remove_filters", "remove_channels", "contract_model")


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
    tensors = named_tensors(model)
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
    ignored -= stream_roots(graph)   # an RMS norm still counts an unread channel (thinning.rms)
    wanted = ({r for r, z in fz.items() if z} if by_filters else set()) | ignored

    errors: Dict[str, str] = {}
    removed: Set[int] = set()
    for r in sorted(wanted):
        if r in graph.hard:
            errors.setdefault(owner.get(r, "?"), graph.hard[r])
        elif r in graph.soft:
            continue
        elif r in graph.norm:
            errors.setdefault(owner.get(r, "?"), graph.norm[r])
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
    while _balance_parts(graph, removed):   # each un-removes; groups may need balancing again
        _balance_groups(graph, removed)
    return add_selections(Plan(graph, kind, removed, ignored, notes), model, pzero, czero)


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


def _part_counts(graph: ChannelGraph, rec, removed: Set[int]) -> List[int]:
    roots = graph.roots(rec.ids)
    per = len(roots) // rec.groups
    return [sum(1 for r in roots[j * per:(j + 1) * per] if r in removed) for j in range(rec.groups)]


def _balance_parts(graph: ChannelGraph, removed: Set[int]) -> bool:
    """Tensors cut into equal parts (``torch.chunk``, see ``graph.Balanced``) lose as many
    channels from every part, and keep one in each: un-remove classes of the part that loses most
    until they do. A class may sit at several positions (a channel shuffle couples them), so the
    counts are recomputed after each change. Returns whether anything changed."""
    changed = False
    for rec in graph.balanced:
        per = len(rec.ids) // rec.groups
        while True:
            counts = _part_counts(graph, rec, removed)
            if len(set(counts)) == 1 and counts[0] < per:
                break
            j = max(range(rec.groups), key=lambda k: counts[k])
            roots = graph.roots(rec.ids[j * per:(j + 1) * per])
            removed.discard(next(r for r in reversed(roots) if r in removed))
            changed = True
    return changed
