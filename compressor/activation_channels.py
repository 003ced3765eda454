"""Per-channel statistics of one activation tensor: mean L1 magnitude, mean value and APoZ.

These are Distiller's ``activation_channels_l1``, ``activation_channels_means`` and
``activation_channels_apoz`` (``distiller/utils.py``), the per-channel numbers that activation-based
channel ranking (Hu et al.'s APoZ, mean-activation pruning) works from. An activation is
``(batch, channels, h, w)`` or ``(batch, features)``; each function returns one value per channel
(feature), averaged over the batch, on the CPU. Sums are taken in float64 and the result is cast to
the activation's dtype once, so each value is the correctly rounded quotient of the exact sum (a
float32 activation of small integers gives exactly ``21 / 2``, not a neighbour). Unlike Distiller,
a 2D activation also gets one value per feature: Distiller averaged the whole row there and
returned a single number, contradicting its own "for each channel" contract.
"""
from __future__ import annotations

import torch

__all__ = ["activation_channels_l1", "activation_channels_means", "activation_channels_apoz"]


def _per_channel(activation: torch.Tensor, fn_name: str) -> torch.Tensor:
    """``activation`` as float64 ``(batch, channels, positions)``; other ranks are a ValueError."""
    if activation.dim() not in (2, 4):
        raise ValueError(f"{fn_name}: activation must have shape (batch, channels, h, w) or "
                         f"(batch, features); got shape {tuple(activation.shape)}")
    x = activation.detach().to("cpu", torch.float64)
    return x.reshape(x.shape[0], x.shape[1], -1)


def activation_channels_l1(activation: torch.Tensor) -> torch.Tensor:
    """For each channel: the L1 norm of its feature map, averaged over the batch."""
    x = _per_channel(activation, "activation_channels_l1")
    return (x.abs().sum(dim=(0, 2)) / x.shape[0]).to(activation.dtype)


def activation_channels_means(activation: torch.Tensor) -> torch.Tensor:
    """For each channel: the mean of its feature map (global average pooling), averaged over the batch."""
    x = _per_channel(activation, "activation_channels_means")
    return (x.sum(dim=(0, 2)) / (x.shape[0] * x.shape[2])).to(activation.dtype)


def activation_channels_apoz(activation: torch.Tensor) -> torch.Tensor:
    """For each channel: the Average Percentage of Zeros (0..100) of its feature maps over the batch."""
    x = _per_channel(activation, "activation_channels_apoz")
    return ((x == 0).sum(dim=(0, 2)).to(torch.float64) * 100 / (x.shape[0] * x.shape[2])
            ).to(activation.dtype)
