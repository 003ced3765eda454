"""The words and argument checks that the sensitivity analysis, its report and its schedule share.

``SensitivityError`` is raised for every mistake; the granularities (``group``), metrics and CSV
columns are named here once, with the checks of levels, of a result DataFrame and the mapping of a
granularity onto the ranked pruner's group types.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from ..errors import CompressorError, suggest

COLUMNS: Tuple[str, ...] = ("parameter", "sparsity", "top1", "top5", "loss")
GROUPS: Tuple[str, ...] = ("element", "filter", "channel")
METRICS: Tuple[str, ...] = ("top1", "top5", "loss")
DEFAULT_PRUNER = {"element": "SparsityLevelParameterPruner",
                  "filter": "L1RankedStructureParameterPruner",
                  "channel": "L1RankedStructureParameterPruner"}
# Sparsity levels are rounded to this many decimals so np.arange noise (0.30000000000000004)
# does not leak into the CSV, the table's columns or the schedule.
DECIMALS = 10


class SensitivityError(CompressorError, ValueError):
    """A sensitivity analysis cannot run (or its result cannot be used) as asked."""


# -- arguments --------------------------------------------------------------------------------
def check_group(group) -> str:
    if not isinstance(group, str) or group.strip().lower() not in GROUPS:
        raise SensitivityError(f"unknown sensitivity group {group!r}{suggest(str(group).lower(), GROUPS)}; "
                               f"valid: {', '.join(GROUPS)}")
    return group.strip().lower()


def check_metric(metric) -> str:
    if metric not in METRICS:
        raise SensitivityError(f"unknown metric {metric!r}{suggest(str(metric), METRICS)}; "
                               f"valid: {', '.join(METRICS)}")
    return metric


def check_level(value, what: str = "sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)) \
            or not 0.0 <= float(value) < 1.0:
        raise SensitivityError(f"{what} {value!r} must be a number in [0, 1)")
    return round(float(value), DECIMALS)


def check_sparsities(sparsities) -> List[float]:
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
        raise SensitivityError(f"sparsities must be a sequence of levels in [0, 1), e.g. "
                               f"[0.0, 0.1, ..., 0.9]; got {sparsities!r}")
    levels = list(dict.fromkeys(check_level(s) for s in sparsities))
    if not levels:
        raise SensitivityError("sparsities is empty: give at least one level in [0, 1), e.g. "
                               "[0.0, 0.1, ..., 0.9]")
    return levels


#: The most levels a sensitivity range may ask for: each level is one evaluation per layer.
MAX_LEVELS = 1000


def level_count(start: float, stop: float, step: float) -> int:
    """How many levels ``start, start+step, ...`` below ``stop`` holds (without listing them)."""
    return int(math.ceil(round((stop - start) / step, 9)))


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
    n = level_count(start, stop, step)
    if n > MAX_LEVELS:   # refused before allocating: each level is a full evaluation per layer
        raise SensitivityError(f"sensitivity range: {start:g} to {stop:g} in steps of {step:g} is "
                               f"{n:,} levels; at most {MAX_LEVELS} (use a larger step)")
    levels = [round(start + i * step, DECIMALS) for i in range(n)]
    return [s for s in levels if s < 1.0]


def group_type_for(group: str, shape: Sequence[int]) -> Optional[str]:
    """The ranked-pruner group type that ``group`` means for a weight of ``shape`` (None: element).

    filter: ``Filters`` for a convolution, ``Cols`` (output neurons) for a Linear weight;
    channel: ``Channels`` (input channels; on a Linear weight, input features).
    """
    group = check_group(group)
    if group == "element":
        return None
    if group == "filter":
        return "Filters" if len(shape) >= 3 else "Cols"
    return "Channels"


# -- results --------------------------------------------------------------------------------
def check_frame(df) -> pd.DataFrame:
    """``df`` checked to be an analysis result; a later row of a (parameter, sparsity) wins."""
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
