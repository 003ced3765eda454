"""Set-up shared by the app's modes: device, seeds, run folder, logging, optimizer, weight tables."""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import Optional

import pandas as pd
import torch
from torch import nn

from compressor import summary
from .run_config import RunConfig, UsageError, defer_warning, pending_warnings

log = logging.getLogger("compressor.app")


def pick_device(config: RunConfig) -> torch.device:
    """--cpu / --gpus as a device; without a GPU, the CPU (with a warning when --gpus asked for one)."""
    if config.cpu or not torch.cuda.is_available():
        if config.gpus and not config.cpu:   # Distiller fell back to the CPU; its command lines say --gpus 0
            defer_warning(f"--gpus {config.gpus}: no GPU is available here; running on the CPU")
        return torch.device("cpu")
    if config.gpus:
        try:
            index = int(config.gpus.split(",")[0])
        except ValueError:
            raise UsageError(f"--gpus must be a GPU index like 0; got {config.gpus!r}") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UsageError(f"--gpus {index}: only {torch.cuda.device_count()} GPU(s) present")
        return torch.device("cuda", index)
    return torch.device("cuda", 0)


def choose_seed(config: RunConfig) -> int:
    """--seed, else 0 with --deterministic, else a random one (logged, so a run can be repeated)."""
    if config.seed is not None:
        return config.seed
    return 0 if config.deterministic else random.randint(1, 100000)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_run_dir(config: RunConfig) -> str:
    """A new folder NAME___TIMESTAMP (suffixed _2, _3 ... if taken) under --out-dir."""
    stamp = time.strftime("%Y.%m.%d-%H%M%S")
    base = f"{config.name}___{stamp}" if config.name else stamp
    path = os.path.join(config.out_dir, base)
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(config.out_dir, f"{base}_{suffix}")
    try:
        os.makedirs(path)
    except OSError as e:   # checked up front (RunConfig), but the disk can change or fill since
        raise UsageError(f"--out-dir {config.out_dir}: cannot create the run folder {path}: "
                         f"{e.strerror or e}") from None
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
    while pending_warnings:
        log.warning("Warning: %s", pending_warnings.pop(0))


def close_log_file() -> None:
    """Stop logging to the run folder's ``run.log`` (before removing the folder); the console
    keeps its handler."""
    root = logging.getLogger("compressor")
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def reports_error(error: BaseException) -> bool:
    """Whether this process prints ``error``: always in a single process; under torchrun rank 0
    alone, unless the error is this rank's own (marked ``rank_local``: its share of the data),
    since every rank finds the same mistake in the same flags, schedule and checkpoint."""
    try:
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        rank = 0
    return rank == 0 or bool(getattr(error, "rank_local", False))


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def table(df: pd.DataFrame) -> str:
    return summary.render(df, showindex=False)


def weight_stats(model: nn.Module):
    """(sparsity table, total sparsity %, non-zero weights) of the model's conv/linear weights."""
    df, total = summary.weights_sparsity_summary(model, return_total_sparsity=True)
    nnz = int(df["NNZ (sparse)"].iloc[-1])
    return df, float(total), nnz
