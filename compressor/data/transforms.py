"""Batch-wise image transforms in torch, for datasets held in memory as uint8 tensors.

Per-sample Python transforms cost more than a small network's step on a 2-core CPU, so in-memory
datasets are augmented a whole batch at a time: one gather does the random crop (with zero padding)
and the horizontal flip for every image in the batch, and one fused multiply-add turns uint8 pixels
into normalized float32. Randomness comes only from the ``torch.Generator`` passed in, so a loader
that seeds its generator per epoch is reproducible.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


class Normalize:
    """uint8 (N, C, H, W) in 0..255 -> float32 ``(x / 255 - mean) / std``, per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have the same length "
                             f"and positive std")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() != 4 or batch.shape[1] != len(self.mean):
            raise ValueError(f"expected a (N, {len(self.mean)}, H, W) batch, got "
                             f"{tuple(batch.shape)}")
        return torch.addcmul(self._shift, batch.to(torch.float32), self._scale)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def random_crop_flip(batch: torch.Tensor, generator: Optional[torch.Generator] = None,
                     padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Pad each image with ``padding`` zero pixels, crop it back to its size at a random offset,
    then mirror it left-right with probability 1/2 -- torchvision's ``RandomCrop(size, padding)``
    followed by ``RandomHorizontalFlip()``, for a whole (N, C, H, W) batch at once.

    Works on any dtype; on uint8 input the padding is pixel value 0 (black), as in torchvision.
    """
    n, c, h, w = batch.shape
    if n == 0:
        return batch.clone()
    padded = F.pad(batch, (padding, padding, padding, padding)) if padding else batch
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = dy + torch.arange(h)
    cols = torch.arange(w).expand(n, w)
    if flip:
        mirrored = torch.randint(0, 2, (n, 1), generator=generator).bool()
        cols = torch.where(mirrored, (w - 1) - cols, cols)
    cols = dx + cols
    # One gather over the flattened padded plane: out[i, :, y, x] = padded[i, :, rows[i, y],
    # cols[i, x]]; about 5x faster than four-way advanced indexing.
    idx = (rows.unsqueeze(2) * (w + 2 * padding) + cols.unsqueeze(1)).view(n, 1, h * w)
    flat = padded.reshape(n, c, -1)
    return torch.gather(flat, 2, idx.expand(n, c, h * w)).view(n, c, h, w)


def random_flip(batch: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability 1/2."""
    return random_crop_flip(batch, generator, padding=0, flip=True)
