"""Per-layer sensitivity analysis (Li et al., "Pruning Filters for Efficient ConvNets", 2017).

Each weight is pruned on its own, one-shot, to each sparsity level in turn, and the network is
evaluated with no fine-tuning; the weight is then restored exactly before the next measurement.
The result is a DataFrame with Distiller's CSV columns ``parameter, sparsity, top1, top5, loss``:
how much each layer can lose before accuracy falls. From it, ``ratios_from_sensitivity`` picks a
per-layer pruning ratio under an accuracy budget and ``ratios_to_schedule`` writes the YAML schedule
that prunes to those ratios. Granularities (``group``):

- ``element``: exactly ``floor(s * numel)`` smallest-magnitude elements (``level_mask``), as
  ``SparsityLevelParameterPruner`` does;
- ``filter``: the fraction ``s`` of output units with the lowest mean |w|, ranked and counted as
  ``L1RankedStructureParameterPruner`` does: filters of a convolution, output neurons (stored rows,
  group type ``Cols``) of a Linear layer. By default the pruned units' bias entries and the
  following batch norm's gamma and beta are zeroed too (and restored), as the pruner does in a
  schedule, so the unit really stops contributing (``dependents=False``: the weight only, as
  Distiller measured);
- ``channel``: the fraction ``s`` of input channels (Linear: input features) with the lowest mean |w|.

Nothing is deep-copied: only the few tensors being pruned are saved and written back, under
``torch.no_grad``, so the model is bit-identical afterwards. Plots need the optional matplotlib
(``pip install "compressor[plot]"``), imported only when a plot is asked for.
"""
from __future__ import annotations

import inspect
import math
import os
import re
from numbers import Real
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from torch import nn

from .atomic import atomic_write
from .errors import CompressorError, listing, suggest
from .masks import normalize_name, unwrap
from .pruners.base import PruneContext, level_mask
from .pruners.criteria import L1Magnitude
from .pruners.granularity import Granularity
from .pruners.structured import FixedTarget, RankedStructurePruner
from .registry import PRUNERS
from .summary import to_csv

PathLike = Union[str, os.PathLike]
Result = Tuple[float, float, float]
TestFn = Callable[[nn.Module], object]

COLUMNS: Tuple[str, ...] = ("parameter", "sparsity", "top1", "top5", "loss")
GROUPS: Tuple[str, ...] = ("element", "filter", "channel")
METRICS: Tuple[str, ...] = ("top1", "top5", "loss")
DEFAULT_PRUNER = {"element": "SparsityLevelParameterPruner",
                  "filter": "L1RankedStructureParameterPruner",
                  "channel": "L1RankedStructureParameterPruner"}
# Sparsity levels are rounded to this many decimals so np.arange noise (0.30000000000000004)
# does not leak into the CSV, the table's columns or the schedule.
_DECIMALS = 10


class SensitivityError(CompressorError, ValueError):
    """A sensitivity analysis cannot run (or its result cannot be used) as asked."""


# -- arguments --------------------------------------------------------------------------------
def _check_group(group) -> str:
    if not isinstance(group, str) or group.strip().lower() not in GROUPS:
        raise SensitivityError(f"unknown sensitivity group {group!r}{suggest(str(group).lower(), GROUPS)}; "
                               f"valid: {', '.join(GROUPS)}")
    return group.strip().lower()


def _check_metric(metric) -> str:
    if metric not in METRICS:
        raise SensitivityError(f"unknown metric {metric!r}{suggest(str(metric), METRICS)}; "
                               f"valid: {', '.join(METRICS)}")
    return metric


