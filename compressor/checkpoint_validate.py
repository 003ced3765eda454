"""Type and range checks of a read checkpoint's fields, so a crafted file is refused in one line.

A checkpoint passes ``torch.load``'s safe mode while holding values of the wrong type: an epoch as
text, ``extras`` as a list, an optimizer ``lr`` as text, a momentum buffer of the wrong shape. Left
alone these surface as tracebacks far from the file, or train silently wrong. Every field this
library or its apps read is checked here; unknown fields and unknown ``extras`` keys pass, so
newer files and other writers keep loading.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, List, Mapping

import torch

from .errors import CheckpointError

# optimizer hyper-parameters torch.optim keeps as numbers (``betas`` as a pair of them)
NUMERIC_HYPERPARAMS = ("lr", "initial_lr", "momentum", "dampening", "weight_decay", "eps", "alpha",
                       "lr_decay", "initial_accumulator_value", "rho", "max_lr", "min_lr")
# extras the trainer app writes and reads back on resume
COUNTERS = ("resume_epoch", "resume_minibatch", "resume_samples")
# a stopped epoch's running sums (``training.meters_state``): [total, count] pairs by name
METERS = ("loss", "overall", "top1", "top5")


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:40] + "...") if len(text) > 40 else text


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):   # torch allows a 0-dim tensor lr
        return value.dim() == 0 and value.dtype.is_floating_point and bool(torch.isfinite(value))
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_fields(ckpt: Mapping[str, Any], path: str) -> None:
    """Raise ``CheckpointError`` naming the first field of the wrong type or range."""
    epoch = ckpt.get("epoch")
    if epoch is not None and not (_is_int(epoch) and epoch >= -1):
        raise CheckpointError(f"{path}: 'epoch' must be an integer >= -1 (-1: stopped inside the "
                              f"first epoch); got {_shown(epoch)} ({type(epoch).__name__})")
    for key in ("arch", "dataset"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], str):
            raise CheckpointError(f"{path}: '{key}' must be a name (text); got {type(ckpt[key]).__name__}")
    state = ckpt["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' must be a dict of tensors; got {type(state).__name__}")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: state_dict['{bad}'] must be a tensor; got "
                              f"{type(state[bad]).__name__}")
    extras = ckpt.get("extras")
    if extras is not None:
        if not isinstance(extras, Mapping):
            raise CheckpointError(f"{path}: 'extras' must be a dict; got {type(extras).__name__}")
        for key in COUNTERS:
            if key in extras and not (_is_int(extras[key]) and extras[key] >= 0):
                raise CheckpointError(f"{path}: extras['{key}'] must be an integer >= 0; got "
                                      f"{_shown(extras[key])}")
        size = extras.get("resume_batch_size")
        if size is not None and not (_is_int(size) and size >= 1):
            raise CheckpointError(f"{path}: extras['resume_batch_size'] must be an integer >= 1; "
                                  f"got {_shown(size)}")
        if extras.get("resume_meters") is not None:
            _check_meters(extras["resume_meters"], path)
        if extras.get("seed") is not None and not _is_int(extras["seed"]):
            raise CheckpointError(f"{path}: extras['seed'] must be an integer; got {_shown(extras['seed'])}")
        rng = extras.get("rng_state")
        if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
            raise CheckpointError(f"{path}: extras['rng_state'] must be a 1-d uint8 tensor "
                                  f"(torch.get_rng_state()); got {type(rng).__name__}")
        for key in ("history", "metrics"):
            if extras.get(key) is not None and not isinstance(extras[key], list):
                raise CheckpointError(f"{path}: extras['{key}'] must be a list; got {type(extras[key]).__name__}")
    for key in ("compression_sched",):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], Mapping):
            raise CheckpointError(f"{path}: '{key}' must be a dict; got {type(ckpt[key]).__name__}")
    if ckpt.get("thinning_recipes") is not None and not isinstance(ckpt["thinning_recipes"], (list, tuple)):
        raise CheckpointError(f"{path}: 'thinning_recipes' must be a list; got "
                              f"{type(ckpt['thinning_recipes']).__name__}")
    if ckpt.get("optimizer_state_dict") is not None:
        _check_optimizer_state(ckpt["optimizer_state_dict"], path)


def _is_pair(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and _is_number(value[0])
            and _is_int(value[1]) and value[1] >= 0)


def _check_meters(meters: Any, path: str) -> None:
    """The running sums of a stopped epoch: a dict of [total, count] pairs, components alike."""
    where = f"{path}: extras['resume_meters']"
    if not isinstance(meters, Mapping):
        raise CheckpointError(f"{where} must be a dict; got {type(meters).__name__}")
    for key in METERS:
        if key in meters and not _is_pair(meters[key]):
            raise CheckpointError(f"{where}['{key}'] must be [finite total, integer count >= 0]; "
                                  f"got {_shown(meters[key])}")
    components = meters.get("components", {})
    if not isinstance(components, Mapping) or not all(_is_pair(v) for v in components.values()):
        raise CheckpointError(f"{where}['components'] must map names to [finite total, integer "
                              f"count >= 0] pairs; got {_shown(components)}")
    if "seconds" in meters and not _is_number(meters["seconds"]):
        raise CheckpointError(f"{where}['seconds'] must be a finite number; got {_shown(meters['seconds'])}")


def _check_optimizer_state(opt: Any, path: str) -> None:
    where = f"{path}: optimizer_state_dict"
    if not isinstance(opt, Mapping) or not isinstance(opt.get("state"), Mapping) \
            or not isinstance(opt.get("param_groups"), list):
        raise CheckpointError(f"{where} must be a dict with a 'state' dict and a 'param_groups' list")
    for i, group in enumerate(opt["param_groups"]):
        if not isinstance(group, Mapping) or not isinstance(group.get("params"), list) \
                or not all(_is_int(p) for p in group["params"]):
            raise CheckpointError(f"{where} param_groups[{i}] must be a dict whose 'params' is a list "
                                  f"of integers")
        for key in NUMERIC_HYPERPARAMS:
            if key in group and not _is_number(group[key]):
                raise CheckpointError(f"{where} param_groups[{i}]['{key}'] must be a finite number; "
                                      f"got {_shown(group[key])} ({type(group[key]).__name__})")
        betas = group.get("betas")
        if betas is not None and not (isinstance(betas, (list, tuple)) and len(betas) == 2
                                      and all(_is_number(b) for b in betas)):
            raise CheckpointError(f"{where} param_groups[{i}]['betas'] must be two finite numbers; "
                                  f"got {_shown(betas)}")
    for pid, entry in opt["state"].items():
        if not isinstance(entry, Mapping):
            raise CheckpointError(f"{where} state[{pid!r}] must be a dict; got {type(entry).__name__}")


def check_optimizer_fits(opt: Mapping[str, Any], params: Iterable[torch.Tensor], path: str) -> None:
    """Each saved per-parameter buffer (momentum, Adam's moments) has its parameter's shape.

    torch's ``load_state_dict`` does not check this; the mismatch would surface as a traceback
    at the first step. ``params`` are the optimizer's parameters in its param_groups order.
    """
    ids: List[Any] = [p for g in opt["param_groups"] for p in g["params"]]
    shapes = {pid: tuple(p.shape) for pid, p in zip(ids, params)}
    for pid, entry in opt["state"].items():
        shape = shapes.get(pid)
        if shape is None:
            continue   # torch refuses ids outside the groups itself
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                raise CheckpointError(f"{path}: optimizer state '{name}' of parameter {pid} has shape "
                                      f"{tuple(value.shape)}, the parameter has {shape}")
