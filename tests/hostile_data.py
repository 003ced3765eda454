"""Writers of small hostile or odd dataset files, shared by test_data.py and the bad-input corpus.

Each writer makes a complete dataset folder (MNIST IDX files, CIFAR-10 pickles or ImageNet-style
class folders) in which exactly one thing is wrong, and keeps it tiny: a gzip bomb here is a few
hundred kilobytes that claims gigabytes, a pickle bomb a few dozen bytes.
"""
import gzip
import os
import pathlib
import pickle
import struct
import zlib

import numpy as np


def idx_header(code: int, shape) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)


def write_gzip_stream(path, head: bytes, zeros: int) -> None:
    """``head`` then ``zeros`` zero bytes, gzipped, without ever holding the zeros in memory."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    block = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(comp.compress(head))
        left = zeros
        while left:
            n = min(left, len(block))
            f.write(comp.compress(block[:n]))
            left -= n
        f.write(comp.flush())


def mnist_folder(folder, n_train=8, n_test=4) -> pathlib.Path:
    """A valid four-file MNIST folder (plain IDX), to be damaged by the caller."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_header(0x08, (n, 28, 28)) + bytes(n * 784))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            idx_header(0x08, (n,)) + bytes(i % 10 for i in range(n)))
    return folder


def mnist_gzip_bomb(folder, claimed=4_000_000, inflates_to=64 << 20) -> pathlib.Path:
    """MNIST whose gzipped training images claim ``claimed`` 28x28 images (3.1 GB) and inflate to
    ``inflates_to`` bytes (64 MiB from about 64 KB)."""
    folder = mnist_folder(folder)
    os.remove(folder / "train-images-idx3-ubyte")
    write_gzip_stream(folder / "train-images-idx3-ubyte.gz", idx_header(0x08, (claimed, 28, 28)),
                      inflates_to)
    return folder


class Reduce:
    """Pickles as ``func(*args)``: how a hostile file asks for a call."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def cifar_folder(folder, n=4, **overrides) -> pathlib.Path:
    """Six CIFAR-10 batches of ``n`` blank images; ``overrides`` replace test_batch's entries."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": [j % 10 for j in range(n)], b"data": np.zeros((n, 3072), np.uint8)}
        if name == "test_batch":
            batch.update({k.encode(): v for k, v in overrides.items()})
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def bytearray_bomb(nbytes=1 << 40) -> bytes:
    """A pickle of a few dozen bytes that asks ``bytearray`` for ``nbytes`` bytes."""
    return pickle.dumps(Reduce(bytearray, (nbytes,)), protocol=2)


def class_folders(root, classes, images=1, content=b"") -> pathlib.Path:
    """``root/train/<class>/`` and ``root/val/<class>/`` with ``images`` files ``i.png`` holding
    ``content`` (empty by default: the scan does not decode)."""
    root = pathlib.Path(root)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(images):
                (d / f"{i}.png").write_bytes(content)
    return root


def make_bad_data(d) -> dict:
    """The bad-input corpus's hostile dataset folders under ``d``, by placeholder name."""
    d = pathlib.Path(d)
    out = {"mnist_bomb": mnist_gzip_bomb(d / "mnist_bomb")}
    empty_test = mnist_folder(d / "mnist_empty_test", n_test=0)
    out["mnist_empty_test"] = empty_test
    short = mnist_folder(d / "mnist_short_labels")
    (short / "train-labels-idx1-ubyte").write_bytes(idx_header(0x08, (7,)) + bytes(7))
    out["mnist_short_labels"] = short
    magic = mnist_folder(d / "mnist_int_images")
    (magic / "t10k-images-idx3-ubyte").write_bytes(idx_header(0x0C, (4, 28, 28))
                                                   + bytes(4 * 784 * 4))
    out["mnist_int_images"] = magic
    with gzip.open(d / "trunc.gz", "wb") as f:
        f.write(idx_header(0x08, (4,)) + bytes(4))
    trunc = mnist_folder(d / "mnist_truncated_gzip")
    os.remove(trunc / "t10k-labels-idx1-ubyte")
    (trunc / "t10k-labels-idx1-ubyte.gz").write_bytes((d / "trunc.gz").read_bytes()[:-9])
    out["mnist_truncated_gzip"] = trunc
    bomb = cifar_folder(d / "cifar_bomb")
    (bomb / "data_batch_2").write_bytes(bytearray_bomb())
    out["cifar_bomb"] = bomb
    out["cifar_string_labels"] = cifar_folder(d / "cifar_string_labels",
                                              labels=["cat", "dog", "cat", "dog"])
    out["cifar_short_data"] = cifar_folder(d / "cifar_short_data",
                                           data=np.zeros((4, 3000), np.uint8))
    out["cifar_object_array"] = cifar_folder(d / "cifar_object_array",
                                             labels=np.array([0, 1, 2, None], dtype=object))
    out["folder_1001_classes"] = class_folders(d / "folder_1001",
                                               [f"c{i:04d}" for i in range(1001)])
    empty = class_folders(d / "folder_empty_class", ["cat", "dog"])
    for f in (empty / "train" / "dog").iterdir():
        f.unlink()
    out["folder_empty_class"] = empty
    # every file is named .png but holds text: found only when a batch is decoded, mid-run
    out["folder_bad_images"] = class_folders(d / "folder_bad_images", ["cat", "dog"], images=2,
                                             content=b"not a png")
    return {k: str(v) for k, v in out.items()}