def _level(value, what: str = "sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)) \
            or not 0.0 <= float(value) < 1.0:
        raise SensitivityError(f"{what} {value!r} must be a number in [0, 1)")
    return round(float(value), _DECIMALS)


def _check_sparsities(sparsities) -> List[float]:
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
        raise SensitivityError(f"sparsities must be a sequence of levels in [0, 1), e.g. "
                               f"[0.0, 0.1, ..., 0.9]; got {sparsities!r}")
    levels = list(dict.fromkeys(_level(s) for s in sparsities))
    if not levels:
        raise SensitivityError("sparsities is empty: give at least one level in [0, 1), e.g. "
                               "[0.0, 0.1, ..., 0.9]")
    return levels


def sensitivity_range(start: float = 0.0, stop: float = 0.95, step: float = 0.05) -> List[float]:
    """Levels ``start, start+step, ...`` below ``stop``, as ``np.arange`` (Distiller's ``--sense-range``).

    The default gives Distiller's 19 levels 0.00 ... 0.90. Values are rounded to 10 decimals.
    """
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise SensitivityError(f"sensitivity range: {name} must be a number; got {v!r}")
    if step <= 0:
        raise SensitivityError(f"sensitivity range: step must be > 0; got {step}")
    if not 0.0 <= start < 1.0:
        raise SensitivityError(f"sensitivity range: start must be in [0, 1); got {start}")
    if stop <= start:
        raise SensitivityError(f"sensitivity range: stop ({stop}) must be greater than start ({start})")
    n = int(math.ceil(round((stop - start) / step, 9)))
    levels = [round(start + i * step, _DECIMALS) for i in range(n)]
    return [s for s in levels if s < 1.0]


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


def group_type_for(group: str, shape: Sequence[int]) -> Optional[str]:
    """The ranked-pruner group type that ``group`` means for a weight of ``shape`` (None: element).

    filter: ``Filters`` for a convolution, ``Cols`` (output neurons) for a Linear weight;
    channel: ``Channels`` (input channels; on a Linear weight, input features).
    """
    group = _check_group(group)
    if group == "element":
        return None
    if group == "filter":
        return "Filters" if len(shape) >= 3 else "Cols"
    return "Channels"


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
    from .pruners.coupling import dependents as find_dependents
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
    group = _check_group(group)
    levels = _check_sparsities(sparsities)
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
    from .training import evaluate
    criterion = nn.CrossEntropyLoss() if criterion is None else criterion
    device = torch.device(device)

    def test_fn(model: nn.Module) -> Result:
        stats = evaluate(model, loader, criterion, device)
        return stats.top1, stats.top5, stats.loss
    return test_fn


# -- results ----------------------------------------------------------------------------------
def _check_frame(df) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise SensitivityError(f"expected the DataFrame of perform_sensitivity_analysis; got "
                               f"{type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SensitivityError(f"not a sensitivity DataFrame: missing column(s) {', '.join(missing)}; "
                               f"expected {', '.join(COLUMNS)}")
    if df.empty:
        raise SensitivityError("the sensitivity DataFrame is empty")
    return df.drop_duplicates(["parameter", "sparsity"], keep="last")


def sensitivities_to_csv(df: pd.DataFrame, path: PathLike) -> Path:
    """Write the analysis to ``path`` (header ``parameter,sparsity,top1,top5,loss``), atomically."""
    _check_frame(df)
    return to_csv(df[list(COLUMNS)], path)


def sensitivity_table(df: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per parameter (analysis order), one column per sparsity level, values ``metric``."""
    metric = _check_metric(metric)
    df = _check_frame(df)
    table = df.pivot(index="parameter", columns="sparsity", values=metric)
    table = table.reindex(pd.unique(df["parameter"]))
    table.columns.name = "sparsity"
    return table


def sensitivities_to_png(df: pd.DataFrame, path: PathLike, metric: str = "top1") -> Path:
    """Plot ``metric`` against sparsity, one line per parameter, legend below; write ``path`` atomically.

    Needs matplotlib (``pip install "compressor[plot]"``); without it, ``SensitivityError``.
    """
    metric = _check_metric(metric)
    df = _check_frame(df)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SensitivityError("plotting the sensitivity analysis needs matplotlib: "
                               "pip install \"compressor[plot]\" (or pip install matplotlib)") from None
    names = list(pd.unique(df["parameter"]))
    ncol = min(3, len(names))
    legend_rows = math.ceil(len(names) / ncol)
    # A figure of its own with the Agg canvas: pyplot's global state and backend are left alone.
    fig = Figure(figsize=(8, 5 + 0.22 * legend_rows))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in names:
        part = df[df["parameter"] == name].sort_values("sparsity")
        ax.plot(part["sparsity"], part[metric], marker="o", markersize=3, label=name)
    label = {"top1": "top-1 accuracy (%)", "top5": "top-5 accuracy (%)", "loss": "loss"}[metric]
    ax.set_xlabel("sparsity")
    ax.set_ylabel(label)
    ax.set_title(f"Sensitivity analysis: {label} vs. sparsity of one weight")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=ncol, fontsize="small",
              frameon=False)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))



# -- choosing ratios --------------------------------------------------------------------------
def ratios_from_sensitivity(df: pd.DataFrame, max_drop: float, metric: str = "top1") -> Dict[str, float]:
    """{parameter: the largest tested sparsity reached before ``metric`` first falls out of budget}.

    The budget is ``max_drop`` points from the parameter's dense (sparsity 0) value: lower for
    top1/top5, higher for loss. Levels are walked upwards and the walk stops at the first level
    out of budget, so a noisy recovery at a higher level is not taken. A parameter whose first
    pruned level is already out of budget gets 0.0 (do not prune it).
    """
    metric = _check_metric(metric)
    if isinstance(max_drop, bool) or not isinstance(max_drop, Real) or not float(max_drop) >= 0:
        raise SensitivityError(f"max_drop must be a number >= 0 (points of {metric}); got {max_drop!r}")
    df = _check_frame(df)
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
            chosen = round(float(s), _DECIMALS)
        ratios[str(name)] = chosen
    return ratios


def _quote(name: str) -> str:
    """A weight name as a YAML scalar: plain when it is a dotted identifier, else single-quoted."""
    name = str(name)
    if "." in name and re.fullmatch(r"[A-Za-z_][\w.]*", name):   # never a YAML keyword
        return name
    return "'" + name.replace("'", "''") + "'"


def _number(x: float) -> str:
    return repr(round(float(x), _DECIMALS))


def ratios_to_schedule(ratios: Mapping[str, float], group: str, pruner_class: Optional[str] = None,
                       model: Optional[nn.Module] = None, epoch: int = 0) -> str:
    """A YAML schedule that prunes each weight one-shot, at ``epoch``, to its ratio.

    element: one ``SparsityLevelParameterPruner`` with ``levels:``. filter/channel: one
    ``L1RankedStructureParameterPruner`` (or ``pruner_class``) per distinct (group type, ratio),
    with ``group_type``, ``desired_sparsity`` and ``weights``. For ``filter``, pass ``model`` so
    Linear weights get group type ``Cols`` (output neurons); without it every weight is written as
    ``Filters``. Ratios of 0 are left out. Fine-tuning, thinning and LR policies are up to you.
    """
    group = _check_group(group)
    if not isinstance(ratios, Mapping):
        raise SensitivityError(f"ratios must map weight names to sparsities; got {ratios!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise SensitivityError(f"epoch must be an integer >= 0; got {epoch!r}")
    checked = {str(n): _level(r, f"ratio of '{n}'") for n, r in ratios.items()}
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
