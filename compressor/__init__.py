"""compressor: compress PyTorch networks while they train, driven by YAML schedules.

The porting contract with Distiller: ``file_config``, ``dict_config``, ``CompressionScheduler``,
``weights_sparsity_summary``, ``sparsity`` and ``density`` behave as Distiller's did.
Importing the package registers every built-in pruner, regularizer, LR scheduler and extension
(thinning, knowledge distillation); it has no other side effects.
"""
from . import lr_schedulers as _lr_schedulers  # noqa: F401  (registers LR schedulers)
from . import pruners as _pruners  # noqa: F401  (registers pruners)
from . import regularizers as _regularizers  # noqa: F401  (registers regularizers)
from . import thinning as _thinning  # noqa: F401  (registers the thinning extensions)
from . import distillation as _distillation  # noqa: F401  (registers the KD extension)
from .distillation import DistillationLossWeights, KnowledgeDistillationPolicy
from .builder import dict_config, file_config, match_names
from .config import load as load_schedule
from .errors import CheckpointError, CompressorError, ScheduleError, ThinningError
from .events import StepContext
from .masks import MaskStore, normalize_name, unwrap
from .metrics import density, sparsity
from .policies import (LossComponent, LRPolicy, PolicyLoss, PruningPolicy, RegularizationPolicy,
                       ScheduledTrainingPolicy)
from .policy_options import PolicyOptions
from .registry import EXTENSIONS, LR_SCHEDULERS, PRUNERS, REGULARIZERS
from .scheduler import CompressionScheduler
from .summary import weights_sparsity_summary

__version__ = "0.1.0"

__all__ = [
    "dict_config", "file_config", "match_names", "load_schedule", "CheckpointError",
    "CompressorError", "ScheduleError", "ThinningError", "MaskStore", "normalize_name", "unwrap",
    "density", "sparsity", "LossComponent", "LRPolicy", "PolicyLoss", "PruningPolicy",
    "RegularizationPolicy", "ScheduledTrainingPolicy", "EXTENSIONS", "LR_SCHEDULERS", "PRUNERS",
    "REGULARIZERS", "CompressionScheduler", "weights_sparsity_summary",
    "StepContext", "PolicyOptions", "KnowledgeDistillationPolicy", "DistillationLossWeights",
]
