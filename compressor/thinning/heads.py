"""Ranking whole channel classes (attention heads, MLP neurons) and masking the weakest ones.

Thinning removes channel classes (``compressor.graph``): an MLP neuron is one class (its rows of
the up/gate projections and its column of the down projection), an attention head (or, with
grouped-query attention, a key/value head with its query heads) is one class spanning ``head_dim``
rows of q/k/v and as many columns of the output projection. ``class_scores`` gives every removable
class the L1 norm of all its weight slices; ``class_masks`` groups the classes by the layer that
reads them (the output or down projection), and masks the ``fraction`` with the lowest scores in
each group: their producer rows (and biases) and their consumer columns. The zero consumer
columns alone make removal exact (no layer reads the class any more), so ``contract_model`` of the
masked model computes the same function. ``attention_outputs`` names the output projections of the
attention modules the graph recognised, to tell heads from neurons.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set

import torch
from torch import nn

from ..graph import ChannelGraph, Producer
from ..graph.attention import find_heads, window_base, window_heads
from .rms import stream_roots


def attention_outputs(model: nn.Module) -> Set[str]:
    """The output-projection module paths of the attention modules the graph recognises:
    ``find_heads`` (Hugging Face), ``nn.MultiheadAttention`` and torchvision's window attention
    (Swin, MaxViT)."""
    out = set()
    for name, mod in model.named_modules():
        h = find_heads(name, mod)
        if h is not None:
            out.add(h.o)
        elif isinstance(mod, nn.MultiheadAttention):
            out.add(f"{name}.out_proj" if name else "out_proj")
        else:
            wh = window_heads(mod) if window_base(mod) is not None else None
            if wh is not None and not isinstance(wh, str):
                out.add(f"{name}.{wh.proj}" if name else wh.proj)
    return out


def stream_readers(graph: ChannelGraph) -> Set[str]:
    """The layers reading the residual stream (hidden size) of a Llama-style decoder, whose
    classes the RMS norms read too (``graph.stream``): q/k/v/gate/up projections, ``lm_head``.
    Every one reads the same classes, so ranking through any one ranks the stream."""
    roots = stream_roots(graph)
    return {c.module for c in graph.consumers if roots and
            any(r in roots for r in graph.roots(c.ids))}


def class_scores(graph: ChannelGraph, model: nn.Module) -> Dict[int, float]:
    """{class root: L1 norm of every weight and bias slice of the class} for removable classes."""
    params = dict(model.named_parameters())
    score: Dict[int, float] = {}

    def add(roots: List[int], per: torch.Tensor) -> None:
        for r, v in zip(roots, per.tolist()):
            if graph.filter_block(r) is None:
                score[r] = score.get(r, 0.0) + v

    with torch.no_grad():
        for p in graph.producers:
            w = params[p.weight].abs()
            per = w.transpose(0, p.out_dim).flatten(1).sum(1)
            if p.bias:
                per = per + params[p.bias].abs()
            add(graph.roots(p.ids), per)
        for c in graph.consumers:
            if c.kind == "dense":
                w = params[c.weight].abs()
                add(graph.roots(c.ids), w.transpose(0, c.in_dim).flatten(1).sum(1))
    return score


def class_masks(graph: ChannelGraph, model: nn.Module, fraction: float,
                readers: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Masks (bool, True = keep) zeroing the ``fraction`` weakest classes read by each layer.

    ``readers``: the consumer modules whose classes are ranked (None: every dense consumer). Each
    layer keeps at least one class. Layers not touched get no mask."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    readers = None if readers is None else set(readers)
    params = dict(model.named_parameters())
    score = class_scores(graph, model)
    drop: Set[int] = set()
    for c in graph.consumers:
        if c.kind != "dense" or (readers is not None and c.module not in readers):
            continue
        roots = list(dict.fromkeys(graph.roots(c.ids)))
        ranked = sorted((r for r in roots if r in score), key=lambda r: (score[r], r))
        n = min(int(round(fraction * len(roots))), len(roots) - 1, len(ranked))
        drop.update(ranked[:n])
    masks: Dict[str, torch.Tensor] = {}

    def cut(name: str, dim: int, roots: List[int]) -> None:
        gone = torch.tensor([r in drop for r in roots])
        if not bool(gone.any()):
            return
        m = masks.setdefault(name, torch.ones_like(params[name], dtype=torch.bool))
        shape = [1] * m.dim()
        shape[dim] = len(roots)
        m &= ~gone.view(shape)

    for p in graph.producers:
        roots = graph.roots(p.ids)
        cut(p.weight, p.out_dim, roots)
        if p.bias:
            cut(p.bias, 0, roots)
    for c in graph.consumers:
        if c.kind == "dense":
            cut(c.weight, c.in_dim, graph.roots(c.ids))
    return masks


def class_params(graph: ChannelGraph, readers: Iterable[str]) -> List[str]:
    """The weights and biases ``class_masks`` may mask for the classes ``readers`` read."""
    readers = set(readers)
    roots = {r for c in graph.consumers if c.kind == "dense" and c.module in readers
             for r in graph.roots(c.ids) if graph.filter_block(r) is None}
    names: List[str] = []
    for rec in list(graph.producers) + list(graph.consumers):
        if any(r in roots for r in graph.roots(rec.ids)):
            extra = [rec.bias] if isinstance(rec, Producer) and rec.bias else []
            names.extend(n for n in [rec.weight, *extra] if n not in names)
    return names


def apply_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Multiply each named parameter by its mask, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].dtype))
