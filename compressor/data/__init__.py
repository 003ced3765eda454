"""Dataset readers and fast loaders shared by the apps, tests and benchmarks.

``load_data(name, data_dir, batch_size, ...)`` returns training, validation and test loaders for
``mnist``, ``cifar10``, ``imagenet`` (class folders) or the embedded ``digits``. The readers
(``load_mnist``, ``load_cifar10``, ``load_digits28``, ``ImageFolder``) parse the standard file
formats themselves; torchvision is never needed. Pillow (image folders) and scikit-learn (digits)
are optional and imported only when used. Every user-fixable problem is a ``DatasetError``.
``CATALOG`` (``catalog.py``) is the one table of the datasets' facts: input shape, classes,
normalization, reader.
"""
from .base import ArraySplits, DatasetError
from .catalog import CATALOG, DatasetSpec, dataset_spec
from .cifar import SafeUnpickler, load_cifar10, read_cifar_batch, safe_unpickle
from .digits import load_digits28
from .imagefolder import ImageFolder, scan_class_folders
from .loaders import (DATASETS, INPUT_SHAPES, NORMALIZATION, FolderLoader, InMemoryLoader,
                      check_num_classes, dataset_name, load_data, read_arrays)
from .mnist import load_mnist, read_idx
from .samplers import EpochSampler, split_indices
from .transforms import Normalize, random_crop_flip

__all__ = [
    "ArraySplits", "DatasetError", "CATALOG", "DatasetSpec", "dataset_spec", "SafeUnpickler",
    "load_cifar10", "read_cifar_batch",
    "safe_unpickle", "load_digits28", "ImageFolder", "scan_class_folders", "DATASETS",
    "INPUT_SHAPES", "NORMALIZATION", "FolderLoader", "InMemoryLoader", "check_num_classes",
    "dataset_name",
    "load_data", "read_arrays", "load_mnist", "read_idx", "EpochSampler", "split_indices",
    "Normalize", "random_crop_flip",
]
