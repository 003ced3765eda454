"""The class names a schedule uses for ranked structure pruning, as forms plus one alias table.

A *form* is a constructor signature that translates YAML arguments into the parts of
``RankedStructurePruner`` (``structured.py``): a fixed fraction (``desired_sparsity``), an AGP ramp
(``initial_sparsity``/``final_sparsity``) or a random level (``sparsity_range``). The general forms
take the criterion as an argument; Distiller's names fix it. Those names are rows of ``ALIASES``:
each row registers ``NAME`` (fixed fraction) and ``NAME_AGP`` (AGP ramp) as subclasses that only
set the criterion, the group types it may rank and, for DropFilter, the selection rule. The builder
checks arguments against the form's signature, so an alias accepts and rejects exactly what its
form does. To add a Distiller name, add a row.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from torch import nn

from ..errors import ComponentArgError
from ..registry import PRUNERS
from .criteria import make_criterion
from .granularity import FILTER_GROUP_TYPES, RANKABLE_GROUP_TYPES, Granularity
from .magnitude import check_sparsity
from .structured import (AGPTarget, BernoulliSelect, FixedTarget, RandomLevelTarget,
                         RankedStructurePruner, agp_fractions, check_seed, desired_fraction)


# -- forms ------------------------------------------------------------------------------------
class _FixedForm(RankedStructurePruner):
    """(criterion, group type, fixed fraction): Distiller's one-shot ranked pruner signature."""
    criterion_name = "L1"
    group_types = RANKABLE_GROUP_TYPES

    def __init__(self, name: str, group_type: str, desired_sparsity: Optional[float] = None,
                 weights: Optional[Sequence[str]] = None, group_dependency: Optional[str] = None,
                 kwargs: Optional[dict] = None, noise: float = 0.0, group_size: int = 1,
                 rounding_fn="floor", fraction_to_prune: Optional[float] = None, seed: int = 0,
                 model: Optional[nn.Module] = None, round_to: int = 1):
        target = FixedTarget(desired_fraction(desired_sparsity, fraction_to_prune))
        _build(self, name, group_type, weights, target, group_dependency, kwargs, noise, group_size,
               rounding_fn, seed, model, round_to)


class _AGPForm(RankedStructurePruner):
    """(criterion, group type, AGP target): Distiller's ``*_AGP`` signature."""
    criterion_name = "L1"
    group_types = RANKABLE_GROUP_TYPES

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: Sequence[str], group_dependency: Optional[str] = None,
                 kwargs: Optional[dict] = None, noise: float = 0.0, group_size: int = 1,
                 rounding_fn="floor", seed: int = 0, model: Optional[nn.Module] = None,
                 round_to: int = 1):
        target = AGPTarget(*agp_fractions(initial_sparsity, final_sparsity))
        _build(self, name, group_type, weights, target, group_dependency, kwargs, noise, group_size,
               rounding_fn, seed, model, round_to)


def _build(self, name, group_type, weights, target, group_dependency, kwargs, noise, group_size,
           rounding_fn, seed, model, round_to=1):
    if weights is None:
        raise ComponentArgError("weights", "is required: a list of weight names")
    seed = check_seed(seed)
    criterion = make_criterion(self.criterion_name, seed)
    allowed = self.group_types
    if criterion.group_types is not None:
        allowed = tuple(t for t in allowed if t in criterion.group_types)
    granularity = Granularity(group_type, kwargs, allowed)
    RankedStructurePruner.__init__(self, name, weights, criterion, granularity, target,
                                   group_dependency, group_size, rounding_fn, noise, seed, model,
                                   round_to)


@PRUNERS.register
class RankedStructureParameterPruner(_FixedForm):
    """Any criterion (``criterion: L1 | L2 | BNGamma | APoZ | MeanActivation | Taylor | Random``),
    any rankable group type, a fixed fraction."""

    def __init__(self, name: str, group_type: str, desired_sparsity: Optional[float] = None,
                 weights: Optional[Sequence[str]] = None, criterion: str = "L1",
                 group_dependency: Optional[str] = None, kwargs: Optional[dict] = None,
                 noise: float = 0.0, group_size: int = 1, rounding_fn="floor",
                 fraction_to_prune: Optional[float] = None, seed: int = 0,
                 model: Optional[nn.Module] = None, round_to: int = 1):
        self.criterion_name = criterion
        super().__init__(name, group_type, desired_sparsity, weights, group_dependency, kwargs, noise,
                         group_size, rounding_fn, fraction_to_prune, seed, model, round_to)


