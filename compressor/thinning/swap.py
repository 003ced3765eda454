"""Changing a module's class in place, and the index buffers thin modules keep.

Thin attention (``mha``), thin ShuffleNet units (``shuffle``) and channel-selecting batch norms
(``selection``) change a module's class rather than replacing the module, so every reference to
it and its parameters stays valid (optimizers, mask stores, ``state_dict`` keys)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn


def swap_class(mod: nn.Module, mixin: type, cache: Dict[type, type]) -> nn.Module:
    """Make ``mod`` an instance of ``Thin<its class>``, a subclass of ``(mixin, its class)`` made
    on first use (kept in ``cache``, named in the mixin's module); returns it."""
    cls = type(mod)
    if cls not in cache:
        cache[cls] = type(f"Thin{cls.__name__}", (mixin, cls), {"__module__": mixin.__module__})
    mod.__class__ = cache[cls]
    return mod


def set_index_buffer(mod: nn.Module, name: str, index: Sequence[int], persistent: bool = True
                     ) -> None:
    """Store ``index`` as the long buffer ``name`` of ``mod``, on the device of its own tensors."""
    ref: Optional[torch.Tensor] = next(
        iter(list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
             + list(mod.parameters())), None)
    idx = torch.tensor(list(index), dtype=torch.long, device=ref.device if ref is not None else None)
    if name in mod._buffers:
        mod._buffers[name] = idx
    else:
        mod.register_buffer(name, idx, persistent=persistent)
