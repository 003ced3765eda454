"""Tests for compressor.data: readers on small files written here in the real formats, loaders,
augmentation, splits, shards, the restricted unpickler, every error message, and real MNIST."""
import gzip
import io
import os
import pathlib
import pickle
import random
import re
import struct
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from compressor.errors import CompressorError
from compressor.data import (DATASETS, NORMALIZATION, DatasetError, EpochSampler, ImageFolder,
                             InMemoryLoader, Normalize, load_cifar10, load_data, load_mnist,
                             random_crop_flip, read_idx, safe_unpickle, scan_class_folders,
                             split_indices)
from compressor.data.imagefolder import (center_crop_box, find_image_folders,
                                         random_resized_crop_box, resize_shorter)

HERE = pathlib.Path(__file__).resolve()
REAL_MNIST = next((p for p in (HERE.parents[2] / "shared" / "data" / "mnist",
                               pathlib.Path("/work/shared/data/mnist")) if p.is_dir()), None)
try:
    import PIL.Image  # noqa: F401
    HAVE_PIL = True
except ImportError:
    HAVE_PIL = False

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


# ---------------------------------------------------------------- writers of the real formats

def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
            np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path, arr, gz=False):
    data = idx_bytes(arr)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        pathlib.Path(path).write_bytes(data)


def make_mnist(folder, n_train=50, n_test=20, gz=False, seed=0):
    """Four IDX files; image i's pixels all equal (i * 7) % 256 so samples are identifiable."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.stack([np.full((28, 28), (i * 7) % 256, np.uint8) for i in range(n)])
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", imgs, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (imgs, labels)
    return out


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as the official CIFAR files (cPickle) do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2 numpy named numpy.core.multiarray; GLOBAL lines are newline-terminated text.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def make_cifar(folder, n=12, style="py2"):
    """Six CIFAR-10 batches of ``n`` images; image j of batch b has red=b, green=j, blue=label."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        labels = [(b + j) % 10 for j in range(n)]
        data = np.empty((n, 3, 32, 32), np.uint8)
        data[:, 0], data[:, 1] = b, np.arange(n)[:, None, None]
        data[:, 2] = np.array(labels)[:, None, None]
        if style == "py2":
            batch = {"batch_label": "batch %d" % b, "labels": labels,
                     "data": data.reshape(n, 3072), "filenames": ["f%d.png" % j for j in range(n)]}
            raw = py2_pickle({k.encode(): (v.encode() if isinstance(v, str) else v)
                              for k, v in batch.items()})
        else:  # Python 3, bytes keys, default protocol (5: arrays as _frombuffer)
            raw = pickle.dumps({b"labels": labels, b"data": data.reshape(n, 3072)})
        (folder / name).write_bytes(raw)
    meta = {b"label_names": [c.encode() for c in "abcdefghij"], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))


def write_png(path, size, color):
    from PIL import Image
    Image.new("RGB", size, color).save(path)


# ---------------------------------------------------------------- IDX / MNIST

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    arr = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / "x", arr, gz)
    got = read_idx(str(tmp_path / ("x.gz" if gz else "x")))
    assert got.shape == (2, 3, 4) and np.array_equal(got, arr)


@pytest.mark.parametrize("gz,layout", [(False, ""), (True, ""), (False, "MNIST/raw"),
                                       (True, "MNIST/raw")])
def test_load_mnist_layouts(tmp_path, gz, layout):
    ref = make_mnist(tmp_path / layout, gz=gz)
    d = load_mnist(str(tmp_path))
    assert d.train_images.shape == (50, 1, 28, 28) and d.test_images.shape == (20, 1, 28, 28)
    assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    assert np.array_equal(d.train_labels.numpy(), ref["train"][1])
    assert np.array_equal(d.test_images[:, 0].numpy(), ref["t10k"][0])
    assert d.classes == tuple("0123456789")


def test_mnist_mixed_gzip_and_plain(tmp_path):
    make_mnist(tmp_path, gz=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(20, np.uint8))
    assert load_mnist(str(tmp_path)).test_labels.tolist() == [0] * 20


def test_mnist_not_found_names_dir_and_files(tmp_path):
    d = str(tmp_path)
    expected = (f"MNIST not found in {d}: expected train-images-idx3-ubyte[.gz], "
                f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                f"t10k-labels-idx1-ubyte[.gz] in {d} or {d}/MNIST/raw")
    with pytest.raises(DatasetError) as e:
        load_mnist(d)
    assert str(e.value) == expected and "\n" not in str(e.value)
    assert isinstance(e.value, CompressorError)
    make_mnist(tmp_path)  # three of four files is still "not found"
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_mnist(d)
    with pytest.raises(DatasetError, match=r"MNIST not found in .*nope \(no such directory\): "
                                           r"expected train-images-idx3-ubyte\[\.gz\]"):
        load_mnist(str(tmp_path / "nope"))


