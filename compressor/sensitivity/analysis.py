"""Per-layer sensitivity analysis: prune one weight at a time to each level, evaluate, restore.

Each weight is pruned on its own, one-shot, with no fine-tuning, and written back exactly before the
next measurement (Li et al., "Pruning Filters for Efficient ConvNets", 2017). Units are counted
and ranked as the schedule's pruners do (``level_mask``; ``RankedStructurePruner`` with the L1
criterion), so a ratio read off the result means the same in a schedule. Nothing is deep-copied:
only the few tensors being pruned are saved, under ``torch.no_grad``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from torch import nn

from ..errors import listing, suggest
from ..masks import normalize_name, unwrap
from ..pruners.base import PruneContext, level_mask
from ..pruners.coupling import dependents as find_dependents
from ..pruners.criteria import L1Magnitude
from ..pruners.granularity import Granularity
from ..pruners.structured import FixedTarget, RankedStructurePruner
from ..training import evaluate
from .checks import (COLUMNS, METRICS, SensitivityError, check_group, check_sparsities,
                     group_type_for)

Result = Tuple[float, float, float]
TestFn = Callable[[nn.Module], object]


def _prunable(model: nn.Module) -> Dict[str, nn.Parameter]:
    """Every convolution and Linear weight of rank 2 or 4, in module order (shared weights once)."""
    names = {}
    for n, p in model.named_parameters():
        names.setdefault(id(p), n)
    out: Dict[str, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            w = getattr(module, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() in (2, 4) and id(w) in names:
                out.setdefault(names[id(w)], w)
    return out


def _resolve(model: nn.Module, params: Optional[Sequence[str]]) -> Dict[str, nn.Parameter]:
    """{real parameter name: parameter} for ``params`` (default: every conv/Linear weight)."""
    prunable = _prunable(model)
    if params is None:
        if not prunable:
            raise SensitivityError(f"{type(model).__name__} has no prunable weights: sensitivity "
                                   f"analysis prunes convolution and Linear weights of rank 2 or 4")
        return prunable
    if isinstance(params, str):
        params = [params]
    all_params = dict(model.named_parameters())
    by_plain = {normalize_name(n): n for n in all_params}
    candidates = list(prunable) or [n for n, p in all_params.items() if p.dim() in (2, 4)]
    out: Dict[str, nn.Parameter] = {}
    for name in params:
        real = name if name in all_params else by_plain.get(normalize_name(str(name)))
        if real is None:
            near = suggest(str(name), list(all_params), n=3)
            raise SensitivityError(f"'{name}' is not a parameter of {type(model).__name__}{near}; "
                                   f"prunable weights: {listing(candidates) if candidates else 'none'}")
        p = all_params[real]
        if p.dim() not in (2, 4):
            raise SensitivityError(f"'{real}' has shape {tuple(p.shape)} (rank {p.dim()}): sensitivity "
                                   f"analysis prunes weights of rank 2 or 4; prunable weights: "
                                   f"{listing(candidates) if candidates else 'none'}")
        out.setdefault(real, p)
    if not out:
        raise SensitivityError("params is empty: name at least one weight, or pass None for every "
                               "convolution and Linear weight")
    return out


def _units(group: str, shape: Sequence[int]) -> int:
    return Granularity(group_type_for(group, shape)).n_groups(shape)


def _unit_word(group: str, shape) -> str:
    if group == "filter":
        return "filter" if len(shape) >= 3 else "output neuron"
    return "input channel" if len(shape) >= 3 else "input feature"


# -- the analysis -----------------------------------------------------------------------------
def _as_result(value) -> Result:
    """(top1, top5, loss) from a tuple or from anything with those attributes (``EpochStats``)."""
    if all(hasattr(value, a) for a in METRICS):
        value = tuple(getattr(value, a) for a in METRICS)
    try:
        top1, top5, loss = value
        return float(top1), float(top5), float(loss)
    except (TypeError, ValueError):
        raise SensitivityError(f"test_fn must return (top1, top5, loss) or an object with top1, top5 "
                               f"and loss (such as training.evaluate's EpochStats); got {value!r}") from None


def _masks(name: str, weight: torch.Tensor, group: str, sparsity: float,
           deps: Sequence[str]) -> Dict[str, torch.Tensor]:
    """{tensor name: keep mask} pruning ``weight`` (and its dependents) to ``sparsity``."""
    if group == "element":
        return {name: level_mask(weight, sparsity)}
    granularity = Granularity(group_type_for(group, weight.shape))
    pruner = RankedStructurePruner("sensitivity", [name], L1Magnitude(), granularity,
                                   FixedTarget(sparsity))
    keep = pruner.select(pruner.units[0], {name: weight}, PruneContext(epoch=0), sparsity,
                         granularity.n_groups(weight.shape))
    if keep is None:
        return {}
    out = {name: granularity.expand(keep, weight.shape).to(weight.device)}
    for d in deps:
        out[d] = keep.to(weight.device)
    return out


def _dependents(model: nn.Module, targets: Mapping[str, nn.Parameter]) -> Dict[str, List[str]]:
    """{weight: [bias, following batch-norm weight and bias]}, named as ``model`` names them.

    The graph is read from the unwrapped model (DataParallel's ``module.`` is not in it), so names
    are matched through the parameters' identities.
    """
    inner = unwrap(model)
    outer_name = {}
    for n, p in model.named_parameters():
        outer_name.setdefault(id(p), n)
    inner_params = dict(inner.named_parameters())
    inner_name = {}
    for n, p in inner_params.items():
        inner_name.setdefault(id(p), n)
    wanted = {inner_name[id(p)]: name for name, p in targets.items() if id(p) in inner_name}
    found = find_dependents(inner, list(wanted), with_batchnorm=True)
    return {wanted[w]: [outer_name[id(inner_params[d])] for d in ds] for w, ds in found.items()}


@torch.no_grad()
def perform_sensitivity_analysis(model: nn.Module, params: Optional[Sequence[str]],
                                 sparsities: Sequence[float], test_fn: TestFn,
                                 group: str = "element", *, dependents: bool = True,
                                 progress: Optional[Callable[[str, float, Result], None]] = None
                                 ) -> pd.DataFrame:
    """Prune each weight alone to each level, evaluate, restore; one row per (weight, level).

    ``params``: weight names (with or without DataParallel's ``module.``), or None for every
    convolution and Linear weight of rank 2 or 4. ``sparsities``: levels in [0, 1), measured in the
    given order. ``test_fn(model)`` returns ``(top1, top5, loss)`` or an ``EpochStats``; it must
    evaluate in eval mode and not change the weights, and should be deterministic: when a level
    prunes nothing (level 0, or fewer than one structure) the dense result, measured once, is
    reused. ``group``: ``'element'``, ``'filter'`` or ``'channel'`` (see the module docstring); with
    None ``params``, weights that the group cannot cut into two or more units (a first convolution's
    single input channel) are skipped. ``dependents`` (filter only): also zero the pruned units'
    bias entries and following batch-norm gamma/beta. ``progress(parameter, sparsity, result)`` is
    called after each measurement. Returns a DataFrame with columns ``parameter, sparsity, top1,
    top5, loss``. The weights (and the modules' train/eval flags) are restored exactly, also when
    ``test_fn`` raises.
    """
    group = check_group(group)
    levels = check_sparsities(sparsities)
    if not callable(test_fn):
        raise SensitivityError(f"test_fn must be a function model -> (top1, top5, loss); got {test_fn!r}")
    explicit = params is not None
    targets = _resolve(model, params)
    if group != "element":
        fits = {}
        for name, w in targets.items():
            if _units(group, w.shape) >= 2:
                fits[name] = w
            elif explicit:
                raise SensitivityError(
                    f"group '{group}' cannot rank '{name}' of shape {tuple(w.shape)}: it has a single "
                    f"{_unit_word(group, w.shape)}; use group 'element' for it, or leave it out")
        if not fits:
            raise SensitivityError(
                f"group '{group}' fits none of the weights: each has a single "
                f"{'output unit' if group == 'filter' else 'input channel'} "
                f"({', '.join(f'{n} {tuple(w.shape)}' for n, w in targets.items())})")
        targets = fits

    all_params = dict(model.named_parameters())
    deps: Dict[str, List[str]] = {}
    if group == "filter" and dependents:
        deps = _dependents(model, targets)
    modes = [(m, m.training) for m in model.modules()]
    dense: Optional[Result] = None
    rows = []
    try:
        for name, weight in targets.items():
            names = [name] + [d for d in deps.get(name, []) if d in all_params]
            saved = {n: all_params[n].detach().clone() for n in names}
            try:
                for s in levels:
                    masks = _masks(name, saved[name], group, s, deps.get(name, [])) if s > 0 else {}
                    masks = {n: m for n, m in masks.items() if not bool(m.all())}
                    if masks:
                        for n, m in masks.items():
                            all_params[n].masked_fill_(~m.bool(), 0)
                        result = _as_result(test_fn(model))
                        for n in masks:
                            all_params[n].copy_(saved[n])
                    else:   # nothing pruned: the dense network, measured once
                        if dense is None:
                            dense = _as_result(test_fn(model))
                        result = dense
                    rows.append((name, s) + result)
                    if progress is not None:
                        progress(name, s, result)
            finally:
                for n in names:
                    all_params[n].copy_(saved[n])
    finally:
        for m, training in modes:
            m.training = training
    return pd.DataFrame(rows, columns=list(COLUMNS))


def evaluator(loader, criterion: Optional[nn.Module] = None,
              device: Union[str, torch.device] = "cpu") -> Callable[[nn.Module], Result]:
    """A ``test_fn`` that runs ``training.evaluate`` over ``loader`` (cross-entropy by default)."""
    criterion = nn.CrossEntropyLoss() if criterion is None else criterion
    device = torch.device(device)

    def test_fn(model: nn.Module) -> Result:
        stats = evaluate(model, loader, criterion, device)
        return stats.top1, stats.top5, stats.loss
    return test_fn
