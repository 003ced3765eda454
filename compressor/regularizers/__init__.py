"""Regularizers: loss terms that push weights (or whole structures) toward zero during training.

Importing this package registers ``L1Regularizer``, ``GroupLassoRegularizer`` and
``GroupVarianceRegularizer`` in ``compressor.registry.REGULARIZERS``, under the names Distiller
schedules use in ``class:``.
"""
from .base import Regularizer
from .group_lasso import GroupLassoRegularizer
from .group_variance import GroupVarianceRegularizer
from .l1 import L1Regularizer

__all__ = ["Regularizer", "L1Regularizer", "GroupLassoRegularizer", "GroupVarianceRegularizer"]
