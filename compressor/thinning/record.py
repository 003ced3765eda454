"""Which recipes a model went through: the thinning package's own record, keyed by the model.

Whoever thins records here (``execute.replay``, for every recipe it applies; a checkpoint load
that finds the model already thinned sets the record), and whoever needs the history reads it:
``save_checkpoint`` writes ``recipes_of(model)`` and ``ElasticDDP`` rebuilds when its length
changes. The record is a ``WeakKeyDictionary`` keyed by the unwrapped model.

Distiller's code and its users' read ``model.thinning_recipes``, so a thinned model also carries
that attribute: a plain-data mirror of the record (a list of ``Recipe.to_dict()``, equal to a
checkpoint's ``thinning_recipes``), rewritten after every change to the record and never read
back, except when a model has no record yet but carries a mirror: a ``copy.deepcopy`` or an
unpickled copy of a thinned model, whose record is then rebuilt from it. It is a real list of
dicts so that it pickles and loads with ``weights_only=True`` as it always did.
"""
from __future__ import annotations

import weakref
from typing import Iterable, List, Mapping, Tuple, Union

from torch import nn

from .recipe import Recipe, as_recipe

ATTRIBUTE = "thinning_recipes"
_RECORD: "weakref.WeakKeyDictionary[nn.Module, List[Recipe]]" = weakref.WeakKeyDictionary()


def _log(model: nn.Module) -> List[Recipe]:
    log = _RECORD.get(model)
    if log is None:
        mirror = model.__dict__.get(ATTRIBUTE)   # a copy of a thinned model brought its mirror
        log = [as_recipe(r, f"{type(model).__name__}.{ATTRIBUTE}[{i}]")
               for i, r in enumerate(mirror)] if isinstance(mirror, list) else []
        _RECORD[model] = log
    return log


def _mirror(model: nn.Module, log: List[Recipe]) -> None:
    object.__setattr__(model, ATTRIBUTE, [r.to_dict() for r in log])


def recipes_of(model: nn.Module) -> Tuple[Recipe, ...]:
    """The recipes applied to ``model`` (unwrapped), in order; empty for a model never thinned."""
    if model not in _RECORD and not isinstance(model.__dict__.get(ATTRIBUTE), list):
        return ()   # nothing to record: don't create an entry for every module asked about
    return tuple(_log(model))


def record_recipe(model: nn.Module, recipe: Union[Recipe, Mapping]) -> None:
    """Note that ``recipe`` was applied to ``model`` (unwrapped); a copy is kept."""
    log = _log(model)
    log.append(Recipe.from_dict(as_recipe(recipe).to_dict()))
    _mirror(model, log)


def set_recipes(model: nn.Module, recipes: Iterable[Union[Recipe, Mapping]]) -> None:
    """Make ``recipes`` the record of ``model`` (unwrapped), e.g. a checkpoint's for a model that
    already went through them."""
    log = _log(model)
    log[:] = [as_recipe(r, f"thinning recipe {i + 1}") for i, r in enumerate(recipes)]
    _mirror(model, log)
