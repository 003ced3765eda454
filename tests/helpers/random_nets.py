"""Random networks for property tests of thinning: ``RandomNet`` and the hypothesis strategy
``networks`` that draws its ops (residual additions, concatenations, grouped and depthwise
convolutions, batch norm, a linear head after a flatten of a non-square map)."""
from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn


class RandomNet(nn.Module):
    """Runs ``ops`` over a list of values; value 0 is the input. fx unrolls the loop."""

    def __init__(self, ops, head_in, hidden):
        super().__init__()
        self.ops = ops
        self.layers = nn.ModuleDict()
        for i, op in enumerate(ops):
            kind = op[0]
            if kind == "conv":
                _, _, cin, cout, k, groups, bias = op
                self.layers[f"op{i}"] = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups,
                                                  bias=bias)
            elif kind == "bn":
                self.layers[f"op{i}"] = nn.BatchNorm2d(op[2])
        self.fc1 = nn.Linear(head_in, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x):
        vals = [x]
        for i, op in enumerate(self.ops):
            kind, src = op[0], vals[op[1]]
            if kind in ("conv", "bn"):
                y = self.layers[f"op{i}"](src)
            elif kind == "relu":
                y = torch.relu(src)
            elif kind == "pool":
                y = nn.functional.max_pool2d(src, 2)
            elif kind == "add":
                y = src + vals[op[2]]
            elif kind == "cat":
                y = torch.cat([src, vals[op[2]]], 1)
            elif kind == "scale":
                y = src * 0.5
            else:   # "shift": not zero-preserving
                y = src + 1.0
            vals.append(y)
        y = torch.relu(self.bn1(self.fc1(torch.flatten(vals[-1], 1))))
        return self.fc2(y)


@st.composite
def networks(draw):
    cin = draw(st.integers(1, 3))
    h = draw(st.integers(2, 5))
    w = h + draw(st.integers(1, 3))                       # never square
    vals = [(cin, h, w)]
    ops = []
    for _ in range(draw(st.integers(2, 9))):
        src = draw(st.sampled_from([len(vals) - 1, len(vals) - 1, draw(st.integers(0, len(vals) - 1))]))
        c, hh, ww = vals[src]
        kind = draw(st.sampled_from(["conv", "conv", "dw", "dw", "grouped", "grouped", "grouped",
                                     "bn", "relu", "pool", "add", "add", "cat", "scale", "shift"]))
        if kind == "dw":
            ops.append(("conv", src, c, c * draw(st.integers(1, 2)), 3, c, draw(st.booleans())))
            vals.append((ops[-1][3], hh, ww))
        elif kind == "grouped" and [g for g in (2, 3, 4) if c % g == 0 and c > g]:
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0 and c > g]))
            ops.append(("conv", src, c, g * draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])), g,
                        draw(st.booleans())))
            vals.append((ops[-1][3], hh, ww))
        elif kind in ("conv", "grouped"):
            ops.append(("conv", src, c, draw(st.integers(1, 6)), draw(st.sampled_from([1, 3])), 1,
                        draw(st.booleans())))
            vals.append((ops[-1][3], hh, ww))
        elif kind == "bn":
            ops.append(("bn", src, c))
            vals.append((c, hh, ww))
        elif kind == "pool" and hh >= 2 and ww >= 2:
            ops.append(("pool", src))
            vals.append((c, hh // 2, ww // 2))
        elif kind == "add":
            same = [j for j, v in enumerate(vals) if v == vals[src]]
            ops.append(("add", src, draw(st.sampled_from(same))))
            vals.append(vals[src])
        elif kind == "cat":
            same = [j for j, v in enumerate(vals) if v[1:] == vals[src][1:]]
            other = draw(st.sampled_from(same))
            ops.append(("cat", src, other))
            vals.append((c + vals[other][0], hh, ww))
        elif kind in ("relu", "scale", "shift"):
            ops.append((kind, src))
            vals.append(vals[src])
    if not ops or ops[-1][0] != "conv":   # end on a layer whose channels can go
        c, hh, ww = vals[-1]
        ops.append(("conv", len(vals) - 1, c, draw(st.integers(1, 6)), 1, 1, True))
        vals.append((ops[-1][3], hh, ww))
    c, hh, ww = vals[-1]
    return (cin, h, w), ops, c * hh * ww, draw(st.integers(2, 5))
