"""Shared fixtures: a tiny CNN, a training loop that calls the scheduler's six events, a float64
fixture and the check that two networks compute the same function (exactness claims)."""
import pathlib

import pytest
import torch
from torch import nn

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"


class TinyNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> pool -> fc, with Distiller-style names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def make_batches(n_batches=4, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


def train(model, optimizer, scheduler, batches, epochs, start_epoch=0, after_step=None):
    """The canonical loop of docs/own-training-loop.md; returns the per-epoch loss components."""
    loss_fn = nn.CrossEntropyLoss()
    logged = []
    for epoch in range(start_epoch, epochs):
        scheduler.on_epoch_begin(epoch, optimizer)
        for i, (x, y) in enumerate(batches):
            scheduler.on_minibatch_begin(epoch, i, len(batches), optimizer)
            loss = loss_fn(model(x), y)
            out = scheduler.before_backward_pass(epoch, i, len(batches), loss, optimizer,
                                                 return_loss_components=True)
            optimizer.zero_grad()
            out.overall_loss.backward()
            scheduler.before_parameter_optimization(epoch, i, len(batches), optimizer)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, len(batches), optimizer)
            logged.append(out.loss_components)
            if after_step is not None:
                after_step(epoch, i)
        scheduler.on_epoch_end(epoch, optimizer, metrics={"min": 1.0, "max": 50.0})
    return logged


@pytest.fixture
def float64():
    """Default dtype float64 for one test: an exactness claim (thinned == masked, resumed ==
    uninterrupted) is tested where it is exact, not under a tolerance for float32 rounding, which
    training amplifies differently on every CPU."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def assert_same_function(out, ref):
    """``out`` and ``ref`` are the same function of the input, up to summation order.

    Both networks add the same nonzero terms, in different orders and blockings; the rounding of
    a sum of K products is at most K·eps·Σ|terms|, compounding over D layers: with K ≤ 5000,
    D ≤ 120 and eps = 1.1e-16 (float64), ≤ 7e-11 of the intermediate magnitudes, which we allow
    to exceed the output's scale tenfold (cancellation): 1e-9. A dropped or misplaced channel
    changes outputs by O(1) of their scale. In float32 (eps 6e-8) the same bound is above any
    useful tolerance, hence float64.
    """
    assert out.dtype == ref.dtype == torch.float64, "compare in float64 (the `float64` fixture)"
    scale = ref.abs().max().item() + 1e-300
    err = (out - ref).abs().max().item() / scale
    assert out.shape == ref.shape
    assert err <= 1e-9, f"relative error {err:.3g}"


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
