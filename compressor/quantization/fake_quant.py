"""The arithmetic of quantization-aware training: fake quantization with straight-through gradients.

Range-linear fake quantization uses PyTorch's own ``torch.fake_quantize_per_tensor_affine`` and
``torch.fake_quantize_per_channel_affine`` (gradient passes inside the range, zero outside). DoReFa's
weight transform and PACT's learned clip are written here from their papers' formulas on top of the
same rounding. Every function keeps an exact zero at zero: a pruned weight stays exactly zero in
the forward pass (for DoReFa, whose transform maps 0 to a small non-zero level, the zeros of the
float weight are put back explicitly).
"""
from __future__ import annotations

from typing import Tuple

import torch

SYMMETRIC = "SYMMETRIC"
ASYMMETRIC_UNSIGNED = "ASYMMETRIC_UNSIGNED"
ASYMMETRIC_SIGNED = "ASYMMETRIC_SIGNED"
MODES = (SYMMETRIC, ASYMMETRIC_UNSIGNED, ASYMMETRIC_SIGNED)


def qrange(bits: int, mode: str) -> Tuple[int, int]:
    """The integer range of ``bits``-bit values in ``mode`` (symmetric is restricted: -(2^(b-1)-1)..)."""
    if mode == ASYMMETRIC_UNSIGNED:
        return 0, 2 ** bits - 1
    if mode == ASYMMETRIC_SIGNED:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1


def qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, mode: str):
    """Scale (float) and zero point (int32) mapping [lo, hi] (widened to hold 0) onto ``bits`` bits."""
    qmin, qmax = qrange(bits, mode)
    lo = torch.clamp(lo.detach().float(), max=0.0)
    hi = torch.clamp(hi.detach().float(), min=0.0)
    if mode == SYMMETRIC:
        scale = torch.maximum(lo.abs(), hi) / qmax
        zero = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = None
    scale = torch.clamp(scale, min=1e-8)
    if zero is None:
        zero = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero, qmin, qmax


def fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, mode: str,
               axis: int = None) -> torch.Tensor:
    """``x`` rounded to the ``bits``-bit grid of [lo, hi] (per channel along ``axis`` when given)."""
    scale, zero, qmin, qmax = qparams(lo, hi, bits, mode)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero.reshape(()), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale.to(x.dtype), zero, axis, qmin, qmax)


def range_linear_weight(w: torch.Tensor, bits: int, mode: str, per_channel: bool) -> torch.Tensor:
    """Distiller's ``linear_quantize_param``: the weight's own min/max (per output channel or whole)."""
    if per_channel:
        flat = w.detach().reshape(w.shape[0], -1)
        return fake_quant(w, flat.min(1).values, flat.max(1).values, bits, mode, axis=0)
    return fake_quant(w, w.detach().min(), w.detach().max(), bits, mode)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa-Net's weight quantizer: tanh, scaled into [0, 1], k-bit rounding, back to [-1, 1].

    Exactly-zero weights (pruned) stay zero; DoReFa itself would map them to a level near 0.
    """
    t = torch.tanh(w)
    t = t / (2 * t.detach().abs().max().clamp(min=1e-12)) + 0.5
    levels = 2 ** bits - 1
    out = 2 * (_round_ste(t * levels) / levels) - 1
    return torch.where(w == 0, torch.zeros_like(out), out)


def clipped_linear(x: torch.Tensor, bits: int, clip) -> torch.Tensor:
    """PACT's / DoReFa's activation: clamp to [0, clip] and round to ``bits`` bits (STE).

    ``clip`` is a number (DoReFa: 1) or a learned one-element tensor (PACT's alpha): its gradient
    is the sum of the upstream gradients where ``x`` was clipped, as in the PACT paper.
    """
    y = torch.relu(x)
    y = y - torch.relu(y - clip)          # min(relu(x), clip), differentiable in clip
    levels = 2 ** bits - 1
    c = clip.detach() if torch.is_tensor(clip) else torch.tensor(float(clip))
    c = c.clamp(min=1e-8)
    return _round_ste(y * (levels / c)) * (c / levels)
