"""A training epoch stopped mid-way and resumed reports what an uninterrupted epoch reports.

The app saves ``EpochStats.meter_state`` in its mid-epoch checkpoint and hands it back to
``train_epoch(resume_meters=...)``. Stopping and continuing runs the very same floating-point
operations in the same order as the uninterrupted epoch (the running sums are plain Python
floats, carried over unchanged), so the epoch's metrics are equal exactly, not within a tolerance.
"""
import io

import pytest
import torch
from torch import nn

import compressor
from compressor.training import train_epoch

STEPS, BATCH = 6, 5


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = compressor.dict_config(model, optimizer, {
        "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"0.weight": 1e-3}}},
        "policies": [{"regularizer": {"instance_name": "l1"}, "epochs": [0]}]})
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(BATCH, 4, generator=gen), torch.randint(0, 6, (BATCH,), generator=gen))
               for _ in range(STEPS)]
    return model, optimizer, scheduler, batches


def run(stop_after=None):
    model, optimizer, scheduler, batches = setup()
    scheduler.on_epoch_begin(0, optimizer)
    crit = nn.CrossEntropyLoss()
    if stop_after is None:
        return model, train_epoch(model, batches, crit, optimizer, 0, scheduler)
    calls = iter(range(1, STEPS + 1))
    first = train_epoch(model, batches, crit, optimizer, 0, scheduler,
                        stop=lambda: next(calls) == stop_after)
    assert first.next_minibatch == stop_after and first.samples == stop_after * BATCH
    buf = io.BytesIO()                       # through a checkpoint: plain data, loaded safely
    torch.save({"m": first.meter_state}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["m"]
    rest = train_epoch(model, batches, crit, optimizer, 0, scheduler, skip=first.next_minibatch,
                       resume_meters=state)
    return model, rest


@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_resumed_epoch_reports_the_uninterrupted_epochs_metrics(float64, stop_after):
    model_a, full = run()
    model_b, resumed = run(stop_after)
    assert resumed.next_minibatch is None and resumed.meter_state is None
    assert resumed.samples == full.samples == STEPS * BATCH
    for key in ("loss", "overall_loss", "top1", "top5"):
        assert getattr(resumed, key) == getattr(full, key), key
    assert full.components.keys() == {"l1_loss"} and resumed.components == full.components
    assert full.overall_loss != full.loss                         # the regularizer term counts
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_without_saved_meters_a_resumed_epoch_counts_only_its_own_minibatches(float64):
    model, optimizer, scheduler, batches = setup()
    stats = train_epoch(model, batches, nn.CrossEntropyLoss(), optimizer, 0, scheduler, skip=4)
    assert stats.samples == 2 * BATCH      # what older checkpoints (without the meters) give
