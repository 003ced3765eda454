"""Read CIFAR-10's python pickle batches into uint8 tensors, with a restricted unpickler.

CIFAR-10 ships as pickles (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, optionally
``batches.meta``), found directly in the data directory or under ``cifar-10-batches-py/``. A pickle
can name any importable callable and run it while loading, so a downloaded file is never handed to
``pickle.load``: ``SafeUnpickler`` resolves only the few globals a numpy array needs and refuses
everything else, naming the file and the refused global.
"""
from __future__ import annotations

import importlib
import os
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from .base import ArraySplits, DatasetError

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10_SUBDIR = "cifar-10-batches-py"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles written before still say numpy.core.
    for mod in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


# (module, name) pairs a pickle of plain containers and numpy arrays may name. Everything else --
# os.system, builtins.eval, subprocess.Popen, any class -- is refused.
_ALLOWED_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # pickle protocol 5 writes contiguous arrays as _frombuffer(buffer, dtype, shape, order).
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_ALLOWED_BUILTINS = {
    ("builtins", "bytearray"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "complex"), ("__builtin__", "bytearray"), ("__builtin__", "set"),
    ("__builtin__", "frozenset"), ("__builtin__", "complex"),
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under pickle protocols 0-2.
    ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, bytes, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_NUMPY:
            return _numpy_global(module, name)
        if (module, name) in _ALLOWED_BUILTINS:
            import builtins
            import _codecs
            return getattr(_codecs if module == "_codecs" else builtins, name)
        raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")


def safe_unpickle(path: str) -> Any:
    """Load a pickle that may hold only plain data and numpy arrays; ``DatasetError`` otherwise.

    Python 2 strings are decoded as latin-1, which is what numpy needs for arrays pickled by
    Python 2 (the official CIFAR files were).
    """
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "refusing to load global" in str(e):
            raise DatasetError(f"{path}: {e}; CIFAR pickles may hold only plain data and numpy "
                               f"arrays, so this file is not a CIFAR batch (and may be "
                               f"malicious)") from None
        raise DatasetError(f"cannot unpickle {path}: {e}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DatasetError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None


def expected_cifar10_files(data_dir: str) -> str:
    names = ", ".join(CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,))
    return f"expected {names} in {data_dir} or {os.path.join(data_dir, CIFAR10_SUBDIR)}"


def find_cifar10(data_dir: str) -> str:
    """The folder that holds all six CIFAR-10 batches."""
    for folder in (data_dir, os.path.join(data_dir, CIFAR10_SUBDIR)):
        if all(os.path.isfile(os.path.join(folder, n))
               for n in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)):
            return folder
    if not os.path.isdir(data_dir):
        hint = " (no such directory)"
    elif os.path.isfile(os.path.join(data_dir, "cifar-10-python.tar.gz")):
        hint = " (cifar-10-python.tar.gz is there: extract it first)"
    else:
        hint = ""
    raise DatasetError(f"CIFAR-10 not found in {data_dir}{hint}: "
                       f"{expected_cifar10_files(data_dir)}")


def _field(batch: Dict, key: str, path: str) -> Any:
    # Pickles written by Python 2 give str keys under latin-1; ones written by Python 3 give bytes.
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise DatasetError(f"{path} is not a CIFAR-10 batch: no '{key}' entry")


def read_cifar_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, "
                           f"not a dict")
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, "labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path} is not a CIFAR-10 batch: 'data' is {data.dtype} "
                           f"{tuple(data.shape)}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DatasetError(f"{path} has {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path} has labels outside 0-9")
    # Each row is the red plane, then green, then blue, each 32x32 row-major: already CHW.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _classes(folder: str) -> Tuple[str, ...]:
    meta = os.path.join(folder, CIFAR10_META_FILE)
    if not os.path.isfile(meta):
        return CIFAR10_CLASSES
    names = _field(safe_unpickle(meta), "label_names", meta)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return names if len(names) == 10 else CIFAR10_CLASSES


def load_cifar10(data_dir: str) -> ArraySplits:
    """CIFAR-10 as uint8 images (N, 3, 32, 32) and int64 labels: 50000 training, 10000 test."""
    folder = find_cifar10(data_dir)
    parts: List[Tuple[np.ndarray, np.ndarray]] = [
        read_cifar_batch(os.path.join(folder, n)) for n in CIFAR10_TRAIN_FILES]
    test_x, test_y = read_cifar_batch(os.path.join(folder, CIFAR10_TEST_FILE))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return ArraySplits(torch.from_numpy(train_x), torch.from_numpy(train_y),
                       torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y),
                       _classes(folder))
