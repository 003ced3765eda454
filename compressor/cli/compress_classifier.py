"""compress_classifier: train, compress and evaluate an image classifier from the command line.

User mistakes (unknown arch, missing data, a schedule error, an incompatible checkpoint) end with
one line on stderr and exit code 2; nothing already written is damaged (checkpoints and CSVs are
written atomically).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import time
from typing import List, Optional

import pandas as pd
import torch
from torch import nn

from .. import checkpoint as ckpt_io
from .. import file_config, models, summary
from ..activations import ActivationStatsCollector
from ..data import load_data
from ..errors import CompressorError
from ..masks import unwrap
from ..scheduler import CompressionScheduler
from ..training import evaluate, train_epoch
from .parser import build_parser
from .progress import Progress, use_bar

log = logging.getLogger("compressor.app")


class UsageError(CompressorError):
    """A bad combination of command-line options."""


# ---------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    def need(cond, message):
        if not cond:
            raise UsageError(message)
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
    for flag in ("compress", "resume_from", "exp_load_weights_from"):
        path = getattr(args, flag)
        need(path is None or os.path.isfile(path),
             f"--{flag.replace('_', '-')}: file not found: {path}")


def pick_device(args) -> torch.device:
    if args.cpu or not torch.cuda.is_available():
        if args.gpus and not args.cpu:
            raise UsageError(f"--gpus {args.gpus}: no GPU is available here; use --cpu")
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


def seed_everything(args) -> int:
    seed = args.seed
    if seed is None:
        seed = 0 if args.deterministic else random.randint(1, 100000)
    random.seed(seed)
    torch.manual_seed(seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return seed


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


def setup_logging(verbose: bool, logfile: Optional[str] = None) -> None:
    root = logging.getLogger("compressor")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if logfile:
        fh = logging.FileHandler(logfile)
        fh.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
        root.addHandler(fh)
    root.propagate = False


def make_optimizer(args, model: nn.Module):
    params = model.parameters()
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def table(df: pd.DataFrame) -> str:
    return summary.render(df, showindex=False)


# ---------------------------------------------------------------------------------------------
# best-score tracking
# ---------------------------------------------------------------------------------------------
class BestScores:
    """Keeps every epoch's scores and ranks them by top-1 (default) or, like Distiller, sparsity."""

    def __init__(self, by: str = "top1", history: Optional[List[dict]] = None):
        self.by = by
        self.history = list(history or [])

    def key(self, s: dict):
        if self.by == "sparsity":
            return (-s["nnz"], s["top1"], s["top5"], s["epoch"])
        return (s["top1"], s["top5"], -s["nnz"], s["epoch"])

    def add(self, scores: dict) -> bool:
        """Record an epoch; True when it is the new best."""
        self.history.append(scores)
        return self.best(1)[0] is scores

    def best(self, n: int) -> List[dict]:
        return sorted(self.history, key=self.key, reverse=True)[:n]

    def describe(self, n: int) -> str:
        ranking = "top-1, then top-5" if self.by == "top1" else "fewest non-zero parameters, then top-1"
        lines = [f"==> Best (ranked by {ranking}):"]
        for s in self.best(n):
            lines.append(f"    Top1: {s['top1']:.3f}   Top5: {s['top5']:.3f}   Sparsity: "
                         f"{s['sparsity']:.2f}%   NNZ-Params: {s['nnz']:,} on epoch: {s['epoch']}")
        return "\n".join(lines)


def weight_stats(model: nn.Module):
    df, total = summary.weights_sparsity_summary(model, return_total_sparsity=True)
    nnz = int(df["NNZ (sparse)"].iloc[-1])
    return df, float(total), nnz


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------
def run_summaries(args, model, dataset: str) -> None:
    shape = models.input_shape(dataset)
    for what in args.summary:
        if what == "sparsity":
            df, total, _ = weight_stats(model)
            print("Parameters:\n" + table(df) + f"\nTotal sparsity: {total:.2f}")
        elif what == "compute":
            df = summary.model_performance_summary(model, torch.zeros(1, *shape))
            totals = summary.compute_totals(df)
            print(table(df) + f"\nTotal MACs: {int(totals['MACs']):,}")
        elif what == "model":
            print(model)
        elif what == "modules":
            print(table(summary.model_summary_modules(model)))


