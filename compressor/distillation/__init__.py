"""Knowledge distillation as a schedule policy (Hinton et al., 2015; Distiller's semantics).

``KnowledgeDistillationPolicy`` (a YAML extension and a library class) adds a frozen teacher's
soft targets to the loss on its epochs, and optionally matches intermediate features through
learned projections. ``load_teacher`` builds a teacher from the model zoo or a checkpoint of this
project (thinning recipes replayed); ``distillation_kl`` is the loss term on logits.
docs/methods/knowledge-distillation.md is the tutorial.
"""
from .features import FeatureDistillation
from .loss import combine, distillation_kl
from .policy import DISTILL_LOSS, DistillationLossWeights, KnowledgeDistillationPolicy
from .teacher import DistillationError, check_classes, freeze, load_teacher

__all__ = ["FeatureDistillation", "combine", "distillation_kl", "DISTILL_LOSS",
           "DistillationLossWeights", "KnowledgeDistillationPolicy", "DistillationError",
           "check_classes", "freeze", "load_teacher"]
