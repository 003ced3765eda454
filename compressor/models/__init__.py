"""The model zoo: build an image classifier by name, as Distiller's ``--arch`` does.

``create_model('resnet20_cifar')`` builds one of our own networks (MNIST, CIFAR-10 and ImageNet
families, with the module names Distiller's schedule files use) or, when torchvision imports, any
torchvision classification model (``tv_<name>``, or the plain name where we define no such model).
``ARCHITECTURES`` maps every name to ``(constructor, dataset)``; ``register_model`` adds a user's
own; ``dataset_of``, ``input_shape`` and ``num_classes`` describe the datasets. Every built-in model
traces with ``torch.fx.symbolic_trace``.
"""
from __future__ import annotations

from .registry import (ARCHITECTURES, DATASETS, TORCHVISION_PREFIX, ArchSpec, ModelZooError,
                       UnknownArchError, create_model, dataset_of, input_shape, list_architectures,
                       num_classes, register_model)

# Importing the families registers their architectures.
from . import alexnet as _alexnet  # noqa: E402,F401
from . import lenet as _lenet  # noqa: E402,F401
from . import mobilenet as _mobilenet  # noqa: E402,F401
from . import plain_cifar as _plain_cifar  # noqa: E402,F401
from . import preact_resnet_cifar as _preact_resnet_cifar  # noqa: E402,F401
from . import resnet_cifar as _resnet_cifar  # noqa: E402,F401
from . import resnet_imagenet as _resnet_imagenet  # noqa: E402,F401
from . import simplenet as _simplenet  # noqa: E402,F401
from . import vgg_cifar as _vgg_cifar  # noqa: E402,F401

__all__ = [
    "ARCHITECTURES", "DATASETS", "TORCHVISION_PREFIX", "ArchSpec", "ModelZooError",
    "UnknownArchError", "create_model", "dataset_of", "input_shape", "list_architectures",
    "num_classes", "register_model",
]
