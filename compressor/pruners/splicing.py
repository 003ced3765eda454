"""Dynamic network surgery (Guo et al., 2016) as Distiller's ``SplicingPruner``.

Weights far below a threshold are cut, weights far above it are spliced back, and those in between
keep their previous mask. It only makes sense when the dense weights keep learning: schedule it with
``mask_on_forward_only: True`` (and usually ``use_double_copies: True``).
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch

from ..errors import ComponentArgError
from ..registry import PRUNERS
from .magnitude import _PerNamePruner, check_number


@PRUNERS.register
class SplicingPruner(_PerNamePruner):
    """base = mean|w| + s*std|w| (taken once); |w| < low*base -> cut, |w| >= hi*base -> keep.

    A non-zero ``sensitivity_multiplier`` grows s linearly with the epochs since the policy started:
    s * (1 + multiplier * (epoch - starting_epoch)), as in Distiller.
    """
    arg_name = "sensitivities"
    can_regrow = True

    def __init__(self, name: str, sensitivities: Mapping[str, float], low_thresh_mult: float,
                 hi_thresh_mult: float, sensitivity_multiplier: float = 0.0):
        super().__init__(name, sensitivities)
        self.low = check_number("low_thresh_mult", low_thresh_mult)
        self.hi = check_number("hi_thresh_mult", hi_thresh_mult)
        if self.hi < self.low:
            raise ComponentArgError("hi_thresh_mult", f"({hi_thresh_mult}) must be >= "
                                    f"low_thresh_mult ({low_thresh_mult})")
        self.multiplier = check_number("sensitivity_multiplier", sensitivity_multiplier)
        self.stats: Dict[str, tuple] = {}

    def tensor_mask(self, name, weight, ctx):
        a = weight.abs().float()
        if name not in self.stats:
            self.stats[name] = (float(a.mean()), float(a.std()) if a.numel() > 1 else 0.0)
        mean, std = self.stats[name]
        s = self.values[name] * (1.0 + self.multiplier * (ctx.epoch - ctx.starting_epoch))
        base = mean + s * std
        old = ctx.current.get(name)
        mask = torch.ones_like(a, dtype=torch.bool) if old is None else old.bool().clone()
        mask[a < self.low * base] = False
        mask[a >= self.hi * base] = True
        return mask

    def state_dict(self):
        return {"stats": {k: list(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state):
        self.stats = {k: tuple(float(x) for x in v) for k, v in state.get("stats", {}).items()}
