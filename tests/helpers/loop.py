"""The one training loop of the tests: the six scheduler events of docs/own-training-loop.md.

Every test that trains under a schedule calls :func:`train`; the variations tests need (which
epochs, fresh data per epoch, a DDP wrapper for the forward, a check after each step, work between
``on_epoch_begin`` and the first minibatch) are arguments, so the order of the events is written
once. Tests that check the event order itself, or call a single event, call the scheduler directly.
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

Batch = Tuple[torch.Tensor, torch.Tensor]
Batches = Union[Sequence[Batch], Callable[[int], Sequence[Batch]]]

# What the loop passes to on_epoch_end unless told otherwise (a plateau LR scheduler reads it).
EPOCH_METRICS = {"min": 1.0, "max": 50.0}


def make_batches(n_batches: int = 4, batch: int = 8, seed: int = 0,
                 shape: Tuple[int, ...] = (1, 8, 8), classes: int = 10) -> List[Batch]:
    """``n_batches`` random (input, label) pairs for ``TinyNet`` (or ``shape``/``classes``)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


def train(model: nn.Module, optimizer, scheduler, batches: Batches,
          epochs: Union[int, Iterable[int]], start_epoch: int = 0,
          after_step: Optional[Callable[[int, int], None]] = None, *,
          loss_fn: Optional[Callable] = None, metrics: Optional[dict] = EPOCH_METRICS,
          after_epoch_begin: Optional[Callable[[int], None]] = None,
          before_epoch_end: Optional[Callable[[int], None]] = None) -> list:
    """Train ``model`` under ``scheduler``; returns each step's loss components, in order.

    ``epochs``: an int trains ``range(start_epoch, epochs)``; an iterable names the epochs.
    ``batches``: the same batches every epoch, or ``epoch -> batches``. ``model`` is only called
    for the forward pass (pass a DDP or compiled wrapper; the scheduler holds the real model).
    ``after_step(epoch, i)`` runs after ``on_minibatch_end``; ``after_epoch_begin(epoch)`` and
    ``before_epoch_end(epoch)`` run right after ``on_epoch_begin`` and right before
    ``on_epoch_end``. ``metrics`` goes to ``on_epoch_end`` (None: the argument is left out).
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    epoch_list = range(start_epoch, epochs) if isinstance(epochs, int) else epochs
    logged = []
    for epoch in epoch_list:
        scheduler.on_epoch_begin(epoch, optimizer)
        if after_epoch_begin is not None:
            after_epoch_begin(epoch)
        data = batches(epoch) if callable(batches) else batches
        steps = len(data)
        for i, (x, y) in enumerate(data):
            scheduler.on_minibatch_begin(epoch, i, steps, optimizer)
            loss = loss_fn(model(x), y)
            out = scheduler.before_backward_pass(epoch, i, steps, loss, optimizer,
                                                 return_loss_components=True)
            assert torch.isfinite(out.overall_loss), f"epoch {epoch} step {i}: loss {out.overall_loss}"
            optimizer.zero_grad()
            out.overall_loss.backward()
            scheduler.before_parameter_optimization(epoch, i, steps, optimizer)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, steps, optimizer)
            logged.append(out.loss_components)
            if after_step is not None:
                after_step(epoch, i)
        if before_epoch_end is not None:
            before_epoch_end(epoch)
        if metrics is None:
            scheduler.on_epoch_end(epoch, optimizer)
        else:
            scheduler.on_epoch_end(epoch, optimizer, metrics=metrics)
    return logged
