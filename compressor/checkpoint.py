"""Checkpoints: atomic writes, safe reads, and restoring a model, optimizer and scheduler.

A checkpoint is a dict of tensors and plain data only (no pickled classes), so it loads with
``torch.load(..., weights_only=True)`` and can be read without this library. Writes go to a
temporary file in the same folder, are flushed to disk, then renamed over the target: a crash
mid-write leaves the previous checkpoint intact, never a partial file. Loading replays any thinning
recipes on the freshly built dense model before loading the weights (recipes the model already
has, judged by its current shapes, are not applied twice). Distiller's checkpoints load too: the
few classes they pickled are allowed by name and mapped to plain data (see
``checkpoint_distiller``), batch norms saved without ``num_batches_tracked`` get the model's own
counter, and DataParallel's ``module.`` prefixes are dropped.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .atomic import atomic_write
from . import checkpoint_distiller as distiller_format
from .checkpoint_digest import KEY as DIGEST_KEY, tensor_digest
from .checkpoint_validate import check_fields, check_optimizer_fits
from .errors import (CheckpointError, CheckpointNotFoundError, CheckpointWriteError,
                     OptimizerMismatchError, ThinningError)
from .masks import unwrap
from .scheduler import CompressionScheduler
from .thinning.execute import replay, shape_after
from .thinning.recipe import Recipe, as_recipe
from .thinning.record import recipes_of, set_recipes

FORMAT = "compressor-checkpoint"
VERSION = 1


def make_checkpoint(model: nn.Module, optimizer=None, scheduler=None, *, arch: Optional[str] = None,
                    dataset: Optional[str] = None, epoch: Optional[int] = None,
                    extras: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint dict: only tensors, numbers, strings, lists and dicts."""
    return {
        "format": FORMAT, "version": VERSION, "arch": arch, "dataset": dataset, "epoch": epoch,
        "state_dict": unwrap(model).state_dict(),
        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_type": type(optimizer).__name__ if optimizer is not None else None,
        "compression_sched": scheduler.state_dict() if scheduler is not None else None,
        "thinning_recipes": [r.to_dict() for r in recipes_of(unwrap(model))],
        "extras": dict(extras or {}),
    }


def save_checkpoint(path: str, model: nn.Module, optimizer=None, scheduler=None, **info) -> str:
    """Write a checkpoint atomically to ``path``, with a digest of its tensors; returns the path."""
    ckpt = make_checkpoint(model, optimizer, scheduler, **info)
    ckpt[DIGEST_KEY] = tensor_digest(ckpt)   # optional on read: older and Distiller's files lack it
    try:
        atomic_write(path, lambda f: torch.save(ckpt, f))   # removes its temporary file on failure
    except (OSError, RuntimeError) as e:
        if _cause_in(e, KeyboardInterrupt) is not None:   # Ctrl-C inside torch's writer
            raise KeyboardInterrupt from None
        cause = _cause_in(e, OSError)
        if cause is None:
            raise
        raise CheckpointWriteError(path, cause) from None
    return path


