"""Thinning test helpers: trained-looking batch norms, random zeroed structures, parameter counts.

``zero_structures`` reads the graph analysis to find which channels can go, zeroes them (as a
structured pruner leaves them) and returns the masks, so a test can thin and compare functions.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from compressor.graph import analyze_graph


@torch.no_grad()
def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)


@torch.no_grad()
def zero_structures(model, example, frac, seed, mode="filters"):
    """Zero random removable channel classes; returns {param name: mask} of what was zeroed.

    filters: every producing filter of a chosen channel, its bias, and the weight and bias of every
    batch norm on its way (so the channel is exactly zero, as the structured pruners leave it).
    channels: every consumer's input weights of a chosen channel.
    """
    g = analyze_graph(model, example)
    rng = random.Random(seed)
    roots = sorted({r for p in g.producers for r in g.roots(p.ids)})
    ok = [r for r in roots
          if not (g.hard.get(r) or g.soft.get(r) or (mode == "filters" and g.dirty.get(r)))]
    chosen = {r for r in ok if rng.random() < frac}
    params = dict(model.named_parameters())
    masks = {}

    def mask_of(name):
        if name not in masks:
            masks[name] = torch.ones_like(params[name])
        return masks[name]

    if mode == "filters":
        for p in g.producers:
            pos = torch.tensor([i for i, r in enumerate(g.roots(p.ids)) if r in chosen], dtype=torch.long)
            if len(pos):
                mask_of(p.weight).index_fill_(p.out_dim, pos, 0.0)
                if p.bias:
                    mask_of(p.bias).index_fill_(0, pos, 0.0)
        for f in g.followers:
            pos = torch.tensor([i for i, r in enumerate(g.roots(f.ids)) if r in chosen], dtype=torch.long)
            if len(pos):
                for t in f.tensors:
                    if t in params:
                        mask_of(t).index_fill_(0, pos, 0.0)
    else:
        for c in g.consumers:
            w = mask_of(c.weight)
            for i, r in enumerate(g.roots(c.ids)):
                if r not in chosen:
                    continue
                if c.kind == "dense":
                    w.select(c.in_dim, i).zero_()
                elif c.kind == "depthwise":
                    q = w.shape[0] // len(c.ids)
                    w[i * q:(i + 1) * q].zero_()
                else:
                    per = len(c.ids) // c.groups
                    j, q = i // per, w.shape[0] // c.groups
                    w[j * q:(j + 1) * q, i - j * per].zero_()
    for name, m in masks.items():
        params[name].mul_(m)
    return masks


def n_params(model):
    return sum(p.numel() for p in model.parameters())
