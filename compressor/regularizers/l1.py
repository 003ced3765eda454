"""L1 (lasso) regularization: an element-wise penalty that pushes individual weights to zero.

``L1Regularizer`` adds ``λ · Σ|w|`` per parameter and, with any ``threshold_criteria``, zeroes the
weights with ``|w| ≤ λ`` (Distiller's element-wise soft threshold at λ itself).
"""
from __future__ import annotations

from numbers import Real
from typing import Dict, Mapping, Optional

import torch

from ..errors import ComponentArgError, listing
from ..groups import GROUP_TYPES, COMBINED_GROUP_TYPES, validate_group_type_name
from ..registry import REGULARIZERS
from .base import Regularizer
from .group_lasso import (Regime, _zero_like, parse_regims_mapping, parse_strength,
                          parse_threshold_criteria, require_param)

_ANY_GROUP_TYPE = GROUP_TYPES + tuple(COMBINED_GROUP_TYPES)


def _parse_l1_regime(value, key: str) -> Regime:
    """``λ``, ``[λ]``, ``[λ, group_type]`` (type checked, then ignored) or ``{strength: λ}``."""
    if isinstance(value, Mapping):
        extra = set(value) - {"strength"}
        if extra or "strength" not in value:
            raise ComponentArgError(key, f"expected {{strength: ...}}, got {dict(value)!r}; "
                                         "valid: strength (L1 is element-wise: no group type)")
        return Regime(parse_strength(value["strength"], key))
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return Regime(parse_strength(value[0], key))
        if len(value) == 2:
            # Distiller's documentation shows L1 regimes as [strength, group_type]; the type has
            # no meaning for an element-wise penalty, but a misspelt one is still an error.
            validate_group_type_name(value[1], key, _ANY_GROUP_TYPE)
            return Regime(parse_strength(value[0], key))
        raise ComponentArgError(key, f"expected a strength or [strength], got {list(value)!r}; "
                                     "valid: a number >= 0, e.g. 0.0001")
    if isinstance(value, (Real, str)) and not isinstance(value, bool):
        return Regime(parse_strength(value, key))
    raise ComponentArgError(key, f"expected a strength or [strength], got {value!r}; "
                                 "valid: a number >= 0, e.g. 0.0001")


@REGULARIZERS.register
class L1Regularizer(Regularizer):
    """Element-wise L1: ``loss = Σ_params λ · Σ|w|``.

    ``reg_regims: {param: λ}`` (also ``[λ]`` or ``[λ, group_type]``, the type being ignored).
    With ``threshold_criteria`` ``'Max'`` or ``'Mean_Abs'`` (identical for single elements),
    ``threshold_masks`` keeps exactly the weights with ``|w| > λ``.
    """

    def __init__(self, name: str, reg_regims: Mapping, threshold_criteria: Optional[str] = None):
        super().__init__(name, parse_regims_mapping(reg_regims), threshold_criteria)
        self.threshold_criteria = parse_threshold_criteria(threshold_criteria)
        self.regimes: Dict[str, Regime] = {
            p: _parse_l1_regime(v, f"reg_regims.{p}") for p, v in self.reg_regims.items()}

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        for p in self.regimes:
            if p not in params:
                raise ComponentArgError(f"reg_regims.{p}", "no such parameter was given to check(); "
                                                           f"valid: {listing(params, limit=12) or 'none'}")

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for p, r in self.regimes.items():
            term = require_param(params, p, type(self).__name__).abs().sum() * r.strength
            total = term if total is None else total + term
        return total if total is not None else _zero_like(params, self.regimes)

    def threshold_masks(self, params: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.threshold_criteria is None:
            return {}
        with torch.no_grad():
            return {p: require_param(params, p, type(self).__name__).detach().abs() > r.strength
                    for p, r in self.regimes.items()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, params={len(self.regimes)}, "
                f"threshold_criteria={self.threshold_criteria!r})")
