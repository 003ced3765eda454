"""Shared fixtures, built from the helpers package (tests/helpers/): a tiny CNN, float64 for
exactness claims, one intra-op thread for small-tensor modules, and a YAML file writer.

Test modules import plain helpers (models, batches, the training loop, ``assert_same_function``)
from ``helpers``; the names below stay importable from ``conftest`` for older test code.
"""
import pathlib

import pytest
import torch

from helpers import TinyNet, assert_same_function, default_dtype, make_batches, train  # noqa: F401

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"


@pytest.fixture
def float64():
    """Default dtype float64 for one test: an exactness claim (thinned == masked, resumed ==
    uninterrupted) is tested where it is exact, not under a tolerance for float32 rounding, which
    training amplifies differently on every CPU."""
    with default_dtype(torch.float64):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small tensors: as fast, and far faster on a busy 2-core
    machine (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def write_yaml(tmp_path):
    def write(text, name="schedule.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write
