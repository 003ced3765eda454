"""The one dataset table: for each dataset its input shape, classes, normalization and reader.

Everything that needs a fact about a dataset reads it here: the loaders (normalization, reader,
augmentation), the model zoo (input shape and classes of the datasets models are built for), the
app and whoever builds an example input for thinning. ``compressor.data.DATASETS``,
``INPUT_SHAPES``, ``NORMALIZATION`` and ``compressor.models.DATASETS`` are views of this table kept
for their documented names. To add a dataset, add one ``DatasetSpec`` row (and its reader).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from ..errors import listing, suggest
from .base import ArraySplits, DatasetError
from .cifar import load_cifar10
from .digits import load_digits28
from .mnist import load_mnist

#: Reads an in-memory dataset from its folder (None where the dataset needs none) into uint8 tensors.
ArrayReader = Callable[[Optional[str]], ArraySplits]


class DatasetSpec(NamedTuple):
    """One dataset: what a model sees of it and how its samples are read."""
    input_shape: Tuple[int, int, int]       # (C, H, W) of one sample
    num_classes: int
    mean: Tuple[float, ...]                 # per-channel, applied after scaling pixels to [0, 1]
    std: Tuple[float, ...]
    reader: Optional[ArrayReader]           # in-memory reader; None: image folders (imagenet)
    model_dataset: str                      # the dataset the zoo builds models for (digits: mnist)
    augment: bool = False                   # random crop and flip while training (as Distiller)
    needs_dir: bool = True                  # False when the data ships inside a package


CATALOG: Mapping[str, DatasetSpec] = {
    # MNIST's training-set statistics, as Distiller uses.
    "mnist": DatasetSpec((1, 28, 28), 10, (0.1307,), (0.3081,), load_mnist, "mnist"),
    # scikit-learn's 8x8 digits framed to MNIST's size; the framed training set's statistics.
    "digits": DatasetSpec((1, 28, 28), 10, (0.1558,), (0.2769,), lambda _dir: load_digits28(),
                          "mnist", needs_dir=False),
    # Distiller's normalization: maps [0, 1] to [-1, 1].
    "cifar10": DatasetSpec((3, 32, 32), 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), load_cifar10,
                           "cifar10", augment=True),
    "imagenet": DatasetSpec((3, 224, 224), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            None, "imagenet"),
}

#: The datasets models are built for (the zoo's datasets): those that are their own model dataset.
MODEL_DATASETS: Tuple[str, ...] = tuple(sorted(k for k, s in CATALOG.items()
                                               if s.model_dataset == k))


def dataset_spec(dataset: str) -> DatasetSpec:
    """The row of ``dataset`` (any case), or ``DatasetError`` listing the known names."""
    name = str(dataset).lower()
    if name not in CATALOG:
        raise DatasetError(f"unknown dataset '{dataset}'{suggest(name, CATALOG)}; known: "
                           f"{listing(CATALOG)}")
    return CATALOG[name]

