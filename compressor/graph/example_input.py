"""The one example input of a model, shared by everything that follows its graph.

Filter coupling (``pruners.coupling``), the thinning extension (``thinning.policy``) and the dry run
need the shape of one input sample to propagate shapes through the traced graph. The schedule's
top-level ``input_shape`` (or ``file_config(..., example_input=...)``) records it here, per model;
without either, the builder installs ``record_first_input``, a forward pre-hook that records the
shape of the first input the model sees and removes itself. Components look the shape up with
``example_input_of`` and only then fall back to guessing the usual image sizes.
"""
from __future__ import annotations

import weakref
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..masks import unwrap

ExampleInput = Union[torch.Tensor, Sequence[int], None]

# Keyed by the unwrapped model, so a DataParallel / compiled wrapper and its module agree.
_SHAPES: "weakref.WeakKeyDictionary[nn.Module, Tuple[int, ...]]" = weakref.WeakKeyDictionary()


def as_sample_shape(example: ExampleInput) -> Optional[Tuple[int, ...]]:
    """The shape of one sample: a tensor's shape without its batch dimension, or the shape given."""
    if example is None:
        return None
    if isinstance(example, torch.Tensor):
        if example.dim() < 1:
            raise ValueError("example_input must be a batch of at least one sample; got a scalar tensor")
        return tuple(int(s) for s in example.shape[1:])
    shape = tuple(example) if isinstance(example, (list, tuple)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"example_input must be a tensor (a batch) or the shape of one sample as "
                         f"positive integers, e.g. (3, 32, 32); got {example!r}")
    return shape


def set_example_input(model: nn.Module, example: ExampleInput) -> None:
    """Record ``example`` (a batch tensor or a sample shape) as ``model``'s example input."""
    shape = as_sample_shape(example)
    if shape is None:
        _SHAPES.pop(unwrap(model), None)
    else:
        _SHAPES[unwrap(model)] = shape


def example_input_of(model: nn.Module) -> Optional[Tuple[int, ...]]:
    """The recorded sample shape of ``model`` (or of the module it wraps), or None."""
    return _SHAPES.get(unwrap(model))


def record_first_input(model: nn.Module, then: Optional[Callable[[Tuple[int, ...]], None]] = None):
    """Record the sample shape of the first tensor ``model`` is called with, then call ``then``.

    The hook removes itself after its first call and returns the handle (``handle.remove()`` to
    cancel). It sits on ``model`` as given (a DataParallel wrapper included), so it runs before the
    wrapper scatters the batch; ``then`` may change parameters in place before the forward uses them.
    """
    handle = None

    def hook(module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            return None   # not an input we can describe; wait for the next call
        handle.remove()
        shape = tuple(int(s) for s in x.shape[1:])
        if example_input_of(model) is None:
            _SHAPES[unwrap(model)] = shape
        if then is not None:
            then(shape)
        return None

    handle = model.register_forward_pre_hook(hook)
    return handle
