"""The train / validate loop for classifiers, with the scheduler's six events in their places.

Apps and tests share it. It prints nothing: progress goes to an optional callback, results come
back as plain objects.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .errors import NonFiniteLossError


@dataclass
class Meter:
    """Running sum of a value weighted by batch size."""
    total: float = 0.0
    count: int = 0

    def add(self, value: float, n: int) -> None:
        self.total += value * n
        self.count += n

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass
class EpochStats:
    """What one pass over a loader measured."""
    loss: float = 0.0                  # the objective (data) loss
    overall_loss: float = 0.0          # objective plus regularization terms
    top1: float = 0.0
    top5: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    components: Dict[str, float] = field(default_factory=dict)   # regularizer terms by name
    confusion: Optional[torch.Tensor] = None
    next_minibatch: Optional[int] = None   # set when training stopped early: where to resume
    meter_state: Optional[Dict[str, Any]] = None   # set when stopped early: see ``meters_state``


METER_NAMES = ("loss", "overall", "top1", "top5")


def meters_state(meters: Mapping[str, Meter], components: Mapping[str, Meter],
                 seconds: float) -> Dict[str, Any]:
    """The running sums of a stopped epoch as plain data (a checkpoint can hold it):
    ``{"loss": [total, count], ..., "components": {name: [total, count]}, "seconds": s}``."""
    state: Dict[str, Any] = {k: [meters[k].total, meters[k].count] for k in METER_NAMES}
    state["components"] = {k: [m.total, m.count] for k, m in components.items()}
    state["seconds"] = float(seconds)
    return state


def _meters_from(state: Optional[Mapping[str, Any]]):
    """(meters, components, seconds) continuing ``state`` (from ``meters_state``), or fresh ones."""
    state = state or {}
    meters = {k: Meter(*state[k]) if k in state else Meter() for k in METER_NAMES}
    components = {k: Meter(*v) for k, v in (state.get("components") or {}).items()}
    return meters, components, float(state.get("seconds", 0.0))


def correct_topk(output: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list:
    """How many samples have the target among the top-k outputs, for each k."""
    maxk = min(max(ks), output.size(1))
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


ProgressFn = Callable[[int, int, Dict[str, float]], None]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _losses_of_all_ranks(loss: torch.Tensor, world: int) -> list:
    """Every rank's loss of this step, on every rank: slot r of a zero vector holds rank r's loss,
    and a sum adds only zeros to it, so NaN and inf arrive as they are. One all_reduce, and the
    step's one host read."""
    slots = torch.zeros(world, dtype=torch.float64, device=loss.device)
    slots[dist.get_rank()] = loss.detach().to(torch.float64)
    dist.all_reduce(slots)
    return slots.tolist()