def _cause_in(error: Optional[BaseException], kind: type) -> Optional[BaseException]:
    """The ``kind`` exception behind ``error``: torch's zip writer turns a failed write into a
    RuntimeError ("unexpected pos ...") whose context is what the file raised: an OSError
    (ENOSPC, EDQUOT, EIO ...) or a KeyboardInterrupt."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, kind):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Load and validate a checkpoint file without executing anything from it.

    Only tensors and plain data are unpickled, plus, from Distiller's checkpoints, the names in
    ``checkpoint_distiller.ALLOWED_NAMES``, which resolve to inert stand-ins and come back as
    plain data (``optimizer_type`` as a class name, recipes as dicts). A missing file raises
    ``CheckpointNotFoundError``, which is also a ``FileNotFoundError``.
    """
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(path)
    try:
        with distiller_format.safe_globals():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).strip().splitlines()
        named = next((line.strip() for line in lines if "GLOBAL" in line), "")
        found = re.search(r"GLOBAL ([\w.]+)", named)
        if found:   # just the name: torch's advice to allow-list it is not advice for our users
            named = f"it names {found.group(1)}"
        if not named:   # not a pickle of objects: bytes that are no checkpoint at all
            raise CheckpointError(f"{path}: damaged or not a checkpoint (not a torch.save file)") from None
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects, which could run code when "
            f"loaded ({named}); compressor checkpoints hold only tensors and plain data, and "
            f"of Distiller's classes only ThinningRecipe and torch.optim classes are read") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({reason})") from None
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a compressor checkpoint (no 'state_dict' entry); "
                              f"found {type(ckpt).__name__}"
                              + (f" with keys {', '.join(map(str, list(ckpt)[:6]))}" if isinstance(ckpt, Mapping) else ""))
    if DIGEST_KEY in ckpt and ckpt[DIGEST_KEY] != tensor_digest(ckpt):
        raise CheckpointError(f"{path}: damaged: tensor checksum mismatch (a weight, optimizer or "
                              f"mask tensor differs from what was saved); use an intact copy")
    ckpt = distiller_format.plain(dict(ckpt), path)
    check_fields(ckpt, path)
    return ckpt


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str,
                  strict: bool = True) -> None:
    target = unwrap(model)
    own = target.state_dict()
    state = {k[7:] if k.startswith("module.") and k not in own else k: v for k, v in state.items()}
    for k in own:   # saved by torch < 0.4.1 (Distiller's older files): the counter did not exist
        stem = k[:-len("num_batches_tracked")]
        if k.endswith(".num_batches_tracked") and k not in state and stem + "running_mean" in state:
            state[k] = own[k].clone()   # what BatchNorm itself keeps when loading such a state
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not strict:   # like nn.Module.load_state_dict(strict=False): shapes must still fit
        missing, unexpected = [], []
        state = {k: v for k, v in state.items() if k in own}
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"{path}: weights do not fit the model ({'; '.join(parts)})")
    target.load_state_dict(state, strict=strict)


def _applied_prefix(model: nn.Module, recipes: List[Recipe]) -> int:
    """How many leading recipes ``model`` already went through, judged by its current shapes.

    After k recipes every tensor they touch has the shape those recipes leave, and every tensor
    only later recipes touch still has the shape the first of them expects. The largest such k
    wins; 0 for a dense model (and for a model that fits no prefix, so replay explains why).
    """
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for k in range(len(recipes), 0, -1):
        expected: Dict[str, List[int]] = {}
        try:
            for r in recipes[:k]:
                for name, change in r.tensors.items():
                    expected[name] = shape_after(expected.get(name, change.shape), change.ops, name)
        except ThinningError:
            continue   # these recipes do not compose: not this prefix
        for r in recipes[k:]:
            for name, change in r.tensors.items():
                expected.setdefault(name, list(change.shape))
        if all(name in tensors and list(tensors[name].shape) == shape
               for name, shape in expected.items()):
            return k
    return 0


def _replay_new(model: nn.Module, recipes: List[Any], path: str) -> None:
    """Replay the recipes ``model`` does not have yet (mapping Distiller's first)."""
    target = unwrap(model)
    if any(distiller_format.is_distiller_recipe(r) for r in recipes):
        if not all(distiller_format.is_distiller_recipe(r) for r in recipes):
            raise CheckpointError(f"{path}: mixes Distiller's thinning recipes with this library's")
        # directives already applied are dropped while mapping; the model keeps its own record
        recipes, done = list(distiller_format.to_recipes(target, recipes, path)), 0
    else:
        recipes = [as_recipe(r, f"{path}: thinning recipe {i + 1} of {len(recipes)}")
                   for i, r in enumerate(recipes)]   # malformed data is refused here, unchanged
        done = _applied_prefix(target, recipes)
        if done:   # the model went through these: its record is the checkpoint's
            set_recipes(target, recipes[:done])
    if recipes[done:]:
        replay(model, recipes[done:], optimizer=None)


