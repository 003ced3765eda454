"""From a sensitivity analysis to a schedule: per-layer ratios under an accuracy budget, as YAML.

``ratios_from_sensitivity`` walks each weight's levels upwards and keeps the last one within the
budget; ``ratios_to_schedule`` writes the one-shot pruning schedule for those ratios with the
pruner the analysis measured (``SparsityLevelParameterPruner`` or the L1-ranked structure pruner).
"""
from __future__ import annotations

import inspect
import re
from numbers import Real
from typing import Dict, List, Mapping, Optional, Tuple

import pandas as pd
from torch import nn

from ..errors import suggest
from ..masks import normalize_name
from ..registry import PRUNERS
from .checks import (DECIMALS, DEFAULT_PRUNER, SensitivityError, check_frame, check_group,
                     check_level, check_metric, group_type_for)


def ratios_from_sensitivity(df: pd.DataFrame, max_drop: float, metric: str = "top1") -> Dict[str, float]:
    """{parameter: the largest tested sparsity reached before ``metric`` first falls out of budget}.

    The budget is ``max_drop`` points from the parameter's dense (sparsity 0) value: lower for
    top1/top5, higher for loss. Levels are walked upwards and the walk stops at the first level
    out of budget, so a noisy recovery at a higher level is not taken. A parameter whose first
    pruned level is already out of budget gets 0.0 (do not prune it).
    """
    metric = check_metric(metric)
    if isinstance(max_drop, bool) or not isinstance(max_drop, Real) or not float(max_drop) >= 0:
        raise SensitivityError(f"max_drop must be a number >= 0 (points of {metric}); got {max_drop!r}")
    df = check_frame(df)
    ratios: Dict[str, float] = {}
    for name in pd.unique(df["parameter"]):
        part = df[df["parameter"] == name].sort_values("sparsity")
        dense = part[part["sparsity"].abs() < 1e-9]
        if dense.empty:
            raise SensitivityError(f"'{name}' has no dense measurement (sparsity 0.0) to compare with; "
                                   f"include 0.0 in the sparsity levels")
        base = float(dense[metric].iloc[0])
        chosen = 0.0
        for s, v in zip(part["sparsity"], part[metric]):
            drop = (float(v) - base) if metric == "loss" else (base - float(v))
            if not drop <= max_drop + 1e-9:   # NaN counts as out of budget
                break
            chosen = round(float(s), DECIMALS)
        ratios[str(name)] = chosen
    return ratios


def _quote(name: str) -> str:
    """A weight name as a YAML scalar: plain when it is a dotted identifier, else single-quoted."""
    name = str(name)
    if "." in name and re.fullmatch(r"[A-Za-z_][\w.]*", name):   # never a YAML keyword
        return name
    return "'" + name.replace("'", "''") + "'"


def _number(x: float) -> str:
    return repr(round(float(x), DECIMALS))


def ratios_to_schedule(ratios: Mapping[str, float], group: str, pruner_class: Optional[str] = None,
                       model: Optional[nn.Module] = None, epoch: int = 0) -> str:
    """A YAML schedule that prunes each weight one-shot, at ``epoch``, to its ratio.

    element: one ``SparsityLevelParameterPruner`` with ``levels:``. filter/channel: one
    ``L1RankedStructureParameterPruner`` (or ``pruner_class``) per distinct (group type, ratio),
    with ``group_type``, ``desired_sparsity`` and ``weights``. For ``filter``, pass ``model`` so
    Linear weights get group type ``Cols`` (output neurons); without it every weight is written as
    ``Filters``. Ratios of 0 are left out. Fine-tuning, thinning and LR policies are up to you.
    """
    group = check_group(group)
    if not isinstance(ratios, Mapping):
        raise SensitivityError(f"ratios must map weight names to sparsities; got {ratios!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise SensitivityError(f"epoch must be an integer >= 0; got {epoch!r}")
    checked = {str(n): check_level(r, f"ratio of '{n}'") for n, r in ratios.items()}
    pruned = {n: r for n, r in checked.items() if r > 0}
    if not pruned:
        raise SensitivityError("every ratio is 0: nothing to prune (allow a larger max_drop)")
    cls_name = pruner_class or DEFAULT_PRUNER[group]
    if cls_name not in PRUNERS:
        raise SensitivityError(PRUNERS.unknown_message(cls_name))
    needs = ("levels",) if group == "element" else ("group_type", "desired_sparsity", "weights")
    accepted = inspect.signature(PRUNERS.get(cls_name)).parameters
    lacking = [a for a in needs if a not in accepted]
    if lacking:
        raise SensitivityError(f"pruner_class '{cls_name}' does not take {', '.join(lacking)}, which a "
                               f"'{group}' schedule sets; use {DEFAULT_PRUNER[group]}")
    shapes: Dict[str, Tuple[int, ...]] = {}
    if model is not None:
        params = dict(model.named_parameters())
        by_plain = {normalize_name(n): p for n, p in params.items()}
        for n in pruned:
            p = params.get(n, by_plain.get(normalize_name(n)))
            if p is None:
                raise SensitivityError(f"'{n}' is not a parameter of {type(model).__name__}"
                                       f"{suggest(n, list(params), n=3)}")
            shapes[n] = tuple(p.shape)

    lines = ["# Generated by compressor.sensitivity.ratios_to_schedule: one-shot pruning to per-layer",
             "# ratios chosen from a sensitivity analysis (Li et al. 2017). Fine-tune afterwards; add",
             "# thinning and learning-rate policies as needed.",
             "version: 1", "pruners:"]
    names: List[str] = []
    if group == "element":
        names.append("sensitivity_pruner")
        lines += ["  sensitivity_pruner:", f"    class: {cls_name}", "    levels:"]
        lines += [f"      {_quote(n)}: {_number(r)}" for n, r in pruned.items()]
    else:
        buckets: Dict[Tuple[str, float], List[str]] = {}
        for n, r in pruned.items():
            gt = group_type_for(group, shapes[n]) if n in shapes else \
                ("Filters" if group == "filter" else "Channels")
            buckets.setdefault((gt, r), []).append(n)
        for (gt, r), weights in buckets.items():   # in the order of their first weight
            pname = f"{gt.lower()}_pruner_{round(r * 100, 6):g}".replace(".", "_")
            names.append(pname)
            lines += [f"  {pname}:", f"    class: {cls_name}", f"    group_type: {gt}",
                      f"    desired_sparsity: {_number(r)}",
                      "    weights: [" + ", ".join(_quote(w) for w in weights) + "]"]
    lines.append("policies:")
    lines += [f"  - pruner: {{instance_name: {n}}}\n    epochs: [{epoch}]" for n in names]
    return "\n".join(lines) + "\n"
