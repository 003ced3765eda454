"""The shared vocabulary of the data package: its error type and the in-memory split container.

Every reader in ``compressor.data`` raises ``DatasetError`` for problems a user can fix (a wrong
directory, a damaged file, a missing optional dependency, a bad loader argument), with one line that
says what was expected. Readers of small datasets return an ``ArraySplits``: uint8 images in NCHW
and int64 labels, for the training and the test set.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch

from ..errors import CompressorError


class DatasetError(CompressorError, ValueError):
    """A dataset cannot be found or read, or a loader was asked for something impossible."""


class ArraySplits(NamedTuple):
    """A dataset held in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: Tuple[str, ...]

