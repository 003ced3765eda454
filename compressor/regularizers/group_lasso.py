"""Group lasso: a penalty that drives whole structures (filters, channels, kernels, rows ...) to zero.

``GroupLassoRegularizer`` adds ``λ · Σ_g ‖w_g‖₂`` per parameter for one group type (or the sum over
the parts of a combined type such as ``Rows+Cols``) and, with a ``threshold_criteria``, zeroes the
groups whose Max or Mean_Abs statistic is at or below ``λ``. This module also holds the parsing of
``reg_regims`` values that the other regularizers share.

``Rows`` and ``Cols`` here mean what they meant in Distiller's group-lasso code and thresholding:
``Rows`` = one group per stored row ``W[i, :]`` of a 2D weight (an output neuron of a ``Linear``),
``Cols`` = one group per stored column ``W[:, j]`` (an input feature). That is the opposite of the
transposed-GEMM naming ``compressor.groups`` (and Distiller's ranked pruners and sparsity tables)
use, so a Distiller SSL schedule penalizes the same weights here as there. The unambiguous
``OutputNeurons`` / ``InputFeatures`` mean the same groups in every component.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..errors import ComponentArgError, listing, suggest
from ..groups import (COMBINED_GROUP_TYPES, GROUP_TYPES, check_group_type, group_norms,
                      split_group_type, threshold_group_mask, validate_block_shape,
                      validate_group_type_name)
from ..registry import REGULARIZERS
from .base import Regularizer

# Distiller's regularizer named a 2D weight's groups by the stored matrix; groups.py names them by
# the transposed GEMM operand. These are the groups.py types the regularizer's names stand for.
REGULARIZER_2D_GROUP_TYPES: Dict[str, str] = {"Rows": "OutputNeurons", "Cols": "InputFeatures"}


def regularizer_group_parts(group_type: str) -> Tuple[str, ...]:
    """The ``compressor.groups`` partition types a regularizer's group type adds up."""
    return tuple(REGULARIZER_2D_GROUP_TYPES.get(p, p) for p in split_group_type(group_type))


# The threshold criteria Distiller's regularizers accept (a subset of the pruners' table,
# ``compressor.thresholding.THRESHOLD_CRITERIA``) -> the groups.py statistic they use.
REGULARIZER_THRESHOLD_CRITERIA: Dict[str, str] = {"Max": "max", "Mean_Abs": "mean_abs"}

_STRENGTH_HINT = "a number >= 0, e.g. 0.0001"


@dataclass(frozen=True)
class Regime:
    """One parsed ``reg_regims`` entry: strength λ, group type (None: element-wise) and block shape."""
    strength: float
    group_type: Optional[str] = None
    block_shape: Optional[Tuple[int, ...]] = None


def parse_strength(value, key: str) -> float:
    """A finite, non-negative λ. Numeric strings are accepted because YAML reads ``5e-5`` as text."""
    v = value
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ComponentArgError(
                key, f"strength must be a non-negative number, got {value!r}; valid: {_STRENGTH_HINT}"
            ) from None
    if isinstance(v, bool) or not isinstance(v, Real):
        raise ComponentArgError(
            key, f"strength must be a non-negative number, got {value!r}; valid: {_STRENGTH_HINT}")
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ComponentArgError(
            key, f"strength must be a non-negative number, got {value!r}; valid: {_STRENGTH_HINT}")
    return v


def parse_regims_mapping(reg_regims) -> Mapping:
    """Check ``reg_regims`` is a non-empty mapping keyed by parameter names."""
    if not isinstance(reg_regims, Mapping):
        raise ComponentArgError(
            "reg_regims", f"must be a mapping of parameter name -> regime, got {type(reg_regims).__name__}; "
                          "valid: e.g. {conv1.weight: [0.0001, Filters]}")
    if not reg_regims:
        raise ComponentArgError(
            "reg_regims", "is empty; valid: at least one entry, e.g. {conv1.weight: [0.0001, Filters]}")
    for p in reg_regims:
        if not isinstance(p, str) or not p:
            raise ComponentArgError(
                "reg_regims", f"keys must be parameter names, got {p!r}; valid: e.g. conv1.weight")
    return reg_regims


