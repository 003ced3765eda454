"""One-shot pruning on calibration data (the pruners live in ``compressor.pruners.oneshot``).

``provide_calibration(scheduler, batches)`` hands the calibration batches to every calibrated
pruner of a scheduler; ``prune_once(model, schedule, batches)`` builds a schedule, runs its epoch-0
pruning with the batches and returns the scheduler (its masks are then held through training).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from .calibrate import CalibrationError, InputStats, call_model, find_blocks, run_sequential
from .select import lowest_k, nm_keep, unstructured_keep
from .sparsegpt import sparsegpt_prune


def calibrated_pruners(scheduler):
    from ..pruners.oneshot import CalibratedPruner
    return [p.pruner for p in scheduler.ordered
            if isinstance(getattr(p, "pruner", None), CalibratedPruner)]


def provide_calibration(scheduler, batches: Sequence, progress: Optional[Callable] = None) -> int:
    """Give ``batches`` (a list of model inputs) to the scheduler's calibrated pruners; returns
    how many pruners took them. ``progress(done, total, label)`` is called after each block."""
    batches = list(batches)
    pruners = calibrated_pruners(scheduler)
    for pruner in pruners:
        pruner.calibration = batches
        pruner.progress = progress
    return len(pruners)


__all__ = ["CalibrationError", "InputStats", "call_model", "find_blocks", "run_sequential",
           "lowest_k", "nm_keep", "unstructured_keep", "sparsegpt_prune", "calibrated_pruners",
           "provide_calibration"]
