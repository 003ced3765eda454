"""Read MNIST from its four standard IDX files into uint8 tensors.

The files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or gzipped) are looked for directly in the data directory,
then under ``MNIST/raw/`` (torchvision's layout). IDX is parsed here with numpy: the magic number,
the element type, the dimensions and the payload size are all checked, so a damaged or truncated
file is reported by name instead of producing garbage. The header is checked before the payload
is read, and a payload is never larger than ``MAX_IDX_BYTES`` nor than the file could hold, so a
gzip bomb is refused without being inflated.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Dict, List

import numpy as np
import torch

from .base import ArraySplits, DatasetError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_SUBDIR = os.path.join("MNIST", "raw")

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


#: The largest IDX payload read_idx accepts (bytes). MNIST's biggest file holds 47 MB; EMNIST's
#: 0.7 GB. A header that claims more is refused before anything is decompressed.
MAX_IDX_BYTES = 2 ** 31

# Deflate cannot expand data by more than about 1032:1, so a gzipped file of n bytes can hold at
# most this many times n bytes; a header that claims more cannot be honest.
_DEFLATE_MAX_RATIO = 1032

_CHUNK = 1 << 24  # read payloads in 16 MiB steps, so a short stream is found before a big alloc


def _read_exactly(f, n: int) -> bytes:
    """Up to ``n`` bytes from ``f``, fewer only when the stream ends first."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_idx(path: str, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Parse one IDX file (plain, or gzipped when the name ends in ``.gz``) into a numpy array.

    The header (magic number, dimensions) is read and checked first, from the start of the stream;
    then exactly the payload it announces is read, and one more byte is asked for to make sure the
    file ends there. A payload above ``max_bytes``, or above what the file could hold (its size,
    times deflate's largest expansion when gzipped), is refused before it is decompressed, so a
    small file that inflates to gigabytes costs nothing. Raises ``DatasetError`` naming the file
    when it cannot be read, its magic number is not IDX, or its payload is shorter or longer than
    its header says.
    """
    try:
        size = os.path.getsize(path)
        gz = path.endswith(".gz")
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            magic = _read_exactly(f, 4)
            if len(magic) < 4:
                raise DatasetError(f"{path} is not an IDX file: only {len(magic)} bytes")
            zero, type_code, ndim = int.from_bytes(magic[0:2], "big"), magic[2], magic[3]
            if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
                raise DatasetError(f"{path} is not an IDX file: bad magic number 0x{magic.hex()}")
            header = 4 + 4 * ndim
            dims = _read_exactly(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise DatasetError(f"{path} is truncated: header needs {header} bytes, file has "
                                   f"{4 + len(dims)}")
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[type_code])
            expected = dtype.itemsize
            for d in shape:  # Python ints: no overflow, however large the dimensions
                expected *= d
            # A plain file's reads stop at its end by themselves; a gzip stream's do not.
            room = size * _DEFLATE_MAX_RATIO if gz else expected
            if expected > max_bytes or expected > room:
                why = (f"more than a {size}-byte gzip file can hold ({room})"
                       if expected > room else f"more than the limit of {max_bytes}")
                raise DatasetError(f"{path} claims shape {shape}, {expected} bytes of data, "
                                   f"{why}: refusing to read it")
            raw = _read_exactly(f, expected)
            extra = len(f.read(1)) if len(raw) == expected else 0
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; a truncated gzip stream raises EOFError.
        raise DatasetError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) != expected or extra:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        got = len(raw) if len(raw) < expected else f"more than {expected}"
        raise DatasetError(f"{path} is {what}: shape {shape} needs {expected} bytes of data, "
                           f"file has {got}")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def expected_mnist_files(data_dir: str) -> str:
    """The one-line description of what we look for, used in 'not found' errors."""
    names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values())
    return f"expected {names} in {data_dir} or {os.path.join(data_dir, MNIST_SUBDIR)}"


def find_mnist(data_dir: str) -> Dict[str, str]:
    """Paths of the four MNIST files, from the first layout that holds all four.

    Each file may be plain or gzipped independently (plain wins when both exist).
    """
    for folder in (data_dir, os.path.join(data_dir, MNIST_SUBDIR)):
        found: Dict[str, str] = {}
        for key, name in MNIST_FILES.items():
            for candidate in (name, name + ".gz"):
                path = os.path.join(folder, candidate)
                if os.path.isfile(path):
                    found[key] = path
                    break
        if len(found) == len(MNIST_FILES):
            return found
    reason = "" if os.path.isdir(data_dir) else " (no such directory)"
    raise DatasetError(f"MNIST not found in {data_dir}{reason}: {expected_mnist_files(data_dir)}")


def _check(arr: np.ndarray, path: str, ndim: int, magic: int) -> None:
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise DatasetError(f"{path} has the wrong IDX header for MNIST: expected magic number "
                           f"{magic} (uint8, {ndim} dimensions), got {arr.dtype} with shape "
                           f"{arr.shape}")


def load_mnist(data_dir: str) -> ArraySplits:
    """MNIST as uint8 images (N, 1, 28, 28) and int64 labels: 60000 training, 10000 test."""
    paths = find_mnist(data_dir)
    out: List[torch.Tensor] = []
    for split in ("train", "test"):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(ip), read_idx(lp)
        _check(images, ip, 3, 2051)
        _check(labels, lp, 1, 2049)
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{ip} holds {images.shape[1]}x{images.shape[2]} images; "
                               f"MNIST images are 28x28")
        if len(images) == 0:
            raise DatasetError(f"{ip} holds no images; MNIST's {split} set needs at least one")
        if len(images) != len(labels):
            raise DatasetError(f"{ip} holds {len(images)} images but {lp} holds {len(labels)} "
                               f"labels")
        if len(labels) and labels.max() > 9:
            raise DatasetError(f"{lp} has label {int(labels.max())}; MNIST labels are 0-9")
        out.append(torch.from_numpy(images.copy()).unsqueeze(1))
        out.append(torch.from_numpy(labels.astype(np.int64)))
    return ArraySplits(out[0], out[1], out[2], out[3], tuple(str(d) for d in range(10)))

