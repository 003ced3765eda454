"""Learning-rate schedulers a schedule file can name: all of ``torch.optim.lr_scheduler`` plus
Distiller's ``PolynomialLR`` (``T_max``, ``power``) and ``MultiStepMultiGammaLR``.

The builder passes ``optimizer=`` itself; the YAML gives the other constructor arguments.
``resume_position`` and ``load_scheduler_state`` are the two ways a run's learning-rate position is
restored (a schedule rebuilt for a resumed run; a saved scheduler state), both through the
schedulers' public ``state_dict``/``load_state_dict``.
"""
from __future__ import annotations

import inspect
from bisect import bisect_right
from typing import Mapping, Sequence

import torch
from torch.optim import lr_scheduler as torch_lr

from .errors import ComponentArgError
from .registry import LR_SCHEDULERS

# Not nameable from YAML: base classes, ours-instead-of-torch's PolynomialLR, and schedulers whose
# arguments are Python callables or other scheduler objects, which a YAML file cannot hold.
_SKIP = {"LRScheduler", "_LRScheduler", "PolynomialLR", "SequentialLR", "ChainedScheduler",
         "LambdaLR", "MultiplicativeLR"}

for _name, _cls in vars(torch_lr).items():
    if (inspect.isclass(_cls) and not _name.startswith("_") and _name not in _SKIP
            and (issubclass(_cls, torch_lr.LRScheduler) or _cls is torch_lr.ReduceLROnPlateau)):
        LR_SCHEDULERS.register(_cls, name=_name)


@LR_SCHEDULERS.register
class PolynomialLR(torch_lr.LRScheduler):
    """lr = base_lr * (1 - epoch / T_max) ** power, held at 0 after T_max.

    Accepts Distiller's ``T_max`` or PyTorch's ``total_iters`` (one of them) for the same thing.
    """

    def __init__(self, optimizer, T_max: int = None, power: float = 1.0, total_iters: int = None,
                 last_epoch: int = -1):
        if (T_max is None) == (total_iters is None):
            raise ComponentArgError("T_max", "give exactly one of T_max (Distiller) or total_iters (PyTorch)")
        self.T_max = T_max if T_max is not None else total_iters
        if isinstance(self.T_max, bool) or not isinstance(self.T_max, int) or self.T_max < 1:
            raise ComponentArgError("T_max", f"must be an integer >= 1; got {self.T_max!r}")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or power < 0:
            raise ComponentArgError("power", f"must be a number >= 0; got {power!r}")
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        frac = min(self.last_epoch, self.T_max) / self.T_max
        return [base * (1.0 - frac) ** self.power for base in self.base_lrs]


@LR_SCHEDULERS.register
class MultiStepMultiGammaLR(torch_lr.LRScheduler):
    """Like MultiStepLR, but each milestone has its own gamma: after milestone i the lr is
    base_lr * gammas[0] * ... * gammas[i]."""

    def __init__(self, optimizer, milestones: Sequence[int], gammas: Sequence[float], last_epoch: int = -1):
        if not isinstance(milestones, (list, tuple)) or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in milestones):
            raise ComponentArgError("milestones", f"must be a list of integer epochs; got {milestones!r}")
        if list(milestones) != sorted(set(milestones)):
            raise ComponentArgError("milestones", f"must be strictly increasing; got {list(milestones)}")
        if not isinstance(gammas, (list, tuple)) or len(gammas) != len(milestones):
            raise ComponentArgError("gammas", f"must be a list with one gamma per milestone "
                                    f"({len(milestones)}); got {gammas!r}")
        self.milestones = list(milestones)
        # multiplicative_gammas[i]: the factor in force after i milestones (Distiller's name).
        self.multiplicative_gammas = [1.0]
        for g in gammas:
            if isinstance(g, bool) or not isinstance(g, (int, float)):
                raise ComponentArgError("gammas", f"must be numbers; got {g!r}")
            self.multiplicative_gammas.append(self.multiplicative_gammas[-1] * float(g))
        super().__init__(optimizer, last_epoch)

    @property
    def multipliers(self) -> list:
        """The former name of ``multiplicative_gammas``."""
        return self.multiplicative_gammas

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        if "multipliers" in state:   # saved before the attribute took Distiller's name
            state.setdefault("multiplicative_gammas", state.pop("multipliers"))
        super().load_state_dict(state)

    def get_lr(self):
        idx = bisect_right(self.milestones, self.last_epoch)
        return [base * self.multiplicative_gammas[idx] for base in self.base_lrs]


def current_lrs(optimizer: torch.optim.Optimizer) -> list:
    return [group["lr"] for group in optimizer.param_groups]


def resume_position(scheduler, steps_done: int, lrs: Sequence[float]) -> None:
    """Put a freshly built ``scheduler`` where a run that took ``steps_done`` steps left it.

    PyTorch schedulers take their first step when constructed, which sets the optimizer to the
    schedule's starting lr. A resumed run's optimizer already holds the lr it had reached
    (``lrs``, one per param group): it is put back, and the scheduler's step count, base lrs
    (each group's ``initial_lr``) and last lr are set to match, so its next ``step()`` continues
    the uninterrupted schedule.
    """
    optimizer = scheduler.optimizer
    state = scheduler.state_dict()
    if "last_epoch" in state:
        state["last_epoch"] = steps_done
    if "base_lrs" in state:
        state["base_lrs"] = [g["initial_lr"] for g in optimizer.param_groups]
    state["_last_lr"] = list(lrs)    # torch's own state key for get_last_lr()
    scheduler.load_state_dict(state)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


def load_scheduler_state(scheduler, state: Mapping) -> None:
    """``scheduler.load_state_dict(state)``, and the optimizer set to the lr the state had reached.

    ``load_state_dict`` alone restores the scheduler's position but leaves the optimizer's lr as
    it was; a resumed run must also train on the saved lr.
    """
    scheduler.load_state_dict(state)
    optimizer = getattr(scheduler, "optimizer", None)
    last = scheduler.get_last_lr() if hasattr(scheduler, "get_last_lr") else None
    if optimizer is not None and last is not None:
        for group, lr in zip(optimizer.param_groups, last):
            group["lr"] = lr
