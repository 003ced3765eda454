"""torchvision's classification models, found lazily and only if torchvision imports.

Nothing here imports torchvision until a caller asks for its models (a lookup of a name the zoo
does not define itself, the full list of names, or pretrained weights). A torchvision that is
absent or broken beside the installed torch (as with torch 2.13) simply contributes no models.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

import torch.nn as nn

_CACHE: Dict[str, Any] = {}
# Lower-case callables of torchvision.models that build nothing (older releases lack list_models).
_NOT_MODELS = {"get_model", "get_model_builder", "get_model_weights", "get_weight", "list_models"}


def torchvision_models():
    """The ``torchvision.models`` module, or None; the import is tried at most once."""
    if "module" not in _CACHE:
        try:
            _CACHE["module"] = importlib.import_module("torchvision.models")
        except Exception:  # absent, or present but failing beside this torch: both mean "none"
            _CACHE["module"] = None
    return _CACHE["module"]


def torchvision_names() -> List[str]:
    """Sorted names of torchvision's classification builders; [] without torchvision."""
    if "names" not in _CACHE:
        tvm = torchvision_models()
        names: List[str] = []
        if tvm is not None:
            if hasattr(tvm, "list_models"):  # torchvision >= 0.14; module= keeps classification
                names = list(tvm.list_models(module=tvm))
            else:
                names = [n for n in dir(tvm) if n.islower() and not n.startswith("_")
                         and n not in _NOT_MODELS and callable(getattr(tvm, n))]
        _CACHE["names"] = sorted(n.lower() for n in names)
    return _CACHE["names"]


class TorchvisionBuilder:
    """Builds torchvision model ``name``; ``pretrained=True`` asks torchvision for its weights."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        tvm = torchvision_models()
        if tvm is None:
            from .registry import ModelZooError  # registry imports this module
            raise ModelZooError(f"'{self.name}' is a torchvision model, but torchvision does "
                                  "not import here")
        if pretrained:
            if hasattr(tvm, "get_model"):  # the 'weights' API (torchvision >= 0.14)
                return tvm.get_model(self.name, weights="DEFAULT", **kwargs)
            return getattr(tvm, self.name)(pretrained=True, **kwargs)
        return getattr(tvm, self.name)(**kwargs)

    def __repr__(self) -> str:
        return f"TorchvisionBuilder({self.name!r})"


def reset_cache() -> None:
    """Forget what was learned about torchvision (tests install a stand-in module)."""
    _CACHE.clear()
