"""Per-layer sensitivity analysis (Li et al., "Pruning Filters for Efficient ConvNets", 2017).

Each weight is pruned on its own, one-shot, to each sparsity level in turn, and the network is
evaluated with no fine-tuning; the weight is then restored exactly before the next measurement.
The result is a DataFrame with Distiller's CSV columns ``parameter, sparsity, top1, top5, loss``:
how much each layer can lose before accuracy falls. Three jobs, one file each:
``analysis.py`` measures (``perform_sensitivity_analysis``, ``evaluator``); ``report.py`` writes the
CSV, the pivot table and the plot; ``suggest.py`` picks per-layer ratios under an accuracy budget
(``ratios_from_sensitivity``) and writes the schedule that prunes to them (``ratios_to_schedule``).
``checks.py`` holds the error, the vocabulary and the checks they share. Granularities (``group``):

- ``element``: exactly ``floor(s * numel)`` smallest-magnitude elements (``level_mask``), as
  ``SparsityLevelParameterPruner`` does;
- ``filter``: the fraction ``s`` of output units with the lowest mean |w|, ranked and counted as
  ``L1RankedStructureParameterPruner`` does: filters of a convolution, output neurons (stored rows,
  group type ``Cols``) of a Linear layer. By default the pruned units' bias entries and the
  following batch norm's gamma and beta are zeroed too (and restored), as the pruner does in a
  schedule, so the unit really stops contributing (``dependents=False``: the weight only, as
  Distiller measured);
- ``channel``: the fraction ``s`` of input channels (Linear: input features) with the lowest mean |w|.
"""
from .analysis import evaluator, perform_sensitivity_analysis
from .checks import (COLUMNS, DEFAULT_PRUNER, GROUPS, METRICS, SensitivityError, group_type_for,
                     sensitivity_range)
from .report import sensitivities_to_csv, sensitivities_to_png, sensitivity_table
from .suggest import ratios_from_sensitivity, ratios_to_schedule

__all__ = ["COLUMNS", "DEFAULT_PRUNER", "GROUPS", "METRICS", "SensitivityError", "evaluator",
           "group_type_for", "perform_sensitivity_analysis", "ratios_from_sensitivity",
           "ratios_to_schedule", "sensitivities_to_csv", "sensitivities_to_png", "sensitivity_range",
           "sensitivity_table"]
