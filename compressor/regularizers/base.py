"""The interface every regularizer implements.

A regularizer is built by the builder from a schedule entry. The builder resolves the names in
``reg_regims`` (exact names, globs, ``'*'``) to the model's real parameter names before calling the
constructor, so a regularizer only ever sees concrete parameter names. It never touches the model:
the policy hands it the parameters it asked for.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch


class Regularizer:
    """Base class. Subclasses implement ``loss`` and, when they support it, ``threshold_masks``."""

    def __init__(self, name: str, reg_regims: Mapping, threshold_criteria: Optional[str] = None):
        self.name = name
        self.reg_regims = dict(reg_regims)
        self.threshold_criteria = threshold_criteria

    @property
    def param_names(self) -> list:
        """The parameters this regularizer acts on (keys of ``reg_regims``)."""
        return list(self.reg_regims)

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ComponentArgError`` if a regime does not fit its parameter's shape.

        Called once by the builder, before training, with every parameter in ``reg_regims``.
        """

    def loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The penalty to add to the training loss (a scalar tensor that carries gradients)."""
        raise NotImplementedError

    def threshold_masks(self, params: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Masks zeroing the groups whose statistic falls at or below the threshold.

        Empty when ``threshold_criteria`` is None.
        """
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
