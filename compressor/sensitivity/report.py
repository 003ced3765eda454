"""The sensitivity analysis as files and tables: the CSV Distiller wrote, a pivot table, a plot.

Plots need the optional matplotlib (``pip install "compressor[plot]"``), imported only when a plot is
asked for, and drawn on a figure of their own so pyplot's global state is left alone.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import pandas as pd

from ..atomic import atomic_write
from ..summary import to_csv
from .checks import COLUMNS, SensitivityError, check_frame, check_metric

PathLike = Union[str, os.PathLike]


def sensitivities_to_csv(df: pd.DataFrame, path: PathLike) -> Path:
    """Write the analysis to ``path`` (header ``parameter,sparsity,top1,top5,loss``), atomically."""
    check_frame(df)
    return to_csv(df[list(COLUMNS)], path)


def sensitivity_table(df: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per parameter (analysis order), one column per sparsity level, values ``metric``."""
    metric = check_metric(metric)
    df = check_frame(df)
    table = df.pivot(index="parameter", columns="sparsity", values=metric)
    table = table.reindex(pd.unique(df["parameter"]))
    table.columns.name = "sparsity"
    return table


def sensitivities_to_png(df: pd.DataFrame, path: PathLike, metric: str = "top1") -> Path:
    """Plot ``metric`` against sparsity, one line per parameter, legend below; write ``path`` atomically.

    Needs matplotlib (``pip install "compressor[plot]"``); without it, ``SensitivityError``.
    """
    metric = check_metric(metric)
    df = check_frame(df)
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
