"""Pruners: objects that compute masks. Importing this package registers them all."""
from .base import PruneContext, Pruner, level_mask, threshold_mask
from .criteria import (APoZ, BatchNormGamma, Criterion, L1Magnitude, L2Magnitude, MeanActivation,
                       RandomScore, Taylor, make_criterion)
from .granularity import Granularity
from .magnitude import (AutomatedGradualPruner, GlobalAutomatedGradualPruner,
                        MagnitudeParameterPruner, SensitivityPruner, SparsityLevelParameterPruner)
from .autopruner import AutoPruner, ChannelGate
from .nm_sparsity import NMSparsityPruner, nm_mask
from .oneshot import CalibratedPruner, OneShotMagnitudePruner, SparseGPTPruner, WandaPruner
from .slimming import NetworkSlimmingPruner
from .splicing import SplicingPruner
from .heads import AttentionHeadPruner, HiddenSizePruner, MLPNeuronPruner
from .structured import (AGPTarget, FixedTarget, RandomLevelTarget, RankedStructurePruner,
                         structures_to_prune)
from .structured_names import (ActivationAPoZRankedFilterPruner, ActivationAPoZRankedFilterPruner_AGP,
                               ActivationMeanRankedFilterPruner, ActivationMeanRankedFilterPruner_AGP,
                               BernoulliFilterPruner, BernoulliFilterPruner_AGP,
                               BNGammaRankedFilterPruner, BNGammaRankedFilterPruner_AGP,
                               GradientRankedFilterPruner, GradientRankedFilterPruner_AGP,
                               L1RankedStructureParameterPruner, L1RankedStructureParameterPruner_AGP,
                               L2RankedStructureParameterPruner, L2RankedStructureParameterPruner_AGP,
                               RandomLevelStructureParameterPruner, RandomRankedFilterPruner,
                               RandomRankedFilterPruner_AGP, RankedStructureParameterPruner,
                               StructuredAutomatedGradualPruner)

__all__ = ["PruneContext", "Pruner", "level_mask", "threshold_mask", "AutomatedGradualPruner",
           "GlobalAutomatedGradualPruner", "MagnitudeParameterPruner", "SensitivityPruner",
           "SparsityLevelParameterPruner", "SplicingPruner",
           # structured pruning: criteria, granularity, targets, the pruner and its YAML forms
           "Criterion", "L1Magnitude", "L2Magnitude", "BatchNormGamma", "APoZ", "MeanActivation",
           "Taylor", "RandomScore", "make_criterion", "Granularity", "FixedTarget", "AGPTarget",
           "RandomLevelTarget", "RankedStructurePruner", "structures_to_prune",
           "RankedStructureParameterPruner", "StructuredAutomatedGradualPruner",
           "L1RankedStructureParameterPruner", "L1RankedStructureParameterPruner_AGP",
           "L2RankedStructureParameterPruner", "L2RankedStructureParameterPruner_AGP",
           "ActivationAPoZRankedFilterPruner", "ActivationAPoZRankedFilterPruner_AGP",
           "ActivationMeanRankedFilterPruner", "ActivationMeanRankedFilterPruner_AGP",
           "GradientRankedFilterPruner", "GradientRankedFilterPruner_AGP",
           "RandomRankedFilterPruner", "RandomRankedFilterPruner_AGP",
           "BNGammaRankedFilterPruner", "BNGammaRankedFilterPruner_AGP",
           "BernoulliFilterPruner", "BernoulliFilterPruner_AGP",
           "RandomLevelStructureParameterPruner", "NMSparsityPruner", "nm_mask",
           "NetworkSlimmingPruner", "AutoPruner", "ChannelGate", "CalibratedPruner",
           "OneShotMagnitudePruner", "WandaPruner", "SparseGPTPruner"]
