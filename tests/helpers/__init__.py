"""Shared test helpers: small models, batches, the one training loop, the exactness check.

Test modules import from here (``from helpers import train, TinyNet``), never from another test
file; fixtures stay in ``tests/conftest.py`` and are built from these helpers. Nothing here imports
pytest, so the torchrun scripts of ``test_distributed`` can use the loop too.
"""
from helpers.exact import assert_same_function, default_dtype
from helpers.loop import EPOCH_METRICS, make_batches, train
from helpers.models import TinyNet

__all__ = ["EPOCH_METRICS", "TinyNet", "assert_same_function", "default_dtype", "make_batches",
           "train"]