def export_onnx(args, model, dataset: str) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("--export-onnx needs the onnx package: pip install 'compressor[onnx]'") from None
    dummy = torch.zeros(1, *models.input_shape(dataset))
    model.eval()
    torch.onnx.export(model, (dummy,), args.export_onnx)
    log.info("Exported the model to %s", args.export_onnx)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    check_args(args)
    seed = seed_everything(args)
    device = pick_device(args)
    dataset = (args.dataset or models.dataset_of(args.arch)).lower()
    model_dataset = "mnist" if dataset == "digits" else dataset
    model = models.create_model(args.arch, model_dataset, pretrained=args.pretrained).to(device)

    if args.summary:
        setup_logging(args.verbose)
        run_summaries(args, model, model_dataset)
        return 0
    if args.export_onnx:
        setup_logging(args.verbose)
        export_onnx(args, model, model_dataset)
        return 0

    # Load what the user asked for before creating anything on disk.
    start_epoch, resumed, best = 0, None, BestScores(args.best_by)
    optimizer = make_optimizer(args, model)
    scheduler: Optional[CompressionScheduler] = None
    if args.resume_from or args.exp_load_weights_from:
        path = args.resume_from or args.exp_load_weights_from
        resumed = ckpt_io.read_checkpoint(path)
        full = bool(args.resume_from) and not args.reset_optimizer
        if resumed.get("compression_sched") is not None:
            scheduler = CompressionScheduler(model)
        ckpt_io.restore(resumed, model, optimizer if full else None, scheduler, arch=args.arch, path=path)
        if not full:   # weights only: parameters may have been thinned, so a new optimizer
            optimizer = make_optimizer(args, model)
            if scheduler is not None:
                scheduler.store.rebind(model)
        if full:
            start_epoch = int(resumed.get("epoch", -1)) + 1
            extras = resumed.get("extras", {})
            best = BestScores(args.best_by, extras.get("history", []))
            if args.seed is None and "seed" in extras:
                seed = int(extras["seed"])
            if "rng_state" in extras:
                torch.set_rng_state(extras["rng_state"])
    if args.compress:
        state = scheduler.state_dict() if scheduler is not None else None
        scheduler = file_config(model, optimizer, args.compress,
                                resumed_epoch=start_epoch - 1 if start_epoch > 0 else None)
        if state is not None:
            scheduler.load_state_dict(state)

    train_loader, valid_loader, test_loader = load_data(
        dataset, args.data, args.batch_size, workers=args.workers,
        validation_split=0.0 if args.evaluate else args.validation_split,
        effective_train_size=args.effective_train_size, effective_valid_size=args.effective_valid_size,
        effective_test_size=args.effective_test_size, seed=seed, deterministic=args.deterministic)
    criterion = nn.CrossEntropyLoss()
    num_classes = getattr(test_loader, "num_classes", None)

    run_dir = make_run_dir(args)
    setup_logging(args.verbose, os.path.join(run_dir, "run.log"))
    log.info("Log file for this run: %s", os.path.join(run_dir, "run.log"))
    log.info("Command: %s", " ".join(sys.argv))
    log.info("Random seed: %d%s", seed, " (deterministic)" if args.deterministic else "")
    log.info("Dataset %s: %d training, %d validation, %d test samples", dataset,
             train_loader.dataset_size, valid_loader.dataset_size if valid_loader else 0,
             test_loader.dataset_size)
    if args.compress:
        shutil.copy(args.compress, os.path.join(run_dir, os.path.basename(args.compress)))
    if resumed is not None:
        log.info("Loaded %s (epoch %s)", args.resume_from or args.exp_load_weights_from, resumed.get("epoch"))

    if args.evaluate:
        test(args, model, test_loader, criterion, device, num_classes, run_dir)
        return 0

    bar = use_bar(args.no_progress_bar)
    metrics_rows = list((resumed or {}).get("extras", {}).get("metrics", [])) if start_epoch else []
    last_ckpt = None
    try:
        for epoch in range(start_epoch, args.epochs):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            if scheduler is not None:
                scheduler.on_epoch_begin(epoch, optimizer)
            log.info("Training epoch %d: %d samples (%d per mini-batch)", epoch,
                     train_loader.dataset_size, args.batch_size)
            collect = "train" in args.activation_stats
            with ActivationStatsCollector(model) if collect else _null() as acts:
                stats = train_epoch(model, train_loader, criterion, optimizer, epoch, scheduler, device,
                                    progress=Progress(f"Epoch: [{epoch}]", bar), print_freq=args.print_freq)
            if collect:
                log.info("Activation sparsity (train):\n%s", table(acts.summary()))
            comps = "".join(f"    {k} {v:.6f}" for k, v in stats.components.items())
            log.info("==> Train: Overall Loss %.6f    Objective Loss %.6f%s    Top1 %.3f    Top5 %.3f    LR %.6g",
                     stats.overall_loss, stats.loss, comps, stats.top1, stats.top5,
                     optimizer.param_groups[0]["lr"])
            df, total_sparsity, nnz = weight_stats(model)
            log.info("Parameters:\n%s\nTotal sparsity: %.2f", table(df), total_sparsity)
            if args.masks_sparsity and scheduler is not None:
                log.info("Mask sparsity:\n%s", table(summary.masks_sparsity_summary(scheduler.masks)))

            eval_loader = valid_loader or test_loader
            phase = "validate" if valid_loader is not None else "test (no validation split)"
            log.info("--- %s (epoch=%d)-----------", phase, epoch)
            collect = "valid" in args.activation_stats
            with ActivationStatsCollector(model) if collect else _null() as acts:
                val = evaluate(model, eval_loader, criterion, device)
            if collect:
                log.info("Activation sparsity (valid):\n%s", table(acts.summary()))
            log.info("==> Top1: %.3f    Top5: %.3f    Loss: %.3f", val.top1, val.top5, val.loss)
            if scheduler is not None:
                scheduler.on_epoch_end(epoch, optimizer, metrics={"min": val.loss, "max": val.top1})

            scores = {"epoch": epoch, "top1": val.top1, "top5": val.top5,
                      "sparsity": total_sparsity, "nnz": nnz}
            is_best = best.add(scores)
            log.info(best.describe(args.num_best_scores))
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": stats.loss,
                   "train_overall_loss": stats.overall_loss,
                   **{f"train_{k}": v for k, v in stats.components.items()},
                   "train_top1": stats.top1, "train_top5": stats.top5, "val_loss": val.loss,
                   "val_top1": val.top1, "val_top5": val.top5, "sparsity": total_sparsity,
                   "nnz_params": nnz, "epoch_seconds": stats.seconds + val.seconds}
            metrics_rows.append(row)
            summary.to_csv(pd.DataFrame(metrics_rows), os.path.join(run_dir, "metrics.csv"))
            extras = {"seed": seed, "history": best.history, "metrics": metrics_rows,
                      "rng_state": torch.get_rng_state(), "current_top1": val.top1,
                      "best_top1": best.best(1)[0]["top1"], "best_epoch": best.best(1)[0]["epoch"]}
            last_ckpt = os.path.join(run_dir, "checkpoint.pth.tar")
            info = dict(arch=args.arch, dataset=dataset, epoch=epoch, extras=extras)
            ckpt_io.save_checkpoint(last_ckpt, model, optimizer, scheduler, **info)
            log.info("Saving checkpoint to: %s", last_ckpt)
            if is_best:
                shutil.copyfile(last_ckpt, os.path.join(run_dir, ".best.tmp"))
                os.replace(os.path.join(run_dir, ".best.tmp"), os.path.join(run_dir, "best.pth.tar"))
    except KeyboardInterrupt:
        where = f"; the last complete epoch is saved in {last_ckpt}" if last_ckpt else ""
        log.info("Interrupted%s. Resume with --resume-from.", where)
        return 130

    test(args, model, test_loader, criterion, device, num_classes, run_dir)
    return 0


def test(args, model, loader, criterion, device, num_classes, run_dir) -> None:
    log.info("--- test ---------------------")
    collect = "test" in args.activation_stats
    with ActivationStatsCollector(model) if collect else _null() as acts:
        result = evaluate(model, loader, criterion, device, num_classes=num_classes if args.confusion else None)
    if collect:
        log.info("Activation sparsity (test):\n%s", table(acts.summary()))
    log.info("==> Top1: %.3f    Top5: %.3f    Loss: %.3f", result.top1, result.top5, result.loss)
    if result.confusion is not None:
        log.info("Confusion matrix (rows: true class, columns: predicted):\n%s",
                 table(pd.DataFrame(result.confusion.numpy())))
    df, total, _ = weight_stats(model)
    log.info("Parameters:\n%s\nTotal sparsity: %.2f", table(df), total)
    summary.to_csv(df, os.path.join(run_dir, "sparsity.csv"))
    example = next(iter(loader))[0][:1].to(device)
    summary.to_csv(summary.model_performance_summary(model, example), os.path.join(run_dir, "compute.csv"))


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _Parser(argparse.ArgumentParser):
    pass


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()

    def one_line_error(message):   # argparse prints usage + error; we print one line
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.exit(2)

    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CompressorError as e:
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
