"""The compression scheduler inside a Lightning ``Trainer``.

``CompressionCallback`` maps Lightning's hooks to the scheduler's events. Lightning calls
``on_before_backward`` with the loss but cannot take a changed loss back, so the schedule's loss
terms are added in your ``training_step`` by ``CompressionModule.compression_loss(loss)`` (a
``LightningModule`` mixin), which also logs each term through ``self.log``.

Events, per optimizer step (with ``accumulate_grad_batches`` the loss terms are added to every
micro-batch's loss, which Lightning divides by the number of micro-batches)::

    on_train_epoch_start      -> on_epoch_begin(current_epoch)
    on_train_batch_start      -> on_minibatch_begin   (first micro-batch of each optimizer step)
    compression_loss(loss)    -> before_backward_pass (call it in training_step)
    on_before_optimizer_step  -> before_parameter_optimization   (before gradient clipping)
    on_train_batch_end        -> on_minibatch_end     (after the step: masks re-applied)
    on_train_epoch_end        -> on_epoch_end(current_epoch, metrics from callback_metrics)
    on_save_checkpoint        -> checkpoint["compression_scheduler"]
    on_load_checkpoint        <- checkpoint["compression_scheduler"]
"""
from __future__ import annotations

import math
from typing import Optional

import lightning.pytorch as pl
import torch

from ..errors import CheckpointError, CompressorError
from ..scheduler import CompressionScheduler
from ._driver import Driver, refuse_distributed_thinning

CHECKPOINT_KEY = "compression_scheduler"


def _optimizer(trainer: "pl.Trainer"):
    optimizers = trainer.optimizers
    return optimizers[0] if optimizers else None


class CompressionCallback(pl.Callback):
    """Drives ``scheduler`` from a Lightning ``Trainer``; see the module docstring for the map.

    ``monitor_min`` / ``monitor_max``: the ``callback_metrics`` passed to ``on_epoch_end`` as
    ``metrics={"min": ..., "max": ...}`` (what ``ReduceLROnPlateau`` in a schedule reads).
    """

    def __init__(self, scheduler: CompressionScheduler, monitor_min: Optional[str] = "val_loss",
                 monitor_max: Optional[str] = None):
        self.driver = Driver(scheduler)
        self.scheduler = scheduler
        self.monitor_min, self.monitor_max = monitor_min, monitor_max
        self._stepped = False

    def on_fit_start(self, trainer, pl_module):
        if trainer.lightning_module.automatic_optimization is False:
            raise CompressorError("Lightning CompressionCallback: manual optimization is not "
                                  "supported; call the scheduler's six events yourself "
                                  "(docs/own-training-loop.md)")
        refuse_distributed_thinning(self.scheduler, trainer.world_size, "Lightning Trainer")
        self.driver.distributed = trainer.world_size > 1

    def on_train_start(self, trainer, pl_module):
        batches, acc = trainer.num_training_batches, trainer.accumulate_grad_batches
        if not math.isfinite(batches):
            raise CompressorError("Lightning CompressionCallback: the training dataloader has no "
                                  "length; the schedule's epochs need a number of steps per epoch "
                                  "(give the dataloader a __len__, or set limit_train_batches)")
        self.driver.steps_per_epoch = max(math.ceil(int(batches) / acc), 1)

    def on_train_epoch_start(self, trainer, pl_module):
        self.driver.epoch_begin(trainer.current_epoch, _optimizer(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0:
            d = self.driver
            d.epoch, d.minibatch = trainer.current_epoch, batch_idx // trainer.accumulate_grad_batches
            d.scheduler.on_minibatch_begin(d.epoch, d.minibatch, d.steps_per_epoch, _optimizer(trainer))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.driver.before_step(optimizer)
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._stepped:
            self._stepped = False
            self.driver.after_step(_optimizer(trainer))

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = {}
        for key, name in (("min", self.monitor_min), ("max", self.monitor_max)):
            value = trainer.callback_metrics.get(name) if name else None
            if value is not None:
                metrics[key] = float(value)
        self.driver.metrics = metrics or self.driver.metrics
        self.driver.epoch_end(trainer.current_epoch, _optimizer(trainer))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CHECKPOINT_KEY] = self.driver.state_dict()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if CHECKPOINT_KEY not in checkpoint:
            raise CheckpointError(f"the checkpoint has no '{CHECKPOINT_KEY}': it was not saved with "
                                  f"compressor's Lightning CompressionCallback, so the schedule "
                                  f"cannot resume from it")
        self.driver.load_state_dict(checkpoint[CHECKPOINT_KEY], f"checkpoint['{CHECKPOINT_KEY}']")


class CompressionModule:
    """``LightningModule`` mixin: ``loss = self.compression_loss(loss)`` in ``training_step``."""

    def compression_callback(self) -> CompressionCallback:
        found = [c for c in self.trainer.callbacks if isinstance(c, CompressionCallback)]
        if len(found) != 1:
            raise CompressorError(f"compression_loss: the Trainer needs exactly one "
                                  f"compressor CompressionCallback in callbacks=[...]; it has "
                                  f"{len(found)}")
        return found[0]

    def compression_loss(self, loss: torch.Tensor, log: bool = True) -> torch.Tensor:
        """``loss`` plus the schedule's terms this step; each term is logged as ``<name>``."""
        callback = self.compression_callback()
        result = callback.driver.loss(loss, _optimizer(self.trainer))
        if log:
            for c in result.loss_components:
                self.log(c.name, c.value.detach(), on_step=True, on_epoch=False, prog_bar=False)
        return result.overall_loss