def test_idx_corruption_errors_name_the_file(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))} is truncated: shape "
                                           r"\(50, 28, 28\) needs 39200 bytes of data, file has "
                                           r"39190"):
        load_mnist(str(tmp_path))
    path.write_bytes(good + b"xx")
    with pytest.raises(DatasetError, match="is longer than its header says"):
        load_mnist(str(tmp_path))
    path.write_bytes(b"\x12\x34\x08\x03" + good[4:])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))} is not an IDX file: bad "
                                           r"magic number 0x12340803"):
        load_mnist(str(tmp_path))
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="is not an IDX file: only 2 bytes"):
        load_mnist(str(tmp_path))
    path.write_bytes(good[:10])
    with pytest.raises(DatasetError, match="is truncated: header needs 16 bytes, file has 10"):
        load_mnist(str(tmp_path))
    # Labels file given where images belong: right format, wrong kind.
    path.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DatasetError, match=r"wrong IDX header for MNIST: expected magic number "
                                           r"2051 \(uint8, 3 dimensions\)"):
        load_mnist(str(tmp_path))
    write_idx(path, np.zeros((49, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="holds 49 images but .* holds 50 labels"):
        load_mnist(str(tmp_path))
    write_idx(path, np.zeros((50, 14, 14), np.uint8))
    with pytest.raises(DatasetError, match="holds 14x14 images; MNIST images are 28x28"):
        load_mnist(str(tmp_path))
    write_idx(path, np.zeros((50, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(50, 12, np.uint8))
    with pytest.raises(DatasetError, match="has label 12; MNIST labels are 0-9"):
        load_mnist(str(tmp_path))


def test_corrupt_gzip_names_the_file(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match=rf"cannot read IDX file {re.escape(str(path))}: "):
        load_mnist(str(tmp_path))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=rf"cannot read IDX file {re.escape(str(path))}: "):
        load_mnist(str(tmp_path))


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not present")
def test_real_mnist():
    d = load_mnist(str(REAL_MNIST))
    assert len(d.train_images) == 60000 and len(d.test_images) == 10000
    assert d.train_labels.min() == 0 and d.train_labels.max() == 9
    assert set(d.test_labels.unique().tolist()) == set(range(10))
    pixels = d.train_images.float() / 255
    assert abs(pixels.mean().item() - 0.1307) < 1e-3 and abs(pixels.std().item() - 0.3081) < 1e-3
    train, valid, test = load_data("mnist", str(REAL_MNIST), 1000, seed=0)
    assert (train.dataset_size, valid.dataset_size, test.dataset_size) == (54000, 6000, 10000)
    x, y = next(iter(test))
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


# ---------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("style,layout", [("py2", ""), ("py3", ""), ("py2", "cifar-10-batches-py")])
def test_load_cifar10(tmp_path, style, layout):
    make_cifar(tmp_path / layout, style=style)
    d = load_cifar10(str(tmp_path))
    assert d.train_images.shape == (60, 3, 32, 32) and d.test_images.shape == (12, 3, 32, 32)
    assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    # Channel planes land in the right place: red = batch number, green = position, blue = label.
    assert torch.equal(d.train_images[:, 0, 5, 7], torch.arange(5).repeat_interleave(12).byte())
    assert torch.equal(d.train_images[:12, 1, 31, 0], torch.arange(12).byte())
    assert torch.equal(d.train_images[:, 2, 0, 0].long(), d.train_labels)
    assert d.test_images[0, 0, 0, 0] == 5
    assert d.classes == tuple("abcdefghij")


def test_cifar_classes_default_without_meta(tmp_path):
    make_cifar(tmp_path)
    os.remove(tmp_path / "batches.meta")
    assert load_cifar10(str(tmp_path)).classes[:2] == ("airplane", "automobile")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    make_cifar(tmp_path)
    evil = tmp_path / "data_batch_3"
    evil.write_bytes(pickle.dumps({"data": _Evil(marker)}, protocol=2))
    with pytest.raises(DatasetError, match=rf"{re.escape(str(evil))}: refusing to load global "
                                           r"'(posix|nt|os)\.system'; CIFAR pickles may hold only "
                                           r"plain data and numpy arrays"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()
    evil.write_bytes(pickle.dumps(eval, protocol=4))
    with pytest.raises(DatasetError, match="refusing to load global 'builtins.eval'"):
        safe_unpickle(str(evil))


def test_cifar_errors(tmp_path):
    d = str(tmp_path)
    expected = (f"CIFAR-10 not found in {d}: expected data_batch_1, data_batch_2, data_batch_3, "
                f"data_batch_4, data_batch_5, test_batch in {d} or {d}/cifar-10-batches-py")
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_cifar10(d)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"\(cifar-10-python.tar.gz is there: extract it "
                                           r"first\): expected data_batch_1"):
        load_cifar10(d)
    with pytest.raises(DatasetError, match=r"CIFAR-10 not found in .*missing \(no such "
                                           r"directory\)"):
        load_cifar10(str(tmp_path / "missing"))
    make_cifar(tmp_path)
    bad = tmp_path / "test_batch"
    bad.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetError, match="test_batch is not a CIFAR-10 batch: it holds a list"):
        load_cifar10(d)
    bad.write_bytes(pickle.dumps({"labels": [1]}))
    with pytest.raises(DatasetError, match="test_batch is not a CIFAR-10 batch: no 'data' entry"):
        load_cifar10(d)
    bad.write_bytes(pickle.dumps({"labels": [1], "data": np.zeros((1, 100), np.uint8)}))
    with pytest.raises(DatasetError, match=r"'data' is uint8 \(1, 100\), expected uint8 "
                                           r"\(N, 3072\)"):
        load_cifar10(d)
    bad.write_bytes(pickle.dumps({"labels": [1, 2], "data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DatasetError, match="has 1 images but 2 labels"):
        load_cifar10(d)
    bad.write_bytes(pickle.dumps({"labels": [11], "data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DatasetError, match="has labels outside 0-9"):
        load_cifar10(d)
    bad.write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(DatasetError, match="cannot unpickle .*test_batch"):
        load_cifar10(d)


# ---------------------------------------------------------------- digits

def test_digits_default():
    pytest.importorskip("sklearn")
    train, valid, test = load_data("digits", None, 100, validation_split=0.0, seed=0)
    assert valid is None
    assert train.dataset_size == 1438 and test.dataset_size == 359
    x, y = next(iter(test))
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs = torch.cat([b for b, _ in train])
    assert abs(xs.mean().item()) < 0.01 and abs(xs.std().item() - 1) < 0.01
    # MNIST framing: a 4-pixel black border around a 20x20 box.
    border = -NORMALIZATION["digits"][0][0] / NORMALIZATION["digits"][1][0]
    assert torch.allclose(xs[:, :, :4], torch.tensor(border)) and torch.allclose(
        xs[:, :, :, 24:], torch.tensor(border))
    labels = torch.cat([t for _, t in test])
    assert labels.min() == 0 and labels.max() == 9
    # The split is fixed: the test set is the last 359 images, in order.
    from sklearn.datasets import load_digits
    assert labels.tolist() == load_digits().target[-359:].tolist()


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetError, match="the 'digits' dataset needs scikit-learn, which is not "
                                           "installed: pip install scikit-learn"):
        load_data("digits", None, 10)


# ---------------------------------------------------------------- loaders

def test_mnist_loader_values_and_normalization(tmp_path):
    ref = make_mnist(tmp_path, n_train=50, n_test=20)
    train, valid, test = load_data("mnist", str(tmp_path), 8, validation_split=0.2, seed=3)
    assert (len(train), len(valid), len(test)) == (5, 2, 3)
    assert (train.dataset_size, valid.dataset_size, test.dataset_size) == (40, 10, 20)
    assert train.num_classes == 10
    xs, ys = zip(*test)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = torch.from_numpy(ref["t10k"][0]).float().unsqueeze(1) / 255
    assert torch.allclose(x, (raw - 0.1307) / 0.3081, atol=1e-5)
    assert y.tolist() == ref["t10k"][1].tolist()  # evaluation goes in file order


def test_normalize_stats():
    imgs = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.2, 0.5, 0.7), (0.1, 0.3, 0.9)
    out = Normalize(mean, std)(imgs)
    expect = (imgs.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(
        3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expect, atol=1e-5)
    ones = Normalize((0.5,) * 3, (0.5,) * 3)(torch.tensor([0, 255], dtype=torch.uint8).view(
        1, 1, 1, 2).expand(1, 3, 1, 2))
    assert torch.allclose(ones[0, :, 0, 0], torch.full((3,), -1.0))
    assert torch.allclose(ones[0, :, 0, 1], torch.full((3,), 1.0))


def _train_ids(loader):
    """Identify samples by their (unique) pixel value, read back from normalized inputs."""
    out = []
    for x, _ in loader:
        raw = torch.round((x[:, 0, 0, 0] * 0.3081 + 0.1307) * 255).long()
        out.extend(((raw * 183) % 256).tolist())  # undo value = (i * 7) % 256 (183 = 7^-1 mod 256)
    return out


def test_validation_split_disjoint_and_deterministic(tmp_path):
    make_mnist(tmp_path, n_train=100)
    a_train, a_valid, _ = load_data("mnist", str(tmp_path), 7, validation_split=0.3, seed=11)
    t, v = _train_ids(a_train), _train_ids(a_valid)
    assert len(v) == 30 and len(t) == 70 and not set(t) & set(v) and set(t) | set(v) == set(
        range(100))
    _, b_valid, _ = load_data("mnist", str(tmp_path), 7, validation_split=0.3, seed=11)
    assert _train_ids(b_valid) == v
    _, c_valid, _ = load_data("mnist", str(tmp_path), 7, validation_split=0.3, seed=12)
    assert _train_ids(c_valid) != v
    # No seed: the split is seed 0's (so a resumed run never trains on its validation set).
    _, d_valid, _ = load_data("mnist", str(tmp_path), 7, validation_split=0.3)
    _, e_valid, _ = load_data("mnist", str(tmp_path), 7, validation_split=0.3, seed=0)
    assert _train_ids(d_valid) == _train_ids(e_valid)
    assert load_data("mnist", str(tmp_path), 7, validation_split=0.0)[1] is None


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), split=st.floats(0, 0.99), seed=st.integers(0, 2 ** 40))
def test_split_indices_property(n, split, seed):
    train, valid = split_indices(n, split, seed)
    assert len(valid) == int(split * n)
    assert torch.equal(torch.cat([train, valid]).sort().values, torch.arange(n))
    assert torch.equal(split_indices(n, split, seed)[1], valid)


def test_shuffle_per_epoch_and_set_epoch(tmp_path):
    make_mnist(tmp_path, n_train=60)
    train, _, _ = load_data("mnist", str(tmp_path), 10, validation_split=0.0, seed=5)
    e0, e1 = _train_ids(train), _train_ids(train)  # each pass advances the epoch
    assert sorted(e0) == sorted(e1) == list(range(60)) and e0 != e1
    train.set_epoch(0)
    assert _train_ids(train) == e0
    train.set_epoch(1)
    assert _train_ids(train) == e1
    again, _, _ = load_data("mnist", str(tmp_path), 10, validation_split=0.0, seed=5)
    assert _train_ids(again) == e0


def test_effective_sizes(tmp_path):
    make_mnist(tmp_path, n_train=100, n_test=40)
    train, valid, test = load_data("mnist", str(tmp_path), 8, validation_split=0.2,
                                   effective_train_size=0.5, effective_valid_size=0.5,
                                   effective_test_size=0.25, seed=1)
    assert (train.dataset_size, valid.dataset_size, test.dataset_size) == (40, 10, 10)
    assert len(train) == 5 and len(test) == 2
    epochs = [set(_train_ids(train)) for _ in range(3)]
    assert all(len(e) == 40 for e in epochs) and len({frozenset(e) for e in epochs}) == 3
    assert _train_ids(valid) == _train_ids(valid)  # evaluation subsets are fixed ...
    assert _train_ids(valid) == sorted(_train_ids(valid))  # ... and visited in order
    ids = [y.tolist() for _, y in test]
    assert ids == [y.tolist() for _, y in test]


def test_drop_last(tmp_path):
    make_mnist(tmp_path, n_train=50)
    train, valid, _ = load_data("mnist", str(tmp_path), 8, validation_split=0.2, drop_last=True,
                                seed=0)
    sizes = [len(y) for _, y in train]
    assert sizes == [8] * 5 and len(train) == 5 and train.dataset_size == 40
    assert [len(y) for _, y in valid] == [8, 2]  # evaluation never drops


@pytest.mark.parametrize("replicas", [2, 3])
def test_sharding_disjoint_equal_covering(tmp_path, replicas):
    make_mnist(tmp_path, n_train=100)
    shards = []
    for rank in range(replicas):
        train, _, _ = load_data("mnist", str(tmp_path), 6, validation_split=0.0, seed=9,
                                num_replicas=replicas, rank=rank)
        train.set_epoch(4)
        shards.append(_train_ids(train))
    per = 100 // replicas
    assert all(len(s) == per for s in shards)
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == per * replicas  # disjoint
    sampler = EpochSampler(100, shuffle=True, seed=9)
    # The shards stride through the one per-epoch permutation every rank draws (as
    # DistributedSampler): interleaved they give it back, so per-rank batches of B/R make up
    # exactly the global batches of B that one process would draw.
    interleaved = [shards[r][j] for j in range(per) for r in range(replicas)]
    assert interleaved == sampler.indices_for_epoch(4)[:per * replicas].tolist()
    whole = EpochSampler(100, shuffle=True, seed=9, num_replicas=1)
    assert sorted(whole.indices_for_epoch(4).tolist()) == list(range(100))


def test_epoch_sampler_errors():
    with pytest.raises(DatasetError, match=r"effective size 0.001 of the test set \(100 samples\) "
                                           r"selects no sample"):
        EpochSampler(100, shuffle=False, effective_size=0.001, name="test")
    with pytest.raises(DatasetError, match=r"effective size 1.5 for the dataset set must be in "
                                           r"\(0, 1\]"):
        EpochSampler(100, shuffle=False, effective_size=1.5)
    with pytest.raises(DatasetError, match=r"rank=3 must be in \[0, 2\] for num_replicas=3"):
        EpochSampler(100, shuffle=True, num_replicas=3, rank=3)
    with pytest.raises(DatasetError, match="num_replicas=0 must be a positive integer"):
        EpochSampler(100, shuffle=True, num_replicas=0)
    with pytest.raises(DatasetError, match="the training set's 2 samples cannot be shared among "
                                           "3 replicas"):
        EpochSampler(2, shuffle=True, num_replicas=3, name="training")


def test_load_data_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnsit' \(did you mean 'mnist'\?\); "
                                           r"known: cifar10, digits, imagenet, mnist"):
        load_data("mnsit", str(tmp_path), 8)
    with pytest.raises(DatasetError, match=r"unknown dataset 'svhn'; known: cifar10, digits, "
                                           r"imagenet, mnist"):
        load_data("svhn", str(tmp_path), 8)
    with pytest.raises(DatasetError, match=r"dataset 'cifar10' needs a data directory \(only "
                                           r"'digits' is built in\)"):
        load_data("CIFAR10", None, 8)
    with pytest.raises(DatasetError, match="batch_size=0 must be a positive integer"):
        load_data("mnist", str(tmp_path), 0)
    with pytest.raises(DatasetError, match=r"validation_split=1.0 must be in \[0, 1\)"):
        load_data("mnist", str(tmp_path), 8, validation_split=1.0)
    with pytest.raises(DatasetError, match="workers=-1 must be a non-negative integer"):
        load_data("mnist", str(tmp_path), 8, workers=-1)
    with pytest.raises(DatasetError, match="MNIST not found in"):
        load_data("mnist", str(tmp_path), 8)
    make_mnist(tmp_path, n_test=20)
    with pytest.raises(DatasetError, match=r"effective size 0.01 of the test set \(20 samples\)"):
        load_data("mnist", str(tmp_path), 8, effective_test_size=0.01)
    assert DATASETS == ("cifar10", "digits", "imagenet", "mnist")


# ---------------------------------------------------------------- augmentation

def test_random_crop_flip_is_a_padded_crop_maybe_flipped():
    torch.manual_seed(0)
    imgs = torch.randint(1, 256, (64, 3, 8, 10), dtype=torch.uint8)
    out = random_crop_flip(imgs, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(imgs, (2, 2, 2, 2))
    flips, offsets = 0, set()
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(
                       padded[i, :, dy:dy + 8, dx:dx + 10]))]
        assert matches, f"image {i} is not a crop of its padded self"
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 16 < flips < 48 and len(offsets) > 10  # both flips and many offsets happen
    same = random_crop_flip(imgs, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(out, same)
    assert torch.equal(random_crop_flip(imgs, None, padding=0, flip=False), imgs)


def test_cifar_loader_augments_training_only(tmp_path):
    make_cifar(tmp_path, n=20)
    train, valid, test = load_data("cifar10", str(tmp_path), 16, validation_split=0.1, seed=2)
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    # Zero padding shows up as black (-1 after normalization) at some image's edge.
    xs = torch.cat([b for b, _ in train])
    assert (xs[:, 1, 0, :] == -1).all(dim=1).any() or (xs[:, 1, :, 0] == -1).all(dim=1).any()
    # Evaluation images are the stored ones, only normalized: every plane is constant.
    for loader in (valid, test):
        for xb, yb in loader:
            assert torch.equal(xb.amax(dim=(2, 3)), xb.amin(dim=(2, 3)))
            assert torch.allclose((xb[:, 2, 0, 0] * 0.5 + 0.5) * 255, yb.float(), atol=1e-3)
    assert test.dataset_size == 20 and valid.dataset_size == 10 and train.dataset_size == 90


def test_in_memory_loader_direct():
    imgs = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    loader = InMemoryLoader(imgs, torch.arange(10), 4, mean=(0.0,), std=(1 / 255,),
                            indices=[1, 3, 5, 7, 9])
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[1, 3, 5, 7], [9]]
    assert torch.equal(batches[0][0][:, 0, 0, 0], torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert len(loader) == 2 and loader.dataset_size == 5
    with pytest.raises(ValueError, match="images must be uint8"):
        InMemoryLoader(imgs.float(), torch.arange(10), 4, mean=(0.0,), std=(1.0,))


# ---------------------------------------------------------------- image folders

def make_folder(root, classes=("cat", "dog"), per_class=3, files=True):
    for split in ("train", "val"):
        for c_i, c in enumerate(classes):
            d = pathlib.Path(root) / split / c
            d.mkdir(parents=True)
            for k in range(per_class):
                if files and HAVE_PIL:
                    write_png(d / f"{k}.png", (300 + 10 * k, 260), (40 * c_i, 100, 250))
                else:
                    (d / f"{k}.jpg").write_bytes(b"")
            (d / "notes.txt").write_text("not an image")


def test_scan_class_folders(tmp_path):
    make_folder(tmp_path, files=False)
    classes, samples = scan_class_folders(str(tmp_path / "train"))
    assert classes == ("cat", "dog") and len(samples) == 6
    assert [t for _, t in samples] == [0, 0, 0, 1, 1, 1]
    # The validation folder reuses the training classes' indices even when one is missing.
    classes, samples = scan_class_folders(str(tmp_path / "val"), classes=("ant", "cat", "dog"))
    assert {t for _, t in samples} == {1, 2}
    (tmp_path / "val" / "eel").mkdir()
    (tmp_path / "val" / "eel" / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"val has class folders the training set lacks: eel"):
        scan_class_folders(str(tmp_path / "val"), classes=("cat", "dog"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no images in .*empty: expected .*empty/<class>/"
                                           r"<image> \(\.jpg, \.jpeg"):
        scan_class_folders(str(tmp_path / "empty"))


def test_image_folder_errors(tmp_path):
    d = str(tmp_path)
    with pytest.raises(DatasetError, match=rf"image folders not found in {re.escape(d)} \(.*train "
                                           rf"and .*val missing\): expected .*train/<class>/"
                                           rf"<image> and .*val/<class>/<image>"):
        find_image_folders(d)
    with pytest.raises(DatasetError, match=r"image folders not found in .*nope \(no such "
                                           r"directory\)"):
        load_data("imagenet", str(tmp_path / "nope"), 4)


@pytest.mark.skipif(HAVE_PIL, reason="Pillow is installed")
def test_image_folder_without_pillow(tmp_path):
    make_folder(tmp_path, files=False)
    with pytest.raises(DatasetError, match="reading image folders needs Pillow, which is not "
                                           "installed: pip install Pillow"):
        load_data("imagenet", str(tmp_path), 4)


@settings(max_examples=200, deadline=None)
@given(w=st.integers(1, 2000), h=st.integers(1, 2000), seed=st.integers(0, 10 ** 6))
def test_crop_boxes(w, h, seed):
    left, top, cw, ch = random_resized_crop_box(w, h, random.Random(seed))
    assert 0 <= left and 0 <= top and 0 < cw and 0 < ch and left + cw <= w and top + ch <= h
    nw, nh = resize_shorter(w, h, 256)
    assert min(nw, nh) == 256
    if min(nw, nh) >= 224 and max(nw, nh) >= 224:
        l, t, r, b = center_crop_box(nw, nh, 224)
        assert 0 <= l and 0 <= t and r <= nw and b <= nh and r - l == b - t == 224


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow not installed")
def test_image_folder_loading(tmp_path):
    make_folder(tmp_path)
    train, valid, test = load_data("imagenet", str(tmp_path), 4, validation_split=0.34, seed=0)
    assert train.classes == ("cat", "dog") and train.dataset_size == 4
    assert valid.dataset_size == 2 and test.dataset_size == 6
    x, y = next(iter(test))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Solid colours survive resize + crop: check the normalization per channel.
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    color = torch.tensor([0.0, 100.0, 250.0]) / 255
    assert torch.allclose(x[0, :, 100, 100], (color - mean) / std, atol=1e-5)
    xb, yb = next(iter(train))
    assert xb.shape == (4, 3, 224, 224)
    # Seeded augmentation is reproducible sample by sample.
    ds = train.dataset
    assert torch.equal(ds[(0, 17)][0], ds[(0, 17)][0])
    # Two workers give the very batches that the main process gives.
    t2, _, _ = load_data("imagenet", str(tmp_path), 4, workers=2, validation_split=0.34, seed=0)
    t0, _, _ = load_data("imagenet", str(tmp_path), 4, workers=0, validation_split=0.34, seed=0)
    for (a, la), (b, lb) in zip(t2, t0):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow not installed")
def test_image_folder_bad_image(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "val" / "cat" / "0.png"
    bad.write_bytes(b"garbage")
    ds = ImageFolder(str(tmp_path / "val"), train=False)
    with pytest.raises(DatasetError, match=rf"cannot read image {re.escape(str(bad))}"):
        ds[0]


# ---------------------------------------------------------------- hostile and odd input

from hostile_data import (bytearray_bomb, cifar_folder, class_folders, idx_header,  # noqa: E402
                          mnist_folder, mnist_gzip_bomb, write_gzip_stream)


def test_gzip_bomb_is_refused_without_inflating(tmp_path):
    import tracemalloc
    folder = mnist_gzip_bomb(tmp_path)   # claims 3.1 GB, inflates to 64 MiB, ~64 KB on disk
    bomb = folder / "train-images-idx3-ubyte.gz"
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"claims shape \(4000000, 28, 28\), 3136000000 "
                                               r"bytes of data, more than a \d+-byte gzip file "
                                               r"can hold .*: refusing to read it"):
            load_mnist(str(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Only the 16-byte header is inflated; gzip's buffers are tens of KB. Inflating even the 64 MiB
    # that the file really holds would exceed this bound by 16x.
    assert peak < 4 << 20, peak


def test_idx_size_cap_and_trailing_data_in_gzip(tmp_path):
    import tracemalloc
    path = tmp_path / "x-idx1-ubyte.gz"
    # Honest about its size relative to the file, but above a stated cap.
    write_gzip_stream(path, idx_header(0x08, (5000,)), 5000)
    with pytest.raises(DatasetError, match=r"5000 bytes of data, more than the limit of 4096: "
                                           r"refusing to read it"):
        read_idx(str(path), max_bytes=4096)
    assert read_idx(str(path)).shape == (5000,)
    # Claims 7840 bytes, inflates to 64 MiB: read the 7840 and one more, then stop.
    write_gzip_stream(path, idx_header(0x08, (10, 28, 28)), 64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"is longer than its header says: shape "
                                               r"\(10, 28, 28\) needs 7840 bytes of data, file "
                                               r"has more than 7840"):
            read_idx(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    # A gzip stream that ends early is truncated, and says how much it had.
    write_gzip_stream(path, idx_header(0x08, (100,)), 60)
    with pytest.raises(DatasetError, match=r"is truncated: shape \(100,\) needs 100 bytes of "
                                           r"data, file has 60"):
        read_idx(str(path))


def test_mnist_empty_splits_and_odd_headers(tmp_path):
    for n_train, n_test, which in ((0, 4, "train-images"), (8, 0, "t10k-images")):
        d = mnist_folder(tmp_path / f"{n_train}_{n_test}", n_train=n_train, n_test=n_test)
        with pytest.raises(DatasetError, match=rf"{which}-idx3-ubyte holds no images; MNIST's "
                                               rf"(train|test) set needs at least one"):
            load_mnist(str(d))
    d = mnist_folder(tmp_path / "i4")
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_header(0x0C, (4, 28, 28)) + bytes(4 * 784 * 4))
    with pytest.raises(DatasetError, match=r"wrong IDX header for MNIST: expected magic number "
                                           r"2051 \(uint8, 3 dimensions\), got int32"):
        load_mnist(str(d))
    (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x07\x03" + bytes(20))
    with pytest.raises(DatasetError, match=r"is not an IDX file: bad magic number 0x00000703"):
        load_mnist(str(d))


def test_cifar_allocation_bombs_are_refused(tmp_path):
    import tracemalloc
    bomb = tmp_path / "bomb"
    raw = bytearray_bomb()
    assert len(raw) < 64
    bomb.write_bytes(raw)
    with pytest.raises(DatasetError, match=r"cannot unpickle .*bomb: refusing a bytearray of "
                                           r"1099511627776 bytes: more than the file could hold"):
        safe_unpickle(str(bomb))
    from hostile_data import Reduce
    from numpy._core.multiarray import _reconstruct
    hostile = [
        (Reduce(_reconstruct, (np.ndarray, (1 << 20, 1 << 20), b"b")), "an array of 1099511627776"),
        (Reduce(np.ndarray, ((1 << 40,),)), "an array of 8796093022208"),
        # Each call alone fits the budget; together they would not (the budget is per file).
        ([Reduce(bytearray, (1 << 19,)) for _ in range(8)], "a bytearray of 524288"),
    ]
    tracemalloc.start()
    try:
        for obj, what in hostile:
            bomb.write_bytes(pickle.dumps(obj, protocol=2))
            with pytest.raises(DatasetError, match=rf"refusing {what} bytes"):
                safe_unpickle(str(bomb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The budget is the file's size plus 1 MiB, so nothing can take much more than that.
    assert peak < 8 << 20, peak
    bomb.write_bytes(pickle.dumps(np.array([1, None], dtype=object), protocol=2))
    with pytest.raises(DatasetError, match="refusing numpy dtype object: only arrays of plain "
                                           "numbers"):
        safe_unpickle(str(bomb))
    bomb.write_bytes(pickle.dumps(Reduce(codecs_encode(), ("x" * 100, "zlib")), protocol=2))
    with pytest.raises(DatasetError, match="refusing _codecs.encode with encoding 'zlib'"):
        safe_unpickle(str(bomb))
    # Plain data and arrays still load, bytearrays included.
    bomb.write_bytes(pickle.dumps({"a": bytearray(b"xyz"), "b": np.arange(5)}, protocol=2))
    got = safe_unpickle(str(bomb))
    assert got["a"] == bytearray(b"xyz") and np.array_equal(got["b"], np.arange(5))
    assert type(got["b"]) is np.ndarray   # callers see plain arrays, not the checking subclass


def codecs_encode():
    import _codecs
    return _codecs.encode


def test_cifar_label_and_data_checks(tmp_path):
    cases = {
        "strings": (dict(labels=["cat", "dog", "cat", "dog"]),
                    r"'labels' is <U3 \(4,\), expected integers 0-9"),
        "floats": (dict(labels=[0.5, 1.0, 2.0, 3.0]), r"'labels' is float64 \(4,\)"),
        "ragged": (dict(labels=[[0], [1, 2], 3, 4]), r"'labels' is not an array"),
        "short": (dict(data=np.zeros((4, 3000), np.uint8)), r"'data' is uint8 \(4, 3000\)"),
        "count": (dict(labels=[0, 1, 2]), r"has 4 images but 3 labels"),
        "range": (dict(labels=[0, 1, 2, -1]), r"has labels outside 0-9"),
        "empty": (dict(labels=[], data=np.zeros((0, 3072), np.uint8)), r"holds no images"),
    }
    for name, (overrides, message) in cases.items():
        d = cifar_folder(tmp_path / name, **overrides)
        with pytest.raises(DatasetError, match=rf"test_batch (is not a CIFAR-10 batch: )?"
                                               rf"{message}"):
            load_cifar10(str(d))
    d = cifar_folder(tmp_path / "meta")
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": 7}))
    with pytest.raises(DatasetError, match=r"batches.meta: 'label_names' must be a list of 10 "
                                           r"strings"):
        load_cifar10(str(d))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="symlinks")
def test_symlink_loops_and_repeats_are_walked_once(tmp_path):
    root = class_folders(tmp_path, ["cat", "dog"], images=2)
    cat = root / "train" / "cat"
    (cat / "sub").mkdir()
    (cat / "sub" / "x.png").write_bytes(b"")
    os.symlink("..", cat / "sub" / "loop")           # cat/sub/loop -> cat: a cycle
    os.symlink(str(cat / "sub"), root / "train" / "dog" / "again")   # cat/sub seen again
    _, samples = scan_class_folders(str(root / "train"))
    real = [os.path.realpath(p) for p, _ in samples]
    assert len(real) == len(set(real)) == 5
    assert sorted(t for _, t in samples) == [0, 0, 0, 1, 1]


def test_empty_class_folder_and_odd_names(tmp_path):
    root = class_folders(tmp_path, ["cat", "dog"])
    (root / "train" / "dog" / "0.png").unlink()
    (root / "train" / "dog" / "readme.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"train has class folders without images: dog "
                                           r"\(every class needs at least one"):
        scan_class_folders(str(root / "train"))
    (root / "train" / "dog" / "a\nb.png").write_bytes(b"")
    classes, samples = scan_class_folders(str(root / "train"))
    assert len(samples) == 2
    if HAVE_PIL:
        ds = ImageFolder(str(root / "train"), train=False)
        with pytest.raises(DatasetError) as e:
            ds[1]
        assert "\n" not in str(e.value) and r"a\nb.png" in str(e.value)


def test_check_num_classes(tmp_path):
    from compressor.data.loaders import check_num_classes
    train, _, _ = load_data("mnist", str(mnist_folder(tmp_path)), 4, validation_split=0.0)
    check_num_classes(train, 10, "lenet5", "d")
    check_num_classes(train, 1000, "resnet18", "d")   # fewer classes than outputs is fine
    with pytest.raises(DatasetError, match=r"the data in d has 10 classes but tiny has 5 outputs; "
                                           r"use at most 5 class folders"):
        check_num_classes(train, 5, "tiny", "d")


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow not installed")
@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_is_one_line_in_loader_and_app(tmp_path, workers, capsys):
    root = class_folders(tmp_path / "data", ["cat", "dog"], content=b"not a png")
    train, _, _ = load_data("imagenet", str(root), 2, workers=workers, validation_split=0.0,
                            seed=0)
    with pytest.raises(DatasetError) as e:
        next(iter(train))
    assert re.fullmatch(r"cannot read image .*/train/(cat|dog)/0\.png: .+", str(e.value))
    from compressor_apps.compress_classifier import main
    code = main(["--arch", "resnet18", str(root), "-b", "2", "-j", str(workers), "--epochs", "1",
                 "-o", str(tmp_path / "out"), "--cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.search(r"error: cannot read image .*0\.png", err[0])
