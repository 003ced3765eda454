"""One mask per pruned parameter, applied in place.

Parameter names and identities never change: a mask multiplies ``param.data`` in place, so the
optimizer keeps the same tensors. Masks are kept in the parameter's dtype and device so that all of
them are applied with one fused ``torch._foreach_mul_`` call per step (this is the scheduler's hot
path). Masks are plain tensors; the store's ``state_dict`` holds them as bool tensors.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from .errors import CheckpointError


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or \
                getattr(model, "is_wrapper", False):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


_WRAPPER_SEGMENTS = frozenset(("module", "_orig_mod"))


def normalize_name(name: str) -> str:
    """A parameter name without the segments wrappers add: DataParallel/DDP's ``module.`` and
    ``torch.compile``'s ``_orig_mod.`` (a compiled submodule's parameters carry it), so masks saved
    from a wrapped model load into a plain one and back."""
    if "module" not in name and "_orig_mod" not in name:
        return name
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


class MaskStore:
    """Masks of a model's parameters, by name, with Distiller's per-parameter switches.

    ``forward_only`` names are masked only before the forward pass (``mask_on_forward_only``), not
    after the optimizer step, so the dense weights keep learning.
    """

    def __init__(self, model: nn.Module):
        self.params: Dict[str, nn.Parameter] = dict(unwrap(model).named_parameters())
        self.masks: Dict[str, torch.Tensor] = {}
        self.forward_only: set = set()
        self._grad_hooks: Dict[str, object] = {}
        self._fused: Optional[tuple] = None  # cached (params, masks) lists for the hot path
        # called (no arguments) once the masks changed and were applied: a LayerNorm over
        # channels is told which channels are zero (``compressor.thinning.norms``)
        self.listeners: List[Callable[[], None]] = []
        self._changed = False

    # -- editing -------------------------------------------------------------------------------
    def set(self, name: str, mask: Optional[torch.Tensor], intersect: bool = True) -> None:
        """Install ``mask`` (bool or 0/1) for ``name``; ``None`` removes it.

        With ``intersect`` the new mask is combined with the old one so masks only ever add zeros.
        """
        self._fused = None
        self._changed = True
        if mask is None:
            self.masks.pop(name, None)
            return
        param = self.params[name]
        if mask.shape != param.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, "
                             f"parameter has {tuple(param.shape)}")
        mask = mask.to(device=param.device, dtype=param.dtype)
        old = self.masks.get(name)
        if intersect and old is not None:
            mask = mask * old
        self.masks[name] = mask

    def remove(self, name: str) -> None:
        self.set(name, None)

    def rebind(self, model: nn.Module) -> None:
        """Point at the (possibly replaced) parameters of ``model``, e.g. after thinning."""
        self.params = dict(unwrap(model).named_parameters())
        self._fused = None

    # -- applying ------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, names: Optional[Iterable[str]] = None) -> None:
        """Multiply the named parameters (default: every masked one) by their masks."""
        names = self.masks if names is None else [n for n in names if n in self.masks]
        params = [self.params[n] for n in names]
        if params:
            torch._foreach_mul_(params, [self.masks[n] for n in names])
        self._notify()

    @torch.no_grad()
    def apply_after_step(self) -> None:
        """Re-zero pruned weights after the optimizer step (momentum, decay and Adam revive them)."""
        if self._fused is None:
            names = [n for n in self.masks if n not in self.forward_only]
            self._fused = ([self.params[n] for n in names], [self.masks[n] for n in names])
        params, masks = self._fused
        if params:
            torch._foreach_mul_(params, masks)
        if self._changed:
            self._notify()

    def _notify(self) -> None:
        if self._changed and self.listeners:
            self._changed = False
            for listen in list(self.listeners):
                listen()

    def set_forward_only(self, name: str, on: bool) -> None:
        self._fused = None
        (self.forward_only.add if on else self.forward_only.discard)(name)

    def mask_gradients(self, name: str, on: bool) -> None:
        """Zero the gradient of pruned weights (used with ``mask_on_forward_only``)."""
        handle = self._grad_hooks.pop(name, None)
        if handle is not None:
            handle.remove()
        if on:
            self._grad_hooks[name] = self.params[name].register_hook(
                lambda g, n=name: g * self.masks[n] if n in self.masks else g)

    # -- queries and state ---------------------------------------------------------------------
    def sparsity(self, name: str) -> float:
        mask = self.masks.get(name)
        return 0.0 if mask is None else 1.0 - float(mask.count_nonzero()) / mask.numel()

    def state_dict(self) -> dict:
        return {"masks": {normalize_name(n): m.detach().to("cpu", torch.bool).clone()
                          for n, m in self.masks.items()},
                "forward_only": sorted(normalize_name(n) for n in self.forward_only)}

    def load_state_dict(self, state: Mapping) -> None:
        """Replace the masks with saved ones; each must be a 0/1 tensor of its parameter's shape.

        Masks of other values are refused rather than loaded: a 0.5 would halve the weight at
        every step.
        """
        if not isinstance(state, Mapping) or not isinstance(state.get("masks", {}), Mapping):
            raise CheckpointError(f"masks must be a dict of parameter name to 0/1 tensor; got "
                                  f"{type(state.get('masks') if isinstance(state, Mapping) else state).__name__}")
        forward_only = state.get("forward_only", [])
        if not isinstance(forward_only, (list, tuple, set)) or not all(isinstance(n, str) for n in forward_only):
            raise CheckpointError("masks 'forward_only' must be a list of parameter names")
        by_norm = {normalize_name(n): n for n in self.params}
        masks = {}
        for key, mask in state.get("masks", {}).items():
            name = by_norm.get(normalize_name(key))
            if name is None:
                raise CheckpointError(f"mask for '{key}' has no parameter of that name in the model")
            if not isinstance(mask, torch.Tensor):
                raise CheckpointError(f"mask for '{key}' must be a tensor of 0/1; got {type(mask).__name__}")
            if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
                odd = mask[(mask != 0) & (mask != 1)].reshape(-1)[0].item()
                raise CheckpointError(f"mask for '{key}' must hold only 0 and 1; found {odd}")
            if tuple(mask.shape) != tuple(self.params[name].shape):
                raise CheckpointError(f"mask for '{key}' has shape {tuple(mask.shape)} but the "
                                      f"parameter has {tuple(self.params[name].shape)}")
            masks[name] = mask
        self.masks = {}
        for name, mask in masks.items():
            self.set(name, mask, intersect=False)
        self.forward_only = {by_norm[n] for n in forward_only if n in by_norm}
        self._fused = None
