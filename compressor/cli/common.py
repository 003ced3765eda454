"""Set-up shared by the app's modes: argument checks, device, seeds, run folder, logging."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from typing import List, Optional

import pandas as pd
import torch
from torch import nn

from .. import summary
from ..errors import CompressorError

log = logging.getLogger("compressor.app")

# warnings found before logging is set up (argument checks, device choice); setup_logging logs them
_pending_warnings: List[str] = []


def defer_warning(message: str) -> None:
    """Log ``message`` as a warning once ``setup_logging`` has configured the console and log file."""
    _pending_warnings.append(message)


def _deprecated_resume(args: argparse.Namespace) -> None:
    """Distiller's ``--resume P``: ``--resume-from P --reset-optimizer``, with a warning."""
    path = getattr(args, "deprecated_resume", None)
    if not path:
        return
    if args.resume_from or args.exp_load_weights_from:
        raise UsageError("--resume cannot be used with --resume-from or --exp-load-weights-from")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: file not found: {path}")
    defer_warning("--resume is deprecated (as in Distiller): it means --resume-from PATH "
                  "--reset-optimizer (weights and masks, a new optimizer, epoch 0); use "
                  "--resume-from PATH to continue a run")
    args.resume_from, args.reset_optimizer, args.deprecated_resume = path, True, None


class UsageError(CompressorError):
    """A bad combination of command-line options."""


def check_args(args: argparse.Namespace) -> None:
    def need(cond, message):
        if not cond:
            raise UsageError(message)
    _pending_warnings.clear()   # from an earlier run in this process that failed before logging
    _deprecated_resume(args)
    need(args.epochs >= 0, f"--epochs must be >= 0; got {args.epochs}")
    need(args.batch_size >= 1, f"--batch-size must be >= 1; got {args.batch_size}")
    need(args.lr > 0, f"--lr must be > 0; got {args.lr}")
    need(0 <= args.validation_split < 1, f"--validation-split must be in [0, 1); got {args.validation_split}")
    for flag in ("effective_train_size", "effective_valid_size", "effective_test_size"):
        value = getattr(args, flag)
        need(0 < value <= 1, f"--{flag.replace('_', '-')} must be in (0, 1]; got {value}")
    need(args.num_best_scores >= 1, f"--num-best-scores must be >= 1; got {args.num_best_scores}")
    need(args.print_freq >= 1, f"--print-freq must be >= 1; got {args.print_freq}")
    need(args.workers >= 0, f"--workers must be >= 0; got {args.workers}")
    need(not (args.resume_from and args.exp_load_weights_from),
         "--resume-from and --exp-load-weights-from cannot be used together")
    need(not args.reset_optimizer or args.resume_from, "--reset-optimizer needs --resume-from")
    need(not args.thinnify or args.resume_from or args.exp_load_weights_from,
         "--thinnify needs a checkpoint: --resume-from PATH (or --exp-load-weights-from PATH)")
    need(not args.scratch or args.exp_load_weights_from,
         "--scratch needs --exp-load-weights-from PATH: the (thinned) checkpoint whose architecture "
         "to train from scratch")
    need(args.sense_range[2] > 0 and 0 <= args.sense_range[0] < args.sense_range[1] <= 1,
         f"--sense-range START STOP STEP needs 0 <= START < STOP <= 1 and STEP > 0; got "
         f"{' '.join(f'{x:g}' for x in args.sense_range)}")
    for flag in ("compress", "resume_from", "exp_load_weights_from"):
        path = getattr(args, flag)
        need(path is None or os.path.isfile(path),
             f"--{flag.replace('_', '-')}: file not found: {path}")


def pick_device(args) -> torch.device:
    if args.cpu or not torch.cuda.is_available():
        if args.gpus and not args.cpu:   # Distiller fell back to the CPU; its command lines say --gpus 0
            defer_warning(f"--gpus {args.gpus}: no GPU is available here; running on the CPU")
        return torch.device("cpu")
    if args.gpus:
        try:
            index = int(args.gpus.split(",")[0])
        except ValueError:
            raise UsageError(f"--gpus must be a GPU index like 0; got {args.gpus!r}") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UsageError(f"--gpus {index}: only {torch.cuda.device_count()} GPU(s) present")
        return torch.device("cuda", index)
    return torch.device("cuda", 0)


def choose_seed(args) -> int:
    if args.seed is not None:
        return args.seed
    return 0 if args.deterministic else random.randint(1, 100000)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_run_dir(args) -> str:
    stamp = time.strftime("%Y.%m.%d-%H%M%S")
    base = f"{args.name}___{stamp}" if args.name else stamp
    path = os.path.join(args.out_dir, base)
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(args.out_dir, f"{base}_{suffix}")
    os.makedirs(path)
    return path


def setup_logging(verbose: bool, logfile: Optional[str] = None, quiet: bool = False) -> None:
    """Console (and file) logging for the app; ``quiet`` ranks other than 0 only warn."""
    root = logging.getLogger("compressor")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.WARNING if quiet else logging.DEBUG)
    root.addHandler(console)
    if logfile:
        fh = logging.FileHandler(logfile)
        fh.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
        root.addHandler(fh)
    root.propagate = False
    while _pending_warnings:
        log.warning("Warning: %s", _pending_warnings.pop(0))


def make_optimizer(args, model: nn.Module):
    params = model.parameters()
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def table(df: pd.DataFrame) -> str:
    return summary.render(df, showindex=False)


def weight_stats(model: nn.Module):
    """(sparsity table, total sparsity %, non-zero weights) of the model's conv/linear weights."""
    df, total = summary.weights_sparsity_summary(model, return_total_sparsity=True)
    nnz = int(df["NNZ (sparse)"].iloc[-1])
    return df, float(total), nnz
