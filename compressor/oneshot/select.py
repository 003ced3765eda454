"""Which weights to drop, given a score per weight: the lowest scores go, ties broken by position.

Scores are compared per layer (``per_row=False``), per output row (``per_row=True``, Wanda's
comparison group), or inside blocks of ``m`` consecutive inputs (N:M). Every selection sorts the
scores with a *stable* sort, so among equal scores the weight with the lower index (row-major
position in the weight) is pruned first. Dequantized weights (GGUF Q4_1, for example) hold many
exact ties; with this rule the same weights and inputs always give the same mask, and the count
pruned is exactly ``floor(fraction * group size)`` whatever the ties.
"""
from __future__ import annotations

import torch

from ..pruners.base import count_to_prune


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor of ``scores``' shape, True on the ``k`` lowest entries of each row (last dim)."""
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=-1, stable=True).indices
        drop.scatter_(-1, order[..., :k], True)
    return drop


def unstructured_keep(scores: torch.Tensor, fraction: float, per_row: bool) -> torch.Tensor:
    """Keep mask dropping ``floor(fraction * n)`` lowest scores per layer or per output row."""
    rows = scores.reshape(scores.shape[0], -1)
    if per_row:
        drop = lowest_k(rows, count_to_prune(fraction, rows.shape[1]))
    else:
        flat = rows.reshape(1, -1)
        drop = lowest_k(flat, count_to_prune(fraction, flat.shape[1]))
    return (~drop).reshape(scores.shape)


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with ``n`` kept of every ``m`` consecutive inputs (dim 1) of a 2-D weight."""
    rows, cols = scores.shape
    blocks = scores.reshape(rows, cols // m, m)
    return (~lowest_k(blocks, m - n)).reshape(rows, cols)
