"""Pruners: objects that compute masks. Importing this package registers them all."""
from .base import PruneContext, Pruner, level_mask, threshold_mask
from .magnitude import (AutomatedGradualPruner, GlobalAutomatedGradualPruner,
                        MagnitudeParameterPruner, SensitivityPruner, SparsityLevelParameterPruner)
from .splicing import SplicingPruner

__all__ = ["PruneContext", "Pruner", "level_mask", "threshold_mask", "AutomatedGradualPruner",
           "GlobalAutomatedGradualPruner", "MagnitudeParameterPruner", "SensitivityPruner",
           "SparsityLevelParameterPruner", "SplicingPruner"]
