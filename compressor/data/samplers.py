"""Which samples a pass over a dataset visits: validation split, effective size, epochs, shards.

Everything random here is a pure function of a seed and an epoch number, drawn from private
``torch.Generator`` objects (never the global RNG), so two processes -- or a resumed run -- that
agree on the seed agree on every index. ``EpochSampler`` is the one place the rules live; the
in-memory loader and the image-folder loader both use it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .base import DatasetError

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (splitmix64 over each part in turn)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``mix_seed(*parts)``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def split_indices(n: int, validation_split: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(train, valid) sorted index tensors: a random ``floor(validation_split * n)`` of ``range(n)``
    held out for validation, the rest for training; the same for the same ``(n, split, seed)``."""
    if not 0.0 <= validation_split < 1.0:
        raise DatasetError(f"validation_split={validation_split} must be in [0, 1)")
    n_valid = int(validation_split * n)
    perm = torch.randperm(n, generator=generator(seed, 0x5B11))
    return perm[n_valid:].sort().values, perm[:n_valid].sort().values


class EpochSampler(torch.utils.data.Sampler):
    """The indices one pass visits on this rank, as a function of ``(seed, epoch)``.

    - ``effective_size`` in (0, 1] keeps ``floor(effective_size * len(indices))`` samples: with
      ``shuffle`` (training) a fresh random subset every epoch, as Distiller does; without
      (evaluation) one fixed random subset, visited in index order, so every evaluation sees the
      same samples.
    - ``shuffle`` permutes the kept samples anew each epoch.
    - ``num_replicas`` / ``rank`` shard like ``DistributedSampler`` (strided): every rank draws the same
      per-epoch list and takes its own contiguous slice; the slices are disjoint and of equal size
      ``len // num_replicas`` (the few samples past the last whole share are left out that epoch).
    - Each pass advances the epoch by one; ``set_epoch(e)`` chooses the epoch of the next pass, so
      calling it before every epoch (as with ``DistributedSampler``) or never gives the same order.
    """

    def __init__(self, indices: Union[int, Sequence[int], torch.Tensor], *, shuffle: bool,
                 effective_size: float = 1.0, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 name: str = "dataset"):
        if isinstance(indices, int):
            indices = torch.arange(indices)
        self.indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n = len(self.indices)
        if not (isinstance(effective_size, (int, float)) and 0.0 < effective_size <= 1.0):
            raise DatasetError(f"effective size {effective_size!r} for the {name} set must be in "
                               f"(0, 1]")
        self.subset_size = int(effective_size * n)
        if self.subset_size < 1:
            raise DatasetError(f"effective size {effective_size} of the {name} set ({n} samples) "
                               f"selects no sample")
        if not (isinstance(num_replicas, int) and num_replicas >= 1):
            raise DatasetError(f"num_replicas={num_replicas!r} must be a positive integer")
        if not (isinstance(rank, int) and 0 <= rank < num_replicas):
            raise DatasetError(f"rank={rank!r} must be in [0, {num_replicas - 1}] for "
                               f"num_replicas={num_replicas}")
        self.per_rank = self.subset_size // num_replicas
        if self.per_rank < 1:
            raise DatasetError(f"the {name} set's {self.subset_size} samples cannot be shared "
                               f"among {num_replicas} replicas")
        self.shuffle, self.effective_size, self.seed = shuffle, effective_size, int(seed)
        self.num_replicas, self.rank, self.name = num_replicas, rank, name
        self.epoch = 0
        self._fixed: Optional[torch.Tensor] = None
        if not shuffle:
            self._fixed = self.indices
            if self.subset_size < n:
                keep = torch.randperm(n, generator=generator(self.seed, 0xF1ED))[:self.subset_size]
                self._fixed = self.indices[keep.sort().values]

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the one of ``epoch`` (its shuffle and augmentation)."""
        self.epoch = int(epoch)

    def indices_for_epoch(self, epoch: int) -> torch.Tensor:
        """This rank's indices, in visiting order, for ``epoch``."""
        if self._fixed is not None:
            order = self._fixed
        else:
            perm = torch.randperm(len(self.indices), generator=generator(self.seed, epoch, 0xE90C))
            order = self.indices[perm[:self.subset_size]]
        # Strided like DistributedSampler: with a per-rank batch of B/R, the R ranks' k-th batches
        # together are exactly the k-th global batch of B a single process would draw.
        return order[self.rank:self.per_rank * self.num_replicas:self.num_replicas]

    def next_pass(self) -> Tuple[int, torch.Tensor]:
        """(epoch, indices) of the pass starting now; advances the epoch."""
        epoch = self.epoch
        self.epoch += 1
        return epoch, self.indices_for_epoch(epoch)

    def __iter__(self):
        return iter(self.next_pass()[1].tolist())

    def __len__(self) -> int:
        return self.per_rank
