"""Where a resumed run continues, read from its checkpoint's ``extras`` and checked against the
command line before anything is written.

A checkpoint saved at the end of an epoch resumes at the next epoch with any batch size. One saved
mid-epoch (SIGINT/SIGTERM) resumes at its next minibatch, counted in minibatches of the batch
size it was saved with: another ``--batch-size`` would skip or repeat samples of that epoch and
shift every per-minibatch event of the schedule, so it is refused, naming the batch size to use.
The epoch's running loss and accuracy sums come back too, so its logged training metrics equal an
uninterrupted run's. Files without these fields (older ones) resume as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .run_config import RunConfig, UsageError


@dataclass(frozen=True)
class ResumePoint:
    """The first epoch to train, the minibatches of it already trained, and its running sums."""
    epoch: int = 0
    minibatch: int = 0
    meters: Optional[Mapping[str, Any]] = None


def resume_point(ckpt: Mapping[str, Any], config: RunConfig, path: str) -> ResumePoint:
    """Where the run of checkpoint ``ckpt`` (read from ``path``) continues; ``UsageError`` when a
    mid-epoch checkpoint is resumed with another batch size."""
    extras = ckpt.get("extras") or {}
    epoch = int(extras.get("resume_epoch", int(ckpt.get("epoch", -1)) + 1))
    minibatch = int(extras.get("resume_minibatch", 0))
    saved_batch = extras.get("resume_batch_size")
    if minibatch and saved_batch is not None and saved_batch != config.batch_size:
        raise UsageError(
            f"{path}: stopped inside epoch {epoch} after {minibatch} minibatches of "
            f"{saved_batch} samples; resume it with --batch-size {saved_batch} (another batch size "
            f"would skip or repeat samples of that epoch); change the batch size at the next "
            f"epoch's checkpoint")
    return ResumePoint(epoch, minibatch, extras.get("resume_meters") if minibatch else None)
