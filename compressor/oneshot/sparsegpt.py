"""SparseGPT's layer-wise solver (Frantar & Alistarh, 2023), written from the paper's algorithm.

For a linear layer ``y = W x`` and calibration inputs ``X`` (columns ``x``), pruning asks for a
sparse ``W'`` that keeps ``||W X - W' X||`` small. With ``H = X Xᵀ`` (the layer's input Hessian,
damped by ``damp * mean(diag H)``), the optimal-brain-surgeon update after zeroing weight ``w_qj``
of row ``q`` spreads its error over the not-yet-visited columns of the row along the row ``j`` of
the upper Cholesky factor ``U`` of ``H⁻¹``: ``W[:, j:] -= (w_j / U_jj) U_j,j:``. The columns are
visited left to right in blocks of ``block_size``; at the start of each block the mask of that
block is chosen by the OBS saliency ``w² / U_jj²`` (lowest go): per block for unstructured
sparsity (``fraction`` of each block, the paper's adaptive mask selection), per group of ``m``
columns for N:M. Ties go to the lower position (``select.lowest_k``). The solver runs in float64.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..pruners.base import count_to_prune
from .select import lowest_k


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian (float64)."""
    h = hessian.to(torch.float64).clone()
    diag = torch.diagonal(h)
    dead = diag == 0                      # inputs that were always zero: any weight there is free
    diag[dead] = 1.0
    diag += damp * float(diag.mean())
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, fraction: float = 0.0,
                    nm: Optional[Tuple[int, int]] = None, block_size: int = 128,
                    damp: float = 0.01) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(new_weight, keep_mask)`` for a 2-D ``weight`` (out, in) and ``hessian`` (in, in).

    ``fraction``: unstructured sparsity of each column block; ``nm=(n, m)``: keep n of every m
    consecutive inputs. Zero weights count as pruned candidates like any other (their saliency is
    zero), so masks that were already there are kept when the sparsity covers them.
    """
    w = weight.detach().to(torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diagonal(hessian) == 0
    w[:, dead] = 0.0
    u = inverse_hessian_factor(hessian, damp)
    drop = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        d = torch.diagonal(u_block)
        errors = torch.zeros_like(block)
        block_drop = torch.zeros_like(block, dtype=torch.bool)
        if nm is None and fraction > 0:
            saliency = (block ** 2) / (d ** 2)
            flat = lowest_k(saliency.reshape(1, -1), count_to_prune(fraction, saliency.numel()))
            block_drop = flat.reshape(block.shape)
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                group = slice(i, i + nm[1])
                saliency = (block[:, group] ** 2) / (d[group] ** 2)
                block_drop[:, group] = lowest_k(saliency, nm[1] - nm[0])
            col = block[:, i]
            kept = torch.where(block_drop[:, i], torch.zeros_like(col), col)
            err = (col - kept) / d[i]
            block[:, i:] -= err.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = err
        w[:, start:end] = block
        drop[:, start:end] = block_drop
        w[:, end:] -= errors @ u[start:end, end:]
    w[drop] = 0.0
    return w.to(weight.dtype), ~drop
