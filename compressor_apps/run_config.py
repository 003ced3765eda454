"""``RunConfig``: the app's settings, built once from the parsed command line and never changed.

The parser's namespace stops at ``RunConfig.from_args``: it resolves Distiller's deprecated
``--resume``, checks every option (``UsageError`` naming the flag) and computes what the flags
imply (the dataset, the dataset the model is built for, the checkpoint to read, whether the run
resumes in full). The app's functions take this object, not the namespace; a value that a mode
changes (the epochs of a scratch-B baseline) is computed by the app and passed on beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from compressor import models
from compressor.data.catalog import dataset_spec
from compressor.errors import CompressorError
from compressor.sensitivity.checks import MAX_LEVELS, level_count


class UsageError(CompressorError):
    """A bad combination of command-line options."""


# warnings found before logging is set up (argument checks, device choice); logged by setup_logging
pending_warnings: List[str] = []


def defer_warning(message: str) -> None:
    """Log ``message`` as a warning once logging is set up (``common.setup_logging``)."""
    pending_warnings.append(message)


@dataclass(frozen=True)
class RunConfig:
    """Every option of compress_classifier (the parser's dests), plus the values they imply."""
    # model and data
    data: Optional[str] = None
    arch: str = "simplenet_mnist"
    pretrained: bool = False
    dataset: Optional[str] = None           # as given; see ``dataset_name`` for the resolved one
    workers: int = 0
    batch_size: int = 256
    validation_split: float = 0.1
    effective_train_size: float = 1.0
    effective_valid_size: float = 1.0
    effective_test_size: float = 1.0
    # training
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    compile: bool = False
    print_freq: int = 20
    seed: Optional[int] = None
    deterministic: bool = False
    # compression
    compress: Optional[str] = None
    masks_sparsity: bool = False
    best_by: str = "top1"
    num_best_scores: int = 1
    # checkpoints and resuming (Distiller's --resume is already resolved into these)
    resume_from: Optional[str] = None
    exp_load_weights_from: Optional[str] = None
    reset_optimizer: bool = False
    # modes
    summary: Tuple[str, ...] = ()
    evaluate: bool = False
    export_onnx: Optional[str] = None
    thinnify: bool = False
    sense: Optional[str] = None
    sense_range: Tuple[float, float, float] = (0.0, 0.95, 0.05)
    sense_max_drop: float = 1.0
    scratch: Optional[str] = None
    scratch_dense_arch: Optional[str] = None
    # reports
    confusion: bool = False
    activation_stats: Tuple[str, ...] = ()
    # output and devices
    out_dir: str = "logs"
    name: Optional[str] = None
    cpu: bool = False
    gpus: Optional[str] = None
    verbose: bool = False
    no_progress_bar: bool = False

    # -- what the options imply (computed once, here) ------------------------------------------
    @property
    def dataset_name(self) -> str:
        """The dataset the run reads: --dataset, else the one --arch is built for."""
        return (self.dataset or models.dataset_of(self.arch)).lower()

    @property
    def model_dataset(self) -> str:
        """The dataset the model is built for (digits feeds MNIST models)."""
        return model_dataset_of(self.dataset_name)

    @property
    def checkpoint(self) -> Optional[str]:
        """The checkpoint the run starts from (--resume-from or --exp-load-weights-from)."""
        return self.resume_from or self.exp_load_weights_from

    @property
    def full_resume(self) -> bool:
        """Whether the optimizer, epoch and history come back too (--resume-from alone)."""
        return bool(self.resume_from) and not self.reset_optimizer

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunConfig":
        """Check the parsed command line and freeze it; ``UsageError`` on a bad option."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        values["summary"] = tuple(values.get("summary") or ())
        values["activation_stats"] = tuple(values.get("activation_stats") or ())
        values["sense_range"] = tuple(values.get("sense_range") or cls.sense_range)
        pending_warnings.clear()   # from an earlier run in this process that failed before logging
        values.update(_deprecated_resume(getattr(args, "deprecated_resume", None), values))
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """``UsageError`` naming the first option that is out of range or misses a partner."""
        def need(cond, message):
            if not cond:
                raise UsageError(message)
        need(self.epochs >= 0, f"--epochs must be >= 0; got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1; got {self.batch_size}")
        # NaN fails every comparison, so each range test below also refuses it; inf is named
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a finite number > 0; got {self.lr}")
        need(math.isfinite(self.momentum) and 0 <= self.momentum <= 1,
             f"--momentum must be in [0, 1]; got {self.momentum}")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be a finite number >= 0; got {self.weight_decay}")
        # torch.manual_seed takes 64 bits, and torchrun broadcasts the seed as an int64
        need(self.seed is None or 0 <= self.seed < 2 ** 63,
             f"--seed must be in [0, 2**63 - 1]; got {self.seed}")
        need(0 <= self.validation_split < 1,
             f"--validation-split must be in [0, 1); got {self.validation_split}")
        for flag in ("effective_train_size", "effective_valid_size", "effective_test_size"):
            value = getattr(self, flag)
            need(0 < value <= 1, f"--{flag.replace('_', '-')} must be in (0, 1]; got {value}")
        need(self.num_best_scores >= 1, f"--num-best-scores must be >= 1; got {self.num_best_scores}")
        need(self.print_freq >= 1, f"--print-freq must be >= 1; got {self.print_freq}")
        need(self.workers >= 0, f"--workers must be >= 0; got {self.workers}")
        need(not (self.resume_from and self.exp_load_weights_from),
             "--resume-from and --exp-load-weights-from cannot be used together")
        need(not self.reset_optimizer or self.resume_from, "--reset-optimizer needs --resume-from")
        need(not self.thinnify or self.checkpoint,
             "--thinnify needs a checkpoint: --resume-from PATH (or --exp-load-weights-from PATH)")
        need(not self.scratch or self.exp_load_weights_from,
             "--scratch needs --exp-load-weights-from PATH: the (thinned) checkpoint whose "
             "architecture to train from scratch")
        start, stop, step = self.sense_range
        need(step > 0 and 0 <= start < stop <= 1,
             f"--sense-range START STOP STEP needs 0 <= START < STOP <= 1 and STEP > 0; got "
             f"{' '.join(f'{x:g}' for x in self.sense_range)}")
        levels = level_count(start, stop, step)
        need(levels <= MAX_LEVELS,
             f"--sense-range {start:g} {stop:g} {step:g} asks for {levels:,} sparsity levels; at "
             f"most {MAX_LEVELS} (use a larger STEP, e.g. 0.05 for 20 levels)")
        need(math.isfinite(self.sense_max_drop) and self.sense_max_drop >= 0,
             f"--sense-max-drop must be a finite number of top-1 points >= 0; got {self.sense_max_drop}")
        # --thinnify runs instead of training and would drop --evaluate without a word
        need(not (self.evaluate and self.thinnify),
             "--evaluate and --thinnify cannot be used together: run --thinnify, then --evaluate "
             "with --exp-load-weights-from on the thinned checkpoint")
        if self.scratch_dense_arch is not None:
            try:
                models.ARCHITECTURES[self.scratch_dense_arch]
            except CompressorError as e:
                raise UsageError(f"--scratch-dense-arch: {e}") from None
        _check_out_dir(self.out_dir)
        for flag in ("compress", "resume_from", "exp_load_weights_from"):
            path = getattr(self, flag)
            need(path is None or os.path.isfile(path),
                 f"--{flag.replace('_', '-')}: file not found: {path}")


def _check_out_dir(out_dir: str) -> None:
    """``UsageError`` unless the run folder can be made under ``out_dir`` (checked before writing)."""
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):   # the nearest part of the path that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == os.path.abspath(out_dir) else f"is under {existing}, which is"
        raise UsageError(f"--out-dir {out_dir} {where} a file, not a folder; name a folder "
                         f"(it is created when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out-dir {out_dir}: no permission to write in {existing}; name a "
                         f"writable folder")


def model_dataset_of(dataset: str) -> str:
    """The dataset models are built for when reading ``dataset`` (the table's ``model_dataset``)."""
    try:
        return dataset_spec(dataset).model_dataset
    except CompressorError:   # unknown: create_model and load_data report it in their own words
        return dataset


def _deprecated_resume(path: Optional[str], values: dict) -> dict:
    """Distiller's ``--resume P``: ``--resume-from P --reset-optimizer``, with a warning."""
    if not path:
        return {}
    if values.get("resume_from") or values.get("exp_load_weights_from"):
        raise UsageError("--resume cannot be used with --resume-from or --exp-load-weights-from")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: file not found: {path}")
    defer_warning("--resume is deprecated (as in Distiller): it means --resume-from PATH "
                  "--reset-optimizer (weights and masks, a new optimizer, epoch 0); use "
                  "--resume-from PATH to continue a run")
    return {"resume_from": path, "reset_optimizer": True}
