"""Exactness claims: run them in float64 and compare two networks' outputs under a derived bound."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set torch's default dtype for a block and restore the previous one (the ``float64``
    fixture of conftest is this with ``torch.float64``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def assert_same_function(out: torch.Tensor, ref: torch.Tensor) -> None:
    """``out`` and ``ref`` are the same function of the input, up to summation order.

    Both networks add the same nonzero terms, in different orders and blockings; the rounding of
    a sum of K products is at most K·eps·Σ|terms|, compounding over D layers: with K ≤ 5000,
    D ≤ 120 and eps = 1.1e-16 (float64), ≤ 7e-11 of the intermediate magnitudes, which we allow
    to exceed the output's scale tenfold (cancellation): 1e-9. A dropped or misplaced channel
    changes outputs by O(1) of their scale. In float32 (eps 6e-8) the same bound is above any
    useful tolerance, hence float64.
    """
    assert out.dtype == ref.dtype == torch.float64, "compare in float64 (the `float64` fixture)"
    scale = ref.abs().max().item() + 1e-300
    err = (out - ref).abs().max().item() / scale
    assert out.shape == ref.shape
    assert err <= 1e-9, f"relative error {err:.3g}"
