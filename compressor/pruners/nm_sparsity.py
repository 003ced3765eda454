"""N:M semi-structured sparsity (not in Distiller): n of every m consecutive weights are kept.

The pattern of NVIDIA's sparse tensor cores (2:4) and of Mishra et al. (2021): the weights are cut
into blocks of ``m`` consecutive elements along the *input* dimension (dim 1: a Linear weight's
input features, a convolution's input channels at one filter and kernel position), and in every
block the ``n`` largest-magnitude weights are kept and exactly ``m - n`` are masked (ties broken
by position: the earlier weight is kept). So every block has at most ``n`` non-zeros (fewer where
weights were already zero). ``n: 2, m: 4`` is 2:4 sparsity, 50 %.
"""
from __future__ import annotations

from typing import List, Mapping, Sequence

import torch

from ..errors import ComponentArgError
from ..registry import PRUNERS
from .base import Pruner


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping the ``n`` largest |w| of each block of ``m`` along dim 1 of ``weight``."""
    w = weight.detach().abs().movedim(1, -1)          # (out, *kernel, in): blocks are contiguous
    moved_shape = w.shape
    rows = w.reshape(-1, m)
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(rows, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(moved_shape).movedim(-1, 1).contiguous()


def _check_int(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ComponentArgError(key, f"must be an integer >= {low}; got {value!r}")
    return value


@PRUNERS.register
class NMSparsityPruner(Pruner):
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension (e.g. 2:4).

    Fixed pattern, no schedule: the policy decides when it is (re)applied. Masks are recomputed from
    the current weights, and the policy intersects them with the old ones.
    """

    def __init__(self, name: str, n: int, m: int, weights: Sequence[str]):
        super().__init__(name)
        self.n = _check_int("n", n, 1)
        self.m = _check_int("m", m, 2)
        if self.n >= self.m:
            raise ComponentArgError("n", f"must be smaller than m ({m}); got {n} (n:m keeps n of every m)")
        if isinstance(weights, str):
            weights = [weights]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ComponentArgError("weights", f"must be a non-empty list of weight names; got {weights!r}")
        self.weights = list(dict.fromkeys(weights))

    @property
    def param_names(self) -> List[str]:
        return self.weights

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        for name in self.weights:
            shape = tuple(params[name].shape)
            if len(shape) < 2:
                raise ComponentArgError("weights", f"parameter '{name}' of shape {shape} has no input "
                                                   f"dimension; valid: Linear and convolution weights "
                                                   f"(rank >= 2)")
            if shape[1] % self.m:
                raise ComponentArgError("m", f"parameter '{name}' of shape {shape} has {shape[1]} inputs "
                                             f"(dim 1), not a multiple of m={self.m}; valid: weights whose "
                                             f"input dimension is a multiple of m")

    def tensor_mask(self, name, weight, ctx):
        return nm_mask(weight, self.n, self.m)