def parse_group_regime(value, key: str, allowed: Iterable[str], default_type: Optional[str] = None,
                       form: str = "[strength, group_type]") -> Regime:
    """Parse ``[λ, type]``, ``[λ, 'Blocks', block_shape]`` or ``{strength, group_type, block_shape}``.

    A bare number is accepted only when ``default_type`` is given.
    """
    allowed = tuple(allowed)
    expected = (f"expected {form} (or [strength, Blocks, block_shape] / "
                f"{{strength: ..., group_type: ..., block_shape: ...}})")
    block_shape = None
    if isinstance(value, Mapping):
        extra = set(value) - {"strength", "group_type", "block_shape"}
        if extra:
            bad = sorted(map(str, extra))[0]
            raise ComponentArgError(
                f"{key}.{bad}", f"unknown key{suggest(bad, ('strength', 'group_type', 'block_shape'))}; "
                                "valid: block_shape, group_type, strength")
        if "strength" not in value:
            raise ComponentArgError(key, f"missing 'strength'; {expected}")
        strength = value["strength"]
        group_type = value.get("group_type", default_type)
        block_shape = value.get("block_shape")
    elif isinstance(value, (list, tuple)) and len(value) in (2, 3):
        strength, group_type = value[0], value[1]
        if len(value) == 3:
            block_shape = value[2]
    elif default_type is not None and isinstance(value, (Real, str)) and not isinstance(value, bool):
        strength, group_type = value, default_type
    else:
        raise ComponentArgError(key, f"{expected}, got {value!r}; valid group types: "
                                     f"{listing(allowed, limit=40)}")
    strength = parse_strength(strength, key)
    if group_type is None:
        raise ComponentArgError(key, f"missing group_type; valid: {listing(allowed, limit=40)}")
    group_type = validate_group_type_name(group_type, key, allowed)
    if "Blocks" in split_group_type(group_type):
        if block_shape is None:
            raise ComponentArgError(key, "group type 'Blocks' needs a block_shape; valid: "
                                         "[strength, Blocks, [1, 8, 1, 1]]")
        block_shape = validate_block_shape(block_shape, key)
    elif block_shape is not None:
        raise ComponentArgError(key, f"block_shape is only used with group type 'Blocks', "
                                     f"got group type {group_type!r}; valid: remove block_shape")
    return Regime(strength, group_type, block_shape)


def parse_threshold_criteria(value, valid: Iterable[str] = tuple(REGULARIZER_THRESHOLD_CRITERIA)) -> Optional[str]:
    """None, or the canonical spelling of a known criterion (matched case-insensitively)."""
    if value is None:
        return None
    valid = tuple(valid)
    if isinstance(value, str):
        for v in valid:
            if v.lower() == value.lower():
                return v
    raise ComponentArgError(
        "threshold_criteria", f"unknown threshold criterion {value!r}{suggest(str(value), valid)}; "
                              f"valid: {', '.join(valid)}, or null for no thresholding")


def require_param(params: Mapping[str, torch.Tensor], name: str, owner: str) -> torch.Tensor:
    """``params[name]``, with a message naming the regularizer when the caller left it out."""
    try:
        return params[name]
    except KeyError:
        raise KeyError(f"{owner}: parameter {name!r} from reg_regims was not passed "
                       f"(got {listing(params, limit=8) or 'none'})") from None


def check_regime_fits(regime: Regime, name: str, params: Mapping[str, torch.Tensor],
                      allowed: Iterable[str]) -> torch.Tensor:
    """Raise ``ComponentArgError('reg_regims.<name>', ...)`` if the regime's group type does not fit."""
    key = f"reg_regims.{name}"
    if name not in params:
        raise ComponentArgError(key, "no such parameter was given to check(); "
                                     f"valid: {listing(params, limit=12) or 'none'}")
    w = params[name]
    check_group_type(regime.group_type, tuple(w.shape), key, block_shape=regime.block_shape,
                     what=f"parameter {name!r}", allowed=allowed)
    return w


