"""Read CIFAR-10's python pickle batches into uint8 tensors, with a restricted unpickler.

CIFAR-10 ships as pickles (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, optionally
``batches.meta``), found directly in the data directory or under ``cifar-10-batches-py/``. A pickle
can name any importable callable and run it while loading, so a downloaded file is never handed to
``pickle.load``: ``SafeUnpickler`` resolves only the few globals a numpy array needs and refuses
everything else, naming the file and the refused global. What the allowed constructors may
allocate is bounded by the file's own size, and arrays of Python objects are refused, so a tiny
file cannot exhaust memory either.
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
    # protocol 2 writes an empty bytes object (e.g. an empty array's data) as bytes().
    ("builtins", "bytes"), ("__builtin__", "bytes"),
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under pickle protocols 0-2.
    ("_codecs", "encode"),
}


#: Bytes the constructors a pickle calls may allocate beyond the file's own size. Honest pickles
#: build their arrays from bytes they carry, so they never need more than the file holds.
ALLOCATION_MARGIN = 1 << 20

_LATIN1 = {"latin1", "latin-1", "iso-8859-1"}


def _nbytes(shape: Any, dtype: Any) -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes, in Python ints (no overflow)."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    n = np.dtype(dtype).itemsize
    for d in dims:
        if not isinstance(d, int) or d < 0:
            raise pickle.UnpicklingError(f"bad array dimension {d!r}")
        n *= d
    return n


class _CheckedArray(np.ndarray):
    """What the pickle's ``numpy.ndarray`` resolves to: an array whose state may not hold Python
    objects (numpy allocates an object array's shape before checking its data, and crashes on
    some mismatches)."""

    def __setstate__(self, state: Any) -> None:
        dtype = state[-3] if isinstance(state, tuple) and len(state) in (4, 5) else None
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError(f"refusing an array state with dtype {dtype!r}: only "
                                         f"arrays of plain numbers are allowed")
        super().__setstate__(state)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, bytes, strings, numbers and numpy arrays.

    The constructors it allows are wrapped so that what they allocate from a size given in the
    pickle (``bytearray(n)``, an empty array of some shape) counts against ``budget`` bytes for the
    whole load; a 40-byte file cannot ask for a terabyte.
    """

    def __init__(self, file: Any, *, budget: int, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.budget = budget

    def _charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.budget:
            raise pickle.UnpicklingError(f"refusing {what} of {nbytes} bytes: more than the "
                                         f"file could hold ({self.budget} bytes left)")
        self.budget -= nbytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_NUMPY:
            return self._numpy(name, _numpy_global(module, name))
        if (module, name) in _ALLOWED_BUILTINS:
            import builtins
            import _codecs
            if module == "_codecs":
                return self._encode
            if name in ("bytearray", "bytes"):
                return self._sized(getattr(builtins, name))
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")

    def _numpy(self, name: str, real: Any) -> Any:
        if name == "ndarray":
            return self._ndarray
        if name == "dtype":
            return self._dtype
        if name == "_reconstruct":
            def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
                if subtype != self._ndarray:  # bound methods: equal, not identical
                    raise pickle.UnpicklingError("_reconstruct may only build numpy arrays")
                self._charge(_nbytes(shape, self._dtype(dtype)), "an array")
                return real(_CheckedArray, shape, dtype)
            return reconstruct
        if name == "scalar":
            def scalar(dtype: Any, *args: Any) -> Any:
                self._charge(self._dtype(dtype).itemsize, "a numpy scalar")
                return real(dtype, *args)
            return scalar
        return real  # _frombuffer: views bytes that the file itself carries

    def _ndarray(self, shape: Any, dtype: Any = float, buffer: Any = None, *args: Any,
                 **kwargs: Any) -> np.ndarray:
        if buffer is None:
            self._charge(_nbytes(shape, self._dtype(dtype)), "an array")
        return _CheckedArray(shape, self._dtype(dtype), buffer, *args, **kwargs)

    @staticmethod
    def _dtype(spec: Any, *args: Any) -> np.dtype:
        dtype = spec if isinstance(spec, np.dtype) else np.dtype(spec, *args)
        if dtype.hasobject:
            raise pickle.UnpicklingError(f"refusing numpy dtype {dtype}: only arrays of plain "
                                         f"numbers are allowed")
        return dtype

    def _sized(self, kind: type) -> Any:
        def build(*args: Any) -> Any:  # bytes(n) and bytearray(n) allocate n zero bytes
            if args and isinstance(args[0], int):
                self._charge(args[0], f"a {kind.__name__}")
            return kind(*args)
        return build

    @staticmethod
    def _encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        # Pickles spell bytes as encode(text, 'latin1'); other codecs (zlib, base64 ...) are not
        # needed and some expand their input.
        if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1:
            raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
        return obj.encode("latin1", errors)


def _plain(obj: Any) -> Any:
    """``obj`` with its arrays (in dicts and lists, at any depth) seen as plain ``np.ndarray``."""
    if isinstance(obj, _CheckedArray):
        return obj.view(np.ndarray)
    todo, seen = [obj], set()
    while todo:  # iterative, and each container once: a pickle may nest deeply or share objects
        c = todo.pop()
        if id(c) in seen or not isinstance(c, (dict, list)):
            continue
        seen.add(id(c))
        for k, v in (c.items() if isinstance(c, dict) else enumerate(c)):
            if isinstance(v, _CheckedArray):
                c[k] = v.view(np.ndarray)
            else:
                todo.append(v)
    return obj


def safe_unpickle(path: str) -> Any:
    """Load a pickle that may hold only plain data and numpy arrays; ``DatasetError`` otherwise.

    Python 2 strings are decoded as latin-1, which is what numpy needs for arrays pickled by
    Python 2 (the official CIFAR files were). What the allowed constructors may allocate is
    bounded by the file's size plus ``ALLOCATION_MARGIN``.
    """
    try:
        with open(path, "rb") as f:
            budget = os.fstat(f.fileno()).st_size + ALLOCATION_MARGIN
            return _plain(SafeUnpickler(f, budget=budget, encoding="latin1").load())
    except pickle.UnpicklingError as e:
        if "refusing to load global" in str(e):
            raise DatasetError(f"{path}: {e}; CIFAR pickles may hold only plain data and numpy "
                               f"arrays, so this file is not a CIFAR batch (and may be "
                               f"malicious)") from None
        raise DatasetError(f"cannot unpickle {path}: {e}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError) as e:
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


def _array(batch: Dict, key: str, path: str) -> np.ndarray:
    try:  # a ragged or mixed list makes numpy raise, or build an object array
        arr = np.asarray(_field(batch, key, path))
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{path} is not a CIFAR-10 batch: '{key}' is not an array ({e})"
                           ) from None
    return arr


def read_cifar_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, "
                           f"not a dict")
    data, labels = _array(batch, "data", path), _array(batch, "labels", path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path} is not a CIFAR-10 batch: 'data' is {data.dtype} "
                           f"{tuple(data.shape)}, expected uint8 (N, 3072)")
    if len(data) == 0:
        raise DatasetError(f"{path} holds no images")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DatasetError(f"{path} is not a CIFAR-10 batch: 'labels' is {labels.dtype} "
                           f"{tuple(labels.shape)}, expected integers 0-9")
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
    batch = safe_unpickle(meta)
    if not isinstance(batch, dict):
        raise DatasetError(f"{meta} is not CIFAR-10 metadata: it holds a {type(batch).__name__}, "
                           f"not a dict")
    names = _field(batch, "label_names", meta)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{meta}: 'label_names' must be a list of 10 strings")
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
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
