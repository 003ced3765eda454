"""Shared fixtures: a tiny CNN and a training loop that calls the scheduler's six events."""
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