def _zero_like(params: Mapping[str, torch.Tensor], names: Iterable[str]) -> torch.Tensor:
    for n in names:
        if n in params:
            return params[n].new_zeros(())
    return torch.zeros(())


@REGULARIZERS.register
class GroupLassoRegularizer(Regularizer):
    """Group lasso: ``loss = Σ_params λ · Σ_groups ‖w_g‖₂`` (Yuan & Lin; SSL, Wen et al. 2016).

    ``reg_regims: {param: [λ, group_type]}``, or ``[λ, 'Blocks', block_shape]``, or
    ``{strength, group_type, block_shape}``. Group types are those of ``compressor.groups``
    (``2D``, ``Filters``/``3D``, ``Channels``, ``4D``, ``Blocks``, ``InputFeatures``,
    ``OutputNeurons``), with ``Rows`` = ``OutputNeurons`` (stored rows ``W[i, :]``) and ``Cols`` =
    ``InputFeatures`` (stored columns ``W[:, j]``) as in Distiller's regularizer, plus the
    overlapping sums ``Rows+Cols``/``Cols+Rows`` and ``Channels+4D``/``4D+Channels`` (the penalty of
    each part, added). ``threshold_criteria`` ``'Max'`` or ``'Mean_Abs'`` makes ``threshold_masks``
    zero every group whose max |w| or mean |w| is ≤ λ; it is supported for the partition types
    other than ``4D``. The gradient at an all-zero group is 0 (a subgradient), never NaN.
    """

    GROUP_TYPES: Tuple[str, ...] = GROUP_TYPES + tuple(COMBINED_GROUP_TYPES)
    THRESHOLD_GROUP_TYPES: Tuple[str, ...] = ("2D", "3D", "Blocks", "Channels", "Cols", "Filters",
                                              "InputFeatures", "OutputNeurons", "Rows")

    def __init__(self, name: str, reg_regims: Mapping, threshold_criteria: Optional[str] = None):
        super().__init__(name, parse_regims_mapping(reg_regims), threshold_criteria)
        self.threshold_criteria = parse_threshold_criteria(threshold_criteria)
        self.regimes: Dict[str, Regime] = {
            p: parse_group_regime(v, f"reg_regims.{p}", self.GROUP_TYPES)
            for p, v in self.reg_regims.items()}
        if self.threshold_criteria is not None:
            for p, r in self.regimes.items():
                if r.group_type not in self.THRESHOLD_GROUP_TYPES:
                    raise ComponentArgError(
                        f"reg_regims.{p}",
                        f"group type {r.group_type!r} cannot be thresholded (threshold_criteria is "
                        f"{self.threshold_criteria!r}); valid with thresholding: "
                        f"{', '.join(sorted(self.THRESHOLD_GROUP_TYPES))}, or threshold_criteria: null")

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        for p, r in self.regimes.items():
            check_regime_fits(r, p, params, self.GROUP_TYPES)

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for p, r in self.regimes.items():
            w = require_param(params, p, type(self).__name__)
            for part in regularizer_group_parts(r.group_type):
                term = group_norms(w, part, "l2", block_shape=r.block_shape).sum() * r.strength
                total = term if total is None else total + term
        return total if total is not None else _zero_like(params, self.regimes)

    def threshold_masks(self, params: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.threshold_criteria is None:
            return {}
        stat = REGULARIZER_THRESHOLD_CRITERIA[self.threshold_criteria]
        return {p: threshold_group_mask(require_param(params, p, type(self).__name__),
                                        regularizer_group_parts(r.group_type)[0],
                                        r.strength, stat, block_shape=r.block_shape)
                for p, r in self.regimes.items()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, params={len(self.regimes)}, "
                f"threshold_criteria={self.threshold_criteria!r})")