@PRUNERS.register
class StructuredAutomatedGradualPruner(_AGPForm):
    """Any criterion, any rankable group type, an AGP target: the general structured AGP."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: Sequence[str], criterion: str = "L1",
                 group_dependency: Optional[str] = None, kwargs: Optional[dict] = None,
                 noise: float = 0.0, group_size: int = 1, rounding_fn="floor", seed: int = 0,
                 model: Optional[nn.Module] = None, round_to: int = 1):
        self.criterion_name = criterion
        super().__init__(name, initial_sparsity, final_sparsity, group_type, weights,
                         group_dependency, kwargs, noise, group_size, rounding_fn, seed, model,
                         round_to)


@PRUNERS.register
class RandomLevelStructureParameterPruner(_FixedForm):
    """Mean-|w| ranking to a fraction drawn uniformly from ``sparsity_range`` at each step."""
    criterion_name = "L1"

    def __init__(self, name: str, group_type: str, sparsity_range: Sequence[float],
                 weights: Sequence[str], group_dependency: Optional[str] = None,
                 kwargs: Optional[dict] = None, noise: float = 0.0, group_size: int = 1,
                 rounding_fn="floor", seed: int = 0, model: Optional[nn.Module] = None,
                 round_to: int = 1):
        ok = isinstance(sparsity_range, (list, tuple)) and len(sparsity_range) == 2
        if not ok:
            raise ComponentArgError("sparsity_range", f"must be [low, high] with 0 <= low <= high < 1; "
                                                      f"got {sparsity_range!r}")
        low = check_sparsity("sparsity_range", sparsity_range[0])
        high = check_sparsity("sparsity_range", sparsity_range[1])
        if high < low:
            raise ComponentArgError("sparsity_range", f"low ({low}) must be <= high ({high})")
        target = RandomLevelTarget(low, high, check_seed(seed))
        _build(self, name, group_type, weights, target, group_dependency, kwargs, noise, group_size,
               rounding_fn, seed, model, round_to)


# -- Distiller's names ------------------------------------------------------------------------
# (name, criterion, group types it may rank, selection rule or None for ranking, what it prunes)
ALIASES: Tuple[Tuple[str, str, Tuple[str, ...], Optional[type], str], ...] = (
    ("L1RankedStructureParameterPruner", "L1", RANKABLE_GROUP_TYPES, None, "Mean-|w| ranking"),
    ("L2RankedStructureParameterPruner", "L2", RANKABLE_GROUP_TYPES, None,
     "Length-normalized L2 ranking"),
    ("ActivationAPoZRankedFilterPruner", "APoZ", FILTER_GROUP_TYPES, None,
     "Filters whose activation channel is most often zero (network trimming)"),
    ("ActivationMeanRankedFilterPruner", "MeanActivation", FILTER_GROUP_TYPES, None,
     "Filters whose activation channel has the lowest mean"),
    ("GradientRankedFilterPruner", "Taylor", FILTER_GROUP_TYPES, None,
     "Filters with the smallest first-order Taylor importance |sum(w * grad)|"),
    ("RandomRankedFilterPruner", "Random", FILTER_GROUP_TYPES, None,
     "Exactly the counted number of filters, chosen at random (seeded): a baseline"),
    ("BNGammaRankedFilterPruner", "BNGamma", FILTER_GROUP_TYPES, None,
     "Filters whose batch-norm |gamma| is smallest (network slimming)"),
    ("BernoulliFilterPruner", "Random", FILTER_GROUP_TYPES, BernoulliSelect,
     "Each filter dropped with probability equal to the target fraction (DropFilter-like)"),
)


def _alias(name: str, form: type, criterion: str, group_types: Tuple[str, ...],
           select: Optional[type], doc: str) -> type:
    """A registered subclass of ``form`` named ``name`` that fixes the criterion (and selection)."""
    bases = (select, form) if select is not None else (form,)
    cls = type(name, bases, {"criterion_name": criterion, "group_types": group_types,
                             "__doc__": doc, "__module__": __name__, "__qualname__": name})
    return PRUNERS.register(cls)


#: {alias name: its class}, for code that imports a Distiller name from ``compressor.pruners``.
ALIAS_CLASSES: Dict[str, type] = {}
for _name, _criterion, _types, _select, _what in ALIASES:
    ALIAS_CLASSES[_name] = _alias(_name, _FixedForm, _criterion, _types, _select,
                                  f"{_what}; fixed fraction.")
    ALIAS_CLASSES[_name + "_AGP"] = _alias(_name + "_AGP", _AGPForm, _criterion, _types, _select,
                                           f"{_what}; AGP fraction.")
# Module attributes too, so `from compressor.pruners.structured_names import L1Ranked...` works.
globals().update(ALIAS_CLASSES)
del _name, _criterion, _types, _select, _what
