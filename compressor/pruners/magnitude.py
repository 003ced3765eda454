"""Unstructured (element-wise) magnitude pruners under Distiller's class names and parameters.

- ``MagnitudeParameterPruner``: a fixed threshold per weight.
- ``SensitivityPruner``: Han et al.'s threshold = sensitivity x std of the layer's weights.
- ``SparsityLevelParameterPruner`` (alias ``LevelPruner``): an exact target sparsity per weight.
- ``AutomatedGradualPruner``: Zhu & Gupta's cubic schedule, the same target for every listed weight.
- ``GlobalAutomatedGradualPruner``: the same schedule, one magnitude ranking across all listed weights.

Dict-valued arguments (``thresholds``, ``sensitivities``, ``levels``) arrive with their keys already
resolved to parameter names by the builder (exact names, globs, regexes and the ``'*'`` default).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional

import torch

from ..errors import ComponentArgError
from ..registry import PRUNERS
from ..schedules import agp_sparsity
from .base import PruneContext, Pruner, count_to_prune, level_mask, threshold_mask


def check_number(key: str, value, low: float = 0.0, high: Optional[float] = None,
                 high_open: bool = True, low_open: bool = False) -> float:
    """``value`` as a float in [low, high) (the ends open or closed as asked); else a
    ComponentArgError for ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ComponentArgError(key, f"must be a number; got {value!r}")
    bad_high = high is not None and (value >= high if high_open else value > high)
    bad_low = value <= low if low_open else value < low
    if bad_low or bad_high:
        if high is None:
            raise ComponentArgError(key, f"must be {'>' if low_open else '>='} {low}; got {value}")
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ComponentArgError(key, f"must be in {interval}; got {value}")
    return float(value)


def check_sparsity(key: str, value) -> float:
    return check_number(key, value, 0.0, 1.0)


class _PerNamePruner(Pruner):
    """A pruner configured by a {param_name: value} dict."""
    arg_name = ""

    def __init__(self, name: str, values: Mapping[str, float]):
        super().__init__(name)
        if not isinstance(values, Mapping):
            raise ComponentArgError(self.arg_name, f"must map weight names to numbers; got {values!r}")
        self.values = {k: self.check_value(f"{self.arg_name}.{k}", v) for k, v in values.items()}
        # A directly built pruner may keep Distiller's '*' key ("every other parameter"); the
        # builder resolves it to names before construction, so this only serves ported code.
        self.default: Optional[float] = self.values.pop("*", None)

    def check_value(self, key: str, value) -> float:
        return check_number(key, value)

    @property
    def param_names(self) -> List[str]:
        return list(self.values)

    def bind(self, names) -> None:
        """Give every name in ``names`` without an entry of its own the ``'*'`` value, if any."""
        if self.default is not None:
            for name in names:
                self.values.setdefault(name, self.default)

    def masks(self, params: Mapping[str, torch.Tensor], ctx: PruneContext) -> Dict[str, torch.Tensor]:
        self.bind(params)   # with '*', every tensor passed in is pruned, as in Distiller
        return super().masks({n: p for n, p in params.items() if n in self.values}, ctx)


@PRUNERS.register
class MagnitudeParameterPruner(_PerNamePruner):
    """Prune every element whose magnitude is at or below the weight's threshold."""
    arg_name = "thresholds"

    def __init__(self, name: str, thresholds: Mapping[str, float]):
        super().__init__(name, thresholds)

    def tensor_mask(self, name, weight, ctx):
        return threshold_mask(weight, self.values[name])


@PRUNERS.register
class SensitivityPruner(_PerNamePruner):
    """Han et al.: threshold = sensitivity x std(weights), the std taken at the first pruning step.

    Keeping the first std (as Han et al. and Distiller do) makes later steps trap more weights, since
    the surviving weights are fine-tuned around a fixed threshold. Unlike Distiller, the cached std is
    part of the state, so a resumed run keeps the same thresholds.
    """
    arg_name = "sensitivities"

    def __init__(self, name: str, sensitivities: Mapping[str, float]):
        super().__init__(name, sensitivities)
        self.stds: Dict[str, float] = {}

    def tensor_mask(self, name, weight, ctx):
        if name not in self.stds:
            self.stds[name] = float(weight.float().std()) if weight.numel() > 1 else 0.0
        return threshold_mask(weight, self.values[name] * self.stds[name])

    def state_dict(self):
        return {"stds": dict(self.stds)}

    def load_state_dict(self, state):
        self.stds = {k: float(v) for k, v in state.get("stds", {}).items()}


@PRUNERS.register(aliases=("LevelPruner",))
class SparsityLevelParameterPruner(_PerNamePruner):
    """Prune each weight to exactly its level (a fraction in [0, 1)); level 0 leaves it alone."""
    arg_name = "levels"

    def __init__(self, name: str, levels: Mapping[str, float]):
        super().__init__(name, levels)

    def check_value(self, key, value):
        return check_sparsity(key, value)

    def tensor_mask(self, name, weight, ctx):
        level = ctx.options.levels.get(name, self.values[name])
        return level_mask(weight, level) if level > 0 else None


class _AGPBase(Pruner):
    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, weights):
        super().__init__(name)
        self.initial_sparsity = check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = check_sparsity("final_sparsity", final_sparsity)
        if self.final_sparsity < self.initial_sparsity:
            raise ComponentArgError("final_sparsity", f"({final_sparsity}) must be >= "
                                    f"initial_sparsity ({initial_sparsity})")
        if isinstance(weights, str):
            weights = [weights]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ComponentArgError("weights", f"must be a non-empty list of weight names; got {weights!r}")
        self.weights = list(weights)

    @property
    def param_names(self):
        return self.weights

    def target(self, ctx: PruneContext) -> float:
        return agp_sparsity(self.initial_sparsity, self.final_sparsity, ctx.event, ctx.n_events)


@PRUNERS.register
class AutomatedGradualPruner(_AGPBase):
    """AGP: at the k-th of n pruning steps every listed weight is pruned to
    s_f + (s_i - s_f) * (1 - k/(n-1))**3 by magnitude, reaching ``final_sparsity`` at the last step."""

    def tensor_mask(self, name, weight, ctx):
        return level_mask(weight, self.target(ctx))


@PRUNERS.register
class GlobalAutomatedGradualPruner(_AGPBase):
    """AGP with one magnitude ranking across all listed weights (not in Distiller).

    The total sparsity of the listed weights follows the AGP target exactly; each layer's share is
    decided by magnitude. So that no layer is emptied, the ``min_density`` fraction (at least one
    weight) of each layer's largest weights is never pruned.
    """

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, weights,
                 min_density: float = 0.01):
        super().__init__(name, initial_sparsity, final_sparsity, weights)
        self.min_density = check_number("min_density", min_density, 0.0, 1.0, high_open=False)

    def masks(self, params, ctx):
        scores, sizes = [], []
        for name in self.weights:
            w = params[name].detach().abs().flatten().float()
            keep = max(1, math.ceil(self.min_density * w.numel()))
            protected = torch.topk(w, keep).indices
            w = w.clone()
            w[protected] = math.inf
            scores.append(w)
            sizes.append(w.numel())
        flat = torch.cat(scores)
        total = flat.numel()
        protected_count = int(torch.isinf(flat).sum())
        k = min(count_to_prune(self.target(ctx), total), total - protected_count)
        keep = torch.ones(total, dtype=torch.bool, device=flat.device)
        if k > 0:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        return {name: part.view_as(params[name])
                for name, part in zip(self.weights, torch.split(keep, sizes))}
