"""The architecture registry: name -> (constructor, dataset), and the datasets' input facts.

The datasets' facts (input shape, classes) come from the one dataset table, ``compressor.data.catalog``.

Every model the zoo can build is registered here under a lower-case name, either by the
``@architecture`` decorator in its family module or by a user's ``register_model``. torchvision's
classification models join lazily, the first time a name is looked up that we do not define or the
full list is asked for, and only when torchvision imports; nothing here imports it eagerly.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import torch.nn as nn

from ..data.catalog import CATALOG, MODEL_DATASETS
from ..errors import CompressorError, listing, suggest
from .torchvision_models import TorchvisionBuilder, torchvision_models, torchvision_names

# The torchvision names are offered twice: always as 'tv_<name>', and also under the plain name
# when no native or user model already uses it (ours win, as in Distiller: its resnets override
# torchvision's).
TORCHVISION_PREFIX = "tv_"


class ModelZooError(CompressorError, ValueError):
    """A model cannot be built as asked (wrong dataset, no pretrained weights, bad registration)."""


class UnknownArchError(ModelZooError, KeyError):
    """The architecture name is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class DatasetInfo(NamedTuple):
    input_shape: Tuple[int, int, int]
    num_classes: int


# The datasets models are built for, as the zoo describes them: a view of the one dataset table,
# compressor.data.catalog (digits is read by the data layer but served to MNIST models).
DATASETS: Dict[str, DatasetInfo] = {name: DatasetInfo(CATALOG[name].input_shape,
                                                      CATALOG[name].num_classes)
                                    for name in MODEL_DATASETS}


class ArchSpec(NamedTuple):
    """What ``ARCHITECTURES[name]`` holds: unpack as ``ctor, dataset = ARCHITECTURES[name]``."""
    ctor: Callable[..., nn.Module]
    dataset: str


_NATIVE: Dict[str, ArchSpec] = {}
# Native architectures whose parameter names equal a torchvision model's, so that model's
# pretrained weights load into ours with strict=True: our name -> torchvision name.
_TORCHVISION_WEIGHTS: Dict[str, str] = {}


def _check_dataset(dataset: str) -> str:
    key = str(dataset).lower()
    if key not in DATASETS:
        raise ModelZooError(f"unknown dataset '{dataset}'{suggest(key, DATASETS)}; "
                            f"known: {listing(DATASETS)}")
    return key


def register_model(name: str, ctor: Callable[..., nn.Module], dataset: str, *,
                   replace: bool = False) -> Callable[..., nn.Module]:
    """Make ``create_model(name)`` call ``ctor(**kwargs)``; ``dataset`` is its default dataset.

    Names are case-insensitive. Registering a name twice is an error unless ``replace=True``.
    Returns ``ctor`` so it can be used inside a decorator.
    """
    key = str(name).lower()
    if not key or key.startswith(TORCHVISION_PREFIX):
        raise ModelZooError(f"cannot register '{name}': names starting with "
                            f"'{TORCHVISION_PREFIX}' are reserved for torchvision's models")
    if not callable(ctor):
        raise ModelZooError(f"cannot register '{name}': the constructor {ctor!r} is not callable")
    ds = _check_dataset(dataset)
    if key in _NATIVE and not replace and _NATIVE[key].ctor is not ctor:
        raise ModelZooError(f"architecture '{key}' is already registered "
                            "(pass replace=True to override it)")
    _NATIVE[key] = ArchSpec(ctor, ds)
    if replace:
        _TORCHVISION_WEIGHTS.pop(key, None)
    return ctor


def architecture(name: str, dataset: str, torchvision_weights: Optional[str] = None):
    """Decorator the family modules use to register a built-in constructor."""
    def add(ctor):
        register_model(name, ctor, dataset)
        if torchvision_weights:
            _TORCHVISION_WEIGHTS[name.lower()] = torchvision_weights
        return ctor
    return add


def _torchvision_lookup(key: str) -> Optional[ArchSpec]:
    names = torchvision_names()
    if not names:
        return None
    if key.startswith(TORCHVISION_PREFIX):
        key = key[len(TORCHVISION_PREFIX):]
    if key in names:
        return ArchSpec(TorchvisionBuilder(key), "imagenet")
    return None


# ---- the public mapping ----------------------------------------------------------------------

