"""Learning-rate schedulers a schedule file can name: all of ``torch.optim.lr_scheduler`` plus
Distiller's ``PolynomialLR`` (``T_max``, ``power``) and ``MultiStepMultiGammaLR``.

The builder passes ``optimizer=`` itself; the YAML gives the other constructor arguments.
``resume_position`` and ``load_scheduler_state`` are the two ways a run's learning-rate position is
restored (a schedule rebuilt for a resumed run; a saved scheduler state), both through the
schedulers' public ``state_dict``/``load_state_dict``.
"""
from __future__ import annotations

import inspect
import math
import re
from bisect import bisect_right
from typing import Any, Dict, Mapping, Sequence, Tuple

import torch
from torch.optim import lr_scheduler as torch_lr

from .errors import ComponentArgError, short
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


# What each scheduler's numeric arguments must be, so a schedule is refused when it is loaded
# rather than when the scheduler is first stepped (torch checks most of these only then, after a
# whole epoch). kind: "int" (an integer >= low) or "num" (a finite number >= low, or > low when
# strict); "nums"/"ints" are lists of those. Arguments not listed are left to the constructor.
_INT, _NUM = "int", "num"
ARG_RULES: Dict[str, Dict[str, Tuple[str, float, bool]]] = {
    "StepLR": {"step_size": (_INT, 1, False), "gamma": (_NUM, 0, True)},
    "MultiStepLR": {"milestones": ("ints", 0, False), "gamma": (_NUM, 0, True)},
    "ExponentialLR": {"gamma": (_NUM, 0, True)},
    "CosineAnnealingLR": {"T_max": (_INT, 1, False), "eta_min": (_NUM, 0, False)},
    "CosineAnnealingWarmRestarts": {"T_0": (_INT, 1, False), "T_mult": (_INT, 1, False),
                                    "eta_min": (_NUM, 0, False)},
    "PolynomialLR": {"T_max": (_INT, 1, False), "total_iters": (_INT, 1, False),
                     "power": (_NUM, 0, False)},
    "MultiStepMultiGammaLR": {"milestones": ("ints", 0, False), "gammas": ("nums", 0, True)},
    "ReduceLROnPlateau": {"factor": (_NUM, 0, True), "patience": (_INT, 0, False),
                          "threshold": (_NUM, 0, False), "cooldown": (_INT, 0, False),
                          "min_lr": (_NUM, 0, False), "eps": (_NUM, 0, False)},
    "OneCycleLR": {"max_lr": (_NUM, 0, True), "total_steps": (_INT, 1, False),
                   "epochs": (_INT, 1, False), "steps_per_epoch": (_INT, 1, False),
                   "pct_start": (_NUM, 0, False), "div_factor": (_NUM, 0, True),
                   "final_div_factor": (_NUM, 0, True), "base_momentum": (_NUM, 0, False),
                   "max_momentum": (_NUM, 0, False)},
    "CyclicLR": {"base_lr": (_NUM, 0, False), "max_lr": (_NUM, 0, True),
                 "step_size_up": (_INT, 1, False), "step_size_down": (_INT, 1, False),
                 "gamma": (_NUM, 0, True), "base_momentum": (_NUM, 0, False),
                 "max_momentum": (_NUM, 0, False)},
    "LinearLR": {"start_factor": (_NUM, 0, True), "end_factor": (_NUM, 0, False),
                 "total_iters": (_INT, 1, False)},
    "ConstantLR": {"factor": (_NUM, 0, False), "total_iters": (_INT, 1, False)},
}
_NUMBER_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _check_value(key: str, value: Any, kind: str, low: float, strict: bool) -> None:
    if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
        text = value.strip().lower()
        if "e" not in text:
            raise ComponentArgError(key, f"{value!r} is quoted text, not a number; write it "
                                         f"unquoted: {text}")
        # YAML 1.1 reads 5e-1 or 1e3 (no dot in the mantissa) as text, not a number.
        mantissa, exponent = text.split("e", 1)
        fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"
        raise ComponentArgError(key, f"{value!r} is text, not a number (YAML 1.1 reads an "
                                     f"exponent without a dot as text): write {fixed}")
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ComponentArgError(key, f"must be an integer >= {int(low)}; got {short(value, 40)}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ComponentArgError(key, f"must be a number; got {short(value, 40)}")
    if not math.isfinite(value):
        raise ComponentArgError(key, f"must be a finite number; got {value}")
    if value < low or (strict and value == low):
        raise ComponentArgError(key, f"must be {'>' if strict else '>='} {low:g}; got {value}")


def check_args(class_name: str, args: Mapping[str, Any]) -> None:
    """Raise ``ComponentArgError(key, reason)`` for a numeric argument of a known LR scheduler
    that is of the wrong type, not finite or out of range (see ``ARG_RULES``)."""
    rules = ARG_RULES.get(class_name, {})
    for key, value in args.items():
        if key not in rules:
            continue
        kind, low, strict = rules[key]
        if kind in ("ints", "nums"):
            if not isinstance(value, (list, tuple)):
                raise ComponentArgError(key, f"must be a list of numbers; got {short(value, 40)}")
            for i, item in enumerate(value):
                _check_value(f"{key}[{i}]", item, kind[:-1], low, strict)
        elif key in ("max_lr", "base_lr", "min_lr") and isinstance(value, (list, tuple)):
            for i, item in enumerate(value):   # one per param group
                _check_value(f"{key}[{i}]", item, kind, low, strict)
        else:
            _check_value(key, value, kind, low, strict)


def steps_allowed(class_name: str, args: Mapping[str, Any]):
    """How many ``step()`` calls the scheduler allows after construction, when it is bounded
    (OneCycleLR: ``total_steps``, or ``epochs * steps_per_epoch``); None otherwise."""
    if class_name != "OneCycleLR":
        return None
    if isinstance(args.get("total_steps"), int):
        return args["total_steps"]
    if isinstance(args.get("epochs"), int) and isinstance(args.get("steps_per_epoch"), int):
        return args["epochs"] * args["steps_per_epoch"]
    return None


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
