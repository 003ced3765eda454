"""Stop training on a non-finite loss: the app's criterion wrapper and the one-line error it raises.

A NaN or infinite loss (a learning rate that diverges, a schedule that blows the weights up) would
otherwise train on, write checkpoints of a NaN model and end with exit code 0. The app trains
through ``FiniteLoss``, which counts the minibatches of the epoch and raises ``NonFiniteLossError``
(a ``CompressorError``: one line, exit code 2) naming the epoch, the minibatch and the loss before
that loss is back-propagated. It reads the loss on the host once per step, as the epoch's mean
already does (on a GPU this moves that synchronization from after the step to before backward).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from compressor.errors import CompressorError


class NonFiniteLossError(CompressorError):
    """The training loss became NaN or infinite; the run stops before stepping on it."""


class FiniteLoss:
    """``criterion`` for one epoch that raises ``NonFiniteLossError`` on a non-finite loss.

    Its first call is minibatch ``skip`` of ``epoch`` (a resumed epoch skips the first ones).
    """

    def __init__(self, criterion: Callable[..., torch.Tensor], epoch: int, skip: int = 0):
        self.criterion = criterion
        self.epoch = epoch
        self.minibatch = skip - 1

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.minibatch += 1
        loss = self.criterion(output, target)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the training loss is {value} at epoch {self.epoch}, minibatch {self.minibatch}; "
                f"stopped without saving this model (lower --lr or check the schedule's "
                f"regularizers; the run folder keeps the last complete epoch's checkpoint, if any)")
        return loss
