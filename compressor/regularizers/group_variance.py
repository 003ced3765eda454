"""Group variance regularization (Guided Structured Sparsity, Torfi et al., ICLR 2018).

``GroupVarianceRegularizer`` adds ``λ / Var(‖w_c‖₂)`` per parameter: the inverse of the (unbiased)
variance of its input-channel L2 norms. Rewarding spread-out channel norms pushes some channels
toward zero while others grow, which makes channel pruning afterwards cheaper.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch

from ..errors import ComponentArgError
from ..groups import group_norms, num_groups
from ..registry import REGULARIZERS
from .base import Regularizer
from .group_lasso import (Regime, _zero_like, check_regime_fits, parse_group_regime,
                          parse_regims_mapping, require_param)


@REGULARIZERS.register
class GroupVarianceRegularizer(Regularizer):
    """``loss = Σ_params λ / Var(channel L2 norms)``; ``reg_regims: {param: [λ, 'Channels']}``.

    ``Channels`` is the only group type (a bare ``λ`` means ``[λ, Channels]``). The variance is
    the unbiased one (divides by C - 1), so a parameter needs at least 2 input channels. When all
    channel norms are equal the variance is 0 and the loss is infinite. There is no thresholding.
    """

    GROUP_TYPES = ("Channels",)

    def __init__(self, name: str, reg_regims: Mapping):
        super().__init__(name, parse_regims_mapping(reg_regims), None)
        self.regimes: Dict[str, Regime] = {
            p: parse_group_regime(v, f"reg_regims.{p}", self.GROUP_TYPES, default_type="Channels",
                                  form="[strength, Channels]")
            for p, v in self.reg_regims.items()}

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        for p, r in self.regimes.items():
            w = check_regime_fits(r, p, params, self.GROUP_TYPES)
            n = num_groups(w.shape, "Channels")
            if n < 2:
                raise ComponentArgError(
                    f"reg_regims.{p}", f"parameter {p!r} of shape {tuple(w.shape)} has {n} input channel; "
                                       "valid: a parameter with at least 2 channels (the variance "
                                       "of one norm is undefined)")

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for p, r in self.regimes.items():
            norms = group_norms(require_param(params, p, type(self).__name__), "Channels", "l2")
            term = r.strength / norms.var()
            total = term if total is None else total + term
        return total if total is not None else _zero_like(params, self.regimes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, params={len(self.regimes)})"
