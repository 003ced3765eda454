"""The trainer-independent part of the integrations: which epoch and step the scheduler is at.

Trainers count optimizer steps; the scheduler's minibatch events are per optimizer step (with
gradient accumulation, ``before_backward_pass`` runs for every micro-batch of the step). The
driver remembers which epoch's ``on_epoch_begin`` and ``on_epoch_end`` have run, so a run resumed
in the middle of an epoch does not prune that epoch twice, and a checkpoint written after the last
step of an epoch but before its end (Hugging Face saves by steps before ``on_epoch_end``) gets
that epoch's end replayed on resume.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from ..errors import CheckpointError, CompressorError
from ..scheduler import CompressionScheduler
from ..thinning.policy import StructureRemover

STATE_VERSION = 1


def thins(scheduler: CompressionScheduler) -> bool:
    """Whether the schedule has a thinning policy (parameters change shape mid-training)."""
    return any(isinstance(p, StructureRemover) for p in scheduler.ordered)


def refuse_distributed_thinning(scheduler: CompressionScheduler, world_size: int, trainer: str) -> None:
    if world_size > 1 and thins(scheduler):
        raise CompressorError(
            f"{trainer}: thinning (StructureRemover) under {world_size} processes is not supported: "
            f"the trainer's DistributedDataParallel keeps buckets sized for the old parameter "
            f"shapes; thin in a single process, or use the app under torchrun (ElasticDDP)")


class Driver:
    """Maps a trainer's global optimizer step to the scheduler's (epoch, minibatch) and events."""

    def __init__(self, scheduler: CompressionScheduler):
        if not isinstance(scheduler, CompressionScheduler):
            raise TypeError(f"scheduler must be a compressor.CompressionScheduler, not "
                            f"{type(scheduler).__name__}")
        self.scheduler = scheduler
        self.steps_per_epoch: Optional[int] = None
        self.epoch = 0
        self.minibatch = 0
        self.begun: Optional[int] = None     # last epoch whose on_epoch_begin ran
        self.ended: Optional[int] = None     # last epoch whose on_epoch_end ran
        self.metrics: Optional[Dict[str, float]] = None
        self.distributed = False

    # -- position --------------------------------------------------------------------------------
    def locate(self, global_step: int) -> None:
        spe = self.steps_per_epoch or 1
        self.epoch, self.minibatch = divmod(int(global_step), spe)

    # -- events ----------------------------------------------------------------------------------
    def epoch_begin(self, epoch: int, optimizer) -> None:
        self.finish_pending(epoch, optimizer)
        if self.begun == epoch:   # resumed inside this epoch: its pruning already happened
            return
        self.epoch, self.minibatch = epoch, 0
        self.scheduler.on_epoch_begin(epoch, optimizer)
        self.begun = epoch
        self.sync_masks()

    def finish_pending(self, epoch: int, optimizer) -> None:
        """Run the end of an epoch whose steps all ran but whose end did not (saved in between)."""
        last = epoch - 1
        if self.begun is not None and self.begun == last and self.ended != last:
            self.epoch_end(last, optimizer)

    def minibatch_begin(self, global_step: int, optimizer) -> None:
        self.locate(global_step)
        self.scheduler.on_minibatch_begin(self.epoch, self.minibatch, self.steps_per_epoch, optimizer)

    def loss(self, loss: torch.Tensor, optimizer):
        """``PolicyLoss(overall, components)`` of the current step."""
        return self.scheduler.before_backward_pass(self.epoch, self.minibatch, self.steps_per_epoch,
                                                   loss, optimizer, return_loss_components=True)

    def before_step(self, optimizer) -> None:
        self.scheduler.before_parameter_optimization(self.epoch, self.minibatch,
                                                     self.steps_per_epoch, optimizer)

    def after_step(self, optimizer) -> None:
        self.scheduler.on_minibatch_end(self.epoch, self.minibatch, self.steps_per_epoch, optimizer)

    def epoch_end(self, epoch: int, optimizer) -> None:
        if self.ended == epoch:
            return
        self.scheduler.on_epoch_end(epoch, optimizer, metrics=self.metrics)
        self.ended = epoch
        self.sync_masks()

    def sync_masks(self) -> None:
        """Under DDP make every rank's masks rank 0's (criteria that see data could differ)."""
        if self.distributed:
            from ..distributed import broadcast_masks
            broadcast_masks(self.scheduler.store)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "scheduler": self.scheduler.state_dict(),
                "begun": self.begun, "ended": self.ended, "metrics": self.metrics}

    def load_state_dict(self, state: Mapping, source: str) -> None:
        if not isinstance(state, Mapping) or "scheduler" not in state:
            raise CheckpointError(f"{source}: not a compression callback state (no 'scheduler' "
                                  f"key); it is written by the compressor callbacks' checkpoints")
        self.scheduler.load_state_dict(state["scheduler"])
        self.begun, self.ended = state.get("begun"), state.get("ended")
        self.metrics = state.get("metrics")