class _Architectures(Mapping):
    """Read-only, case-insensitive view: native and user models, then torchvision's (lazily)."""

    def __getitem__(self, name: str) -> ArchSpec:
        key = str(name).lower()
        if key in _NATIVE:
            return _NATIVE[key]
        spec = _torchvision_lookup(key)
        if spec is None:
            raise UnknownArchError(_unknown_message(name))
        return spec

    def __iter__(self) -> Iterator[str]:
        return iter(list_architectures())

    def __len__(self) -> int:
        return len(list_architectures())

    def __repr__(self) -> str:
        return f"ARCHITECTURES({list_architectures()!r})"


ARCHITECTURES: Mapping[str, ArchSpec] = _Architectures()


def list_architectures(include_torchvision: bool = True) -> List[str]:
    """Every name ``create_model`` accepts, sorted; torchvision's only when it imports."""
    names = set(_NATIVE)
    if include_torchvision:
        for n in torchvision_names():
            names.add(TORCHVISION_PREFIX + n)
            names.add(n)
    return sorted(names)


def _unknown_message(name: str) -> str:
    known = list_architectures()
    return (f"unknown architecture '{name}'{suggest(str(name).lower(), known)}; "
            f"known: {listing(known, limit=len(known))}")


def dataset_of(arch: str) -> str:
    """'mnist', 'cifar10' or 'imagenet': the registered dataset, else Distiller's name rule.

    The rule, for names not registered: a name containing 'cifar' is CIFAR-10, one containing
    'mnist' is MNIST, anything else is ImageNet.
    """
    key = str(arch).lower()
    if key in _NATIVE:
        return _NATIVE[key].dataset
    if "cifar" in key:
        return "cifar10"
    if "mnist" in key:
        return "mnist"
    return "imagenet"


def input_shape(dataset: str) -> Tuple[int, int, int]:
    """(C, H, W) of one input image of ``dataset``."""
    return DATASETS[_check_dataset(dataset)].input_shape


def num_classes(dataset: str) -> int:
    """The number of classes of ``dataset``."""
    return DATASETS[_check_dataset(dataset)].num_classes


def create_model(arch: str, dataset: Optional[str] = None, pretrained: bool = False,
                 **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` (case-insensitive) for ``dataset`` (default: its own).

    ``pretrained=True`` loads torchvision's ImageNet weights, into torchvision's own model or into
    ours where our parameter names match torchvision's (resnet*, resnext*, wide_resnet*, alexnet);
    it needs torchvision to import. ``kwargs`` go to the constructor (e.g. ``num_classes``).
    """
    spec = ARCHITECTURES[arch]  # raises UnknownArchError with the list and a suggestion
    key = str(arch).lower()
    if dataset is not None:
        ds = _check_dataset(dataset)
        if ds != spec.dataset:
            same = [n for n in list_architectures(include_torchvision=False)
                    if _NATIVE[n].dataset == ds]
            raise ModelZooError(f"'{key}' is built for {spec.dataset}, not {ds}; "
                                f"{ds} models: {listing(same, limit=len(same))}")
    if not pretrained:
        return spec.ctor(**kwargs)
    if isinstance(spec.ctor, TorchvisionBuilder):
        return spec.ctor(pretrained=True, **kwargs)
    tv_name = _TORCHVISION_WEIGHTS.get(key)
    if tv_name is None:
        raise ModelZooError(f"'{key}' has no pretrained weights: only torchvision's ImageNet "
                            f"models and ours that mirror them "
                            f"({listing(_TORCHVISION_WEIGHTS, limit=len(_TORCHVISION_WEIGHTS))}) "
                            "can load them")
    if torchvision_models() is None:
        raise ModelZooError(f"pretrained weights for '{key}' come from torchvision, which is not "
                            "installed or does not import beside this torch; install a torchvision "
                            "that matches your torch, or train from scratch")
    if kwargs.get("num_classes", 1000) != 1000:
        raise ModelZooError(f"pretrained '{key}' has 1000 classes; build it with pretrained=True "
                            "and replace its classifier to change that")
    model = spec.ctor(**kwargs)
    weights = TorchvisionBuilder(tv_name)(pretrained=True).state_dict()
    model.load_state_dict(weights, strict=True)
    return model