def train_epoch(model: nn.Module, loader: Iterable, criterion, optimizer, epoch: int,
                scheduler=None, device: torch.device = torch.device("cpu"),
                progress: Optional[ProgressFn] = None, print_freq: int = 0,
                stop: Optional[Callable[[], bool]] = None, skip: int = 0,
                stop_on_nonfinite: bool = True,
                resume_meters: Optional[Mapping[str, Any]] = None) -> EpochStats:
    """One training epoch. ``scheduler`` (a CompressionScheduler) gets every per-minibatch event.

    ``stop`` is polled after each step; when it returns True the epoch ends early (e.g. on SIGTERM)
    and ``EpochStats.next_minibatch`` says where to continue. ``skip`` resumes such an epoch: the
    first ``skip`` batches are drawn (so random augmentation stays in step) but not trained on;
    ``resume_meters`` (the stopped epoch's ``EpochStats.meter_state``) continues its running sums,
    so the resumed epoch reports the same loss and accuracy as one that never stopped.
    With ``stop_on_nonfinite`` a NaN or infinite loss raises ``NonFiniteLossError`` (naming the
    epoch and minibatch) before it is back-propagated, so no step is taken on it. In a process
    group of several ranks (torchrun) the ranks share each step's loss first, so all of them stop
    at the same step when any one's loss is not finite, instead of the others waiting for it in
    the gradient all-reduce.
    """
    model.train()
    steps = len(loader)
    world = _world() if stop_on_nonfinite else 1
    meters, components, earlier_seconds = _meters_from(resume_meters)
    start = time.perf_counter()
    next_minibatch = None
    for i, (inputs, target) in enumerate(loader):
        if i < skip:
            continue
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if scheduler is not None:
            scheduler.on_minibatch_begin(epoch, i, steps, optimizer)
        output = model(inputs)
        loss = criterion(output, target)
        if world > 1:
            losses = _losses_of_all_ranks(loss, world)
            loss_value = losses[dist.get_rank()]
            bad = next((r for r, v in enumerate(losses) if not math.isfinite(v)), None)
            where, shown = (f" on rank {bad} of {world}", losses[bad]) if bad is not None else ("", 0.0)
        else:
            loss_value = float(loss.detach())   # the one host read of the loss per step
            bad = None if math.isfinite(loss_value) else 0
            where, shown = "", loss_value
        if stop_on_nonfinite and bad is not None:
            raise NonFiniteLossError(f"the training loss is {shown} at epoch {epoch}, minibatch "
                                     f"{i}{where}; stopped before stepping on it (lower the learning "
                                     f"rate or check the schedule's regularizers)")
        overall = loss
        if scheduler is not None:
            out = scheduler.before_backward_pass(epoch, i, steps, loss, optimizer,
                                                 return_loss_components=True)
            overall = out.overall_loss
            for comp in out.loss_components:
                components.setdefault(comp.name, Meter()).add(float(comp.value.detach()), target.size(0))
        optimizer.zero_grad(set_to_none=True)
        overall.backward()
        if scheduler is not None:
            scheduler.before_parameter_optimization(epoch, i, steps, optimizer)
        optimizer.step()
        if scheduler is not None:
            scheduler.on_minibatch_end(epoch, i, steps, optimizer)

        n = target.size(0)
        c1, c5 = correct_topk(output.detach(), target)
        meters["loss"].add(loss_value, n)
        meters["overall"].add(float(overall.detach()), n)
        meters["top1"].add(100.0 * c1 / n, n)
        meters["top5"].add(100.0 * c5 / n, n)
        if progress is not None and print_freq and ((i + 1) % print_freq == 0 or i + 1 == steps):
            stats = {"Overall Loss": meters["overall"].mean, "Objective Loss": meters["loss"].mean}
            stats.update({name: m.mean for name, m in components.items()})
            stats.update({"Top1": meters["top1"].mean, "Top5": meters["top5"].mean,
                          "LR": optimizer.param_groups[0]["lr"],
                          "Time": (time.perf_counter() - start) / (i + 1 - skip)})
            progress(i + 1, steps, stats)
        if stop is not None and stop() and i + 1 < steps:
            next_minibatch = i + 1
            break
    seconds = earlier_seconds + time.perf_counter() - start
    return EpochStats(loss=meters["loss"].mean, overall_loss=meters["overall"].mean,
                      top1=meters["top1"].mean, top5=meters["top5"].mean,
                      samples=meters["loss"].count, seconds=seconds,
                      components={k: m.mean for k, m in components.items()},
                      next_minibatch=next_minibatch,
                      meter_state=meters_state(meters, components, seconds)
                      if next_minibatch is not None else None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, criterion, device: torch.device = torch.device("cpu"),
             num_classes: Optional[int] = None, progress: Optional[ProgressFn] = None,
             print_freq: int = 0) -> EpochStats:
    """Loss, top-1 and top-5 over a loader (and the confusion matrix when ``num_classes`` is set)."""
    model.eval()
    meters = {"loss": Meter(), "top1": Meter(), "top5": Meter()}
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long) if num_classes else None
    start = time.perf_counter()
    steps = len(loader)
    for i, (inputs, target) in enumerate(loader):
        inputs, target = inputs.to(device), target.to(device)
        output = model(inputs)
        n = target.size(0)
        c1, c5 = correct_topk(output, target)
        meters["loss"].add(float(criterion(output, target)), n)
        meters["top1"].add(100.0 * c1 / n, n)
        meters["top5"].add(100.0 * c5 / n, n)
        if confusion is not None:
            idx = target.cpu() * num_classes + output.argmax(1).cpu()
            confusion += torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)
        if progress is not None and print_freq and ((i + 1) % print_freq == 0 or i + 1 == steps):
            progress(i + 1, steps, {"Loss": meters["loss"].mean, "Top1": meters["top1"].mean,
                                    "Top5": meters["top5"].mean})
    return EpochStats(loss=meters["loss"].mean, overall_loss=meters["loss"].mean,
                      top1=meters["top1"].mean, top5=meters["top5"].mean,
                      samples=meters["loss"].count, seconds=time.perf_counter() - start,
                      confusion=confusion)


@torch.no_grad()
def predictions(model: nn.Module, loader: Iterable, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Predicted class of every sample, in loader order (for agreement between two models)."""
    model.eval()
    return torch.cat([model(x.to(device)).argmax(1).cpu() for x, _ in loader])