def rebuild_optimizer(model: nn.Module, ckpt: Mapping[str, Any], path: str = "checkpoint"):
    """A new optimizer of the checkpoint's ``optimizer_type`` holding its saved state, or None.

    The type is looked up by class name among ``checkpoint_distiller.OPTIMIZERS`` (torch.optim's
    own classes), never imported from the file. None, with a warning, when the checkpoint has no
    optimizer state or names a class outside that list (Distiller returned None there too).
    """
    name, state = ckpt.get("optimizer_type"), ckpt.get("optimizer_state_dict")
    if state is None or not name:
        return None
    cls = distiller_format.OPTIMIZERS.get(name)
    if cls is None:
        warnings.warn(f"{path}: optimizer_type '{name}' is not a torch.optim class this library "
                      f"rebuilds ({', '.join(distiller_format.OPTIMIZERS)}); no optimizer loaded",
                      stacklevel=2)
        return None
    optimizer = cls(model.parameters(), lr=1.0)   # lr is required by SGD; the state replaces it
    check_optimizer_fits(state, [p for g in optimizer.param_groups for p in g["params"]], path)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
    return optimizer


def restore(ckpt: Mapping[str, Any], model: nn.Module, optimizer=None, scheduler=None,
            arch: Optional[str] = None, path: str = "checkpoint", strict: bool = True) -> None:
    """Put a read checkpoint's state into ``model`` (and optimizer and scheduler when given).

    Thinning recipes are replayed first, so a thinned checkpoint loads into a dense model built
    from its architecture. Fails before changing anything when the architecture does not match.
    """
    if arch is not None and ckpt.get("arch") not in (None, arch):
        raise CheckpointError(f"{path}: checkpoint is for architecture '{ckpt['arch']}', "
                              f"not '{arch}'")
    recipes = list(ckpt.get("thinning_recipes") or [])
    if recipes:
        _replay_new(model, recipes, path)
        if scheduler is not None:
            scheduler.store.rebind(model)
    _load_weights(model, ckpt["state_dict"], path, strict)
    if optimizer is not None and ckpt.get("optimizer_state_dict") is not None:
        saved_type = ckpt.get("optimizer_type")
        if saved_type and saved_type != type(optimizer).__name__:
            raise OptimizerMismatchError(path, saved_type, type(optimizer).__name__)
        check_optimizer_fits(ckpt["optimizer_state_dict"],
                             [p for g in optimizer.param_groups for p in g["params"]], path)
        try:
            optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
    if scheduler is not None and ckpt.get("compression_sched") is not None:
        try:
            scheduler.load_state_dict(ckpt["compression_sched"])
        except CheckpointError as e:   # the store and scheduler do not know the file's name
            raise CheckpointError(str(e) if str(e).startswith(path) else f"{path}: {e}") from None


def load_checkpoint(model: nn.Module, chkpt_file: str, optimizer=None,
                    model_device=None, lean_checkpoint: bool = False,
                    strict: bool = True) -> Tuple[nn.Module, Any, Any, int]:
    """Distiller's ``load_checkpoint``: returns (model, compression_scheduler, optimizer, start_epoch).

    The compression scheduler holds the saved masks (no policies: add them with ``file_config(...,
    scheduler=...)``). Without an ``optimizer``, one is rebuilt from the checkpoint's
    ``optimizer_type`` and state, as Distiller did (None when it has none); a given one is loaded
    instead. With ``lean_checkpoint`` only the weights are loaded (optimizer None, epoch 0).
    ``strict=False`` tolerates missing and unexpected weight names (shapes must still fit).
    """
    ckpt = read_checkpoint(chkpt_file)
    scheduler = None
    if not lean_checkpoint and ckpt.get("compression_sched") is not None:
        scheduler = CompressionScheduler(model)
    restore(ckpt, model, None if lean_checkpoint else optimizer, scheduler, path=chkpt_file, strict=strict)
    if model_device is not None:
        model.to(model_device)
    if lean_checkpoint:
        optimizer = None
    elif optimizer is None:   # after thinning and moving, so it holds the final parameters
        optimizer = rebuild_optimizer(model, ckpt, chkpt_file)
    epoch = ckpt.get("epoch")
    return model, scheduler, optimizer, (epoch + 1 if isinstance(epoch, int) and not lean_checkpoint else 0)
