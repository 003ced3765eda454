"""The app's epoch loop: train, validate, rank, checkpoint; stop cleanly on SIGINT/SIGTERM."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
from dataclasses import dataclass, field
from typing import Any, List, Optional

import pandas as pd
import torch
import torch.distributed as dist

from compressor import checkpoint as ckpt_io
from compressor import summary
from compressor.activations import ActivationStatsCollector
from compressor.distributed import broadcast_masks, reduce_meter_state, reduce_mean, reduce_sum_tensor
from compressor.data import DatasetError
from compressor.errors import CompressorError, NonFiniteLossError
from compressor.training import EpochStats, evaluate, train_epoch
from .best import BestScores
from .common import close_log_file, table, weight_stats
from .progress import Progress, use_bar
from .run_config import RunConfig

log = logging.getLogger("compressor.app")


class StopFlag:
    """Set by the first SIGINT or SIGTERM; polled after every step. A second Ctrl-C aborts, except
    while a checkpoint is being written (``writing``): then the write finishes first, so the run
    folder never holds a half-written file and the abort is one line, not a traceback."""

    def __init__(self, distributed: bool):
        self.signum: Optional[int] = None
        self.distributed = distributed
        self._old = {}
        self._writing = False
        self._abort = False   # a second Ctrl-C came while writing

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            if self._writing:
                self._abort = True
                return
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def writing(self, abort_after: bool = True):
        """Hold a second Ctrl-C until the block ends; then abort (``abort_after``) or go on (the
        run is stopping anyway)."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._abort and abort_after:
            raise KeyboardInterrupt

    def __call__(self) -> bool:
        flag = self.signum is not None
        if self.distributed:   # every rank stops at the same step
            t = torch.tensor([1 if flag else 0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self.signum is None:
                self.signum = signal.SIGTERM
        return flag


@dataclass
class Loop:
    """Everything the epoch loop needs, built by the app."""
    config: RunConfig
    epochs: int                         # the final epoch (scratch-B's differs from config.epochs)
    model: torch.nn.Module              # the plain model (scheduler, checkpoints, evaluation)
    train_model: torch.nn.Module        # what trains: the model, or its DDP wrapper
    optimizer: Any
    scheduler: Any
    train_loader: Any
    valid_loader: Any
    test_loader: Any
    criterion: Any
    device: torch.device
    dataset: str
    seed: int
    run_dir: Optional[str]              # None on ranks other than 0
    best: BestScores
    metrics_rows: List[dict] = field(default_factory=list)
    distributed: bool = False
    _stop: Optional[StopFlag] = field(default=None, init=False, repr=False)   # set by run()
    _saved: bool = field(default=False, init=False, repr=False)   # a checkpoint was written

    # -- helpers -------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): it logs, writes, and carries a stopped epoch's sums."""
        return not self.distributed or dist.get_rank() == 0

    def reduce(self, stats: EpochStats) -> EpochStats:
        if not self.distributed:
            return stats
        values = {"loss": stats.loss, "overall_loss": stats.overall_loss, "top1": stats.top1,
                  "top5": stats.top5, **{f"c:{k}": v for k, v in stats.components.items()}}
        mean = reduce_mean(values, stats.samples)
        samples = int(reduce_sum_tensor(torch.tensor([stats.samples])).item())
        confusion = reduce_sum_tensor(stats.confusion) if stats.confusion is not None else None
        return EpochStats(loss=mean["loss"], overall_loss=mean["overall_loss"], top1=mean["top1"],
                          top5=mean["top5"], samples=samples, seconds=stats.seconds,
                          components={k[2:]: v for k, v in mean.items() if k.startswith("c:")},
                          confusion=confusion, next_minibatch=stats.next_minibatch,
                          meter_state=reduce_meter_state(stats.meter_state)
                          if stats.meter_state is not None else None)

    def save(self, epoch: int, extras: dict) -> Optional[str]:
        if self.run_dir is None:
            return None
        path = os.path.join(self.run_dir, "checkpoint.pth.tar")
        self._saved = True   # from here on the run folder is kept, whatever happens
        ckpt_io.save_checkpoint(path, self.model, self.optimizer, self.scheduler,
                                arch=self.config.arch, dataset=self.dataset, epoch=epoch, extras=extras)
        return path

    def extras(self, **more) -> dict:
        best = self.best.best(1)
        return {"seed": self.seed, "history": self.best.history, "metrics": self.metrics_rows,
                "rng_state": torch.get_rng_state(),
                "best_top1": best[0]["top1"] if best else None,
                "best_epoch": best[0]["epoch"] if best else None, **more}

    def observed(self, phase: str):
        return ActivationStatsCollector(self.model) if phase in self.config.activation_stats else None

    # -- the loop ------------------------------------------------------------------------------
    def run(self, start_epoch: int, skip: int = 0, meters: Optional[dict] = None) -> int:
        """Train epochs start_epoch .. self.epochs-1; returns the exit code. ``skip`` minibatches
        of the first epoch were trained before a stop, with running sums ``meters``.

        A bad sample (an image that does not decode) is found only when it is read; if that
        happens before the first checkpoint, the run folder holds nothing worth keeping and is
        removed, so a failed start leaves nothing behind. Errors here may be one rank's own
        (its share of the data): they are marked ``rank_local`` so that every rank reports them;
        a non-finite loss is seen by all ranks at once and reported by rank 0 alone.
        """
        try:
            return self._run(start_epoch, skip, meters)
        except NonFiniteLossError:
            raise
        except CompressorError as e:
            e.rank_local = True
            if isinstance(e, DatasetError) and self.run_dir is not None and not self._saved:
                close_log_file()
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _run(self, start_epoch: int, skip: int, meters: Optional[dict]) -> int:
        bar = use_bar(self.config.no_progress_bar) and self.run_dir is not None
        with StopFlag(self.distributed) as stop:
            self._stop = stop
            for epoch in range(start_epoch, self.epochs):
                if hasattr(self.train_loader, "set_epoch"):
                    self.train_loader.set_epoch(epoch)
                resuming = skip > 0 and epoch == start_epoch
                if self.scheduler is not None and not resuming:
                    self.scheduler.on_epoch_begin(epoch, self.optimizer)
                    if self.distributed:
                        broadcast_masks(self.scheduler.store)
                log.info("Training epoch %d: %d samples (%d per mini-batch)%s", epoch,
                         self.train_loader.dataset_size * (dist.get_world_size() if self.distributed else 1),
                         self.config.batch_size, f", resuming at minibatch {skip}" if resuming else "")
                stats = self.train_one(epoch, bar, stop, skip if resuming else 0,
                                       meters if resuming else None)
                if stats.next_minibatch is not None:
                    with stop.writing(abort_after=False):   # stopping anyway: let it finish
                        path = self.save(epoch - 1, self.extras(
                            resume_epoch=epoch, resume_minibatch=stats.next_minibatch,
                            resume_batch_size=self.config.batch_size,
                            resume_samples=stats.next_minibatch * self.config.batch_size,
                            resume_meters=stats.meter_state))
                    if path is not None:   # only rank 0 writes, so only it names the file
                        log.warning("Stopped by %s at epoch %d, minibatch %d; saved %s. Resume "
                                    "with --resume-from %s", signal.Signals(stop.signum).name,
                                    epoch, stats.next_minibatch, path, path)
                    return 128 + stop.signum
                self.end_epoch(epoch, stats)
        return 0

    def train_one(self, epoch: int, bar: bool, stop, skip: int, meters: Optional[dict] = None) -> EpochStats:
        acts = self.observed("train")
        if acts is not None:
            acts.__enter__()
        try:
            # a NaN/inf loss raises NonFiniteLossError: one line, exit 2, no checkpoint of it
            stats = train_epoch(self.train_model, self.train_loader, self.criterion, self.optimizer,
                                epoch, self.scheduler, self.device,
                                progress=Progress(f"Epoch: [{epoch}]", bar) if self.run_dir else None,
                                print_freq=self.config.print_freq, stop=stop, skip=skip,
                                resume_meters=meters if self.is_main else None)
        finally:
            if acts is not None:
                acts.__exit__(None, None, None)
        if acts is not None:
            log.info("Activation sparsity (train):\n%s", table(acts.summary()))
        return self.reduce(stats)

    def evaluate(self, loader, phase: str, num_classes=None) -> EpochStats:
        acts = self.observed(phase)
        if acts is not None:
            with acts:
                result = evaluate(self.model, loader, self.criterion, self.device, num_classes)
            log.info("Activation sparsity (%s):\n%s", phase, table(acts.summary()))
        else:
            result = evaluate(self.model, loader, self.criterion, self.device, num_classes)
        return self.reduce(result)

    def log_thinning(self, epoch: int) -> None:
        """Say what a thinning extension removed this epoch (layer: kept of before)."""
        for policy in self.scheduler.ordered if self.scheduler is not None else ():
            result = getattr(policy, "last_result", None)
            if getattr(policy, "done_epoch", None) != epoch or result is None or not result.changed:
                continue
            layers = ", ".join(f"{name} {before - gone}/{before}" for name, (gone, before) in result.removed.items())
            notes = [f"{len(result.selected)} batch norms select channels"] if result.selected else []
            if result.nonzero_bias_removed:
                notes.append(f"{result.nonzero_bias_removed} removed channels had a non-zero bias")
            log.info("Thinned by %s at epoch %d (%s): %s%s", policy.name, epoch, result.kind, layers,
                     "".join(f"; {n}" for n in notes))

    def end_epoch(self, epoch: int, stats: EpochStats) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        comps = "".join(f"    {k} {v:.6f}" for k, v in stats.components.items())
        log.info("==> Train: Overall Loss %.6f    Objective Loss %.6f%s    Top1 %.3f    Top5 %.3f    LR %.6g",
                 stats.overall_loss, stats.loss, comps, stats.top1, stats.top5, lr)
        self.log_thinning(epoch)
        df, total_sparsity, nnz = weight_stats(self.model)
        log.info("Parameters:\n%s\nTotal sparsity: %.2f", table(df), total_sparsity)
        if self.config.masks_sparsity and self.scheduler is not None:
            log.info("Mask sparsity:\n%s", table(summary.masks_sparsity_summary(self.scheduler.masks)))

        loader = self.valid_loader or self.test_loader
        log.info("--- %s (epoch=%d)-----------", "validate" if self.valid_loader is not None
                 else "test (no validation split)", epoch)
        val = self.evaluate(loader, "valid")
        log.info("==> Top1: %.3f    Top5: %.3f    Loss: %.3f", val.top1, val.top5, val.loss)
        if self.scheduler is not None:
            self.scheduler.on_epoch_end(epoch, self.optimizer, metrics={"min": val.loss, "max": val.top1})

        finite = all(math.isfinite(x) for x in (val.loss, val.top1, val.top5))
        if not finite:
            log.warning("Warning: validation metrics of epoch %d are not finite (loss %s); this "
                        "epoch cannot be the best", epoch, val.loss)
        is_best = self.best.add({"epoch": epoch, "top1": val.top1, "top5": val.top5,
                                 "sparsity": total_sparsity, "nnz": nnz, "finite": finite})
        log.info(self.best.describe(self.config.num_best_scores))
        self.metrics_rows.append({
            "epoch": epoch, "lr": lr, "train_loss": stats.loss, "train_overall_loss": stats.overall_loss,
            **{f"train_{k}": v for k, v in stats.components.items()},
            "train_top1": stats.top1, "train_top5": stats.top5, "val_loss": val.loss,
            "val_top1": val.top1, "val_top5": val.top5, "sparsity": total_sparsity, "nnz_params": nnz,
            "epoch_seconds": stats.seconds + val.seconds})
        if self.run_dir is None:
            return
        with self._stop.writing() if self._stop is not None else contextlib.nullcontext():
            summary.to_csv(pd.DataFrame(self.metrics_rows), os.path.join(self.run_dir, "metrics.csv"))
            path = self.save(epoch, self.extras(current_top1=val.top1))
            log.info("Saving checkpoint to: %s", path)
            if is_best:
                tmp = os.path.join(self.run_dir, ".best.tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, os.path.join(self.run_dir, "best.pth.tar"))

    def test(self, num_classes=None) -> EpochStats:
        log.info("--- test ---------------------")
        result = self.evaluate(self.test_loader, "test", num_classes if self.config.confusion else None)
        log.info("==> Top1: %.3f    Top5: %.3f    Loss: %.3f", result.top1, result.top5, result.loss)
        if result.confusion is not None:
            log.info("Confusion matrix (rows: true class, columns: predicted):\n%s",
                     table(pd.DataFrame(result.confusion.numpy())))
        df, total, _ = weight_stats(self.model)
        log.info("Parameters:\n%s\nTotal sparsity: %.2f", table(df), total)
        if self.run_dir is not None:
            summary.to_csv(df, os.path.join(self.run_dir, "sparsity.csv"))
            example = next(iter(self.test_loader))[0][:1].to(self.device)
            summary.to_csv(summary.model_performance_summary(self.model, example),
                           os.path.join(self.run_dir, "compute.csv"))
        return result
