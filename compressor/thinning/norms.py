"""Layer norms over channels that are told the mask, so zero channels can be removed exactly.

A LayerNorm over the channel dimension (ConvNeXt's ``LayerNorm2d`` and the one inside each block,
Swin's and ViT's on the residual stream) counts a zero channel in its mean and variance: removing
the channel changes every output, so a plain LayerNorm blocks thinning of the channels it reads.
Here the LayerNorm is *told the mask* instead: once the structured masks make a channel exactly
zero before it (every filter producing it masked, nothing adding to it), it becomes a
``MaskedLayerNorm`` that normalizes over the other channels only and outputs exactly 0 on the
excluded ones. The masked network then computes what a plain ``nn.LayerNorm`` of the kept width
computes, so thinning removes those channels exactly, and turns the module back into its own class.

This is a change of the function while the network is masked (the mean and variance no longer
count the zero channels), as a pruned channel changes it elsewhere; with nothing excluded the
module calls ``F.layer_norm`` exactly as before. ``tell_norms`` does it; the scheduler's mask store
calls it after every change of the masks (``MaskStore.listeners``), and after loading masks from a
checkpoint, so a resumed run has the same semantics. The exclusion is a non-persistent buffer
(``kept``): state dicts keep their keys, and a checkpoint of a thinned model replays as before.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..graph.nodes import qualified_name
from ..graph.optables import LN_CHANNEL_DIM
from ..masks import unwrap


class MaskedLayerNorm(nn.LayerNorm):
    """A LayerNorm over one channel dimension (``channel_dim``: -1, or 1 for channels-first
    ``LayerNorm2d``) that normalizes over the channels ``kept`` says and outputs 0 on the others.

    Made in place from an existing LayerNorm (``from_layer_norm``): the same object and Parameter
    objects, so optimizers, mask stores and hooks keep working."""

    graph_leaf = True   # one node in compressor's traces (its rule in graph.module_rules)
    channel_dim: int
    plain_class: type

    @classmethod
    def from_layer_norm(cls, mod: nn.LayerNorm, channel_dim: int) -> "MaskedLayerNorm":
        if not isinstance(mod, cls):
            mod.plain_class = type(mod)
            mod.channel_dim = channel_dim
            n = mod.normalized_shape[0]
            dev = mod.weight.device if mod.weight is not None else None
            mod.register_buffer("kept", torch.ones(n, dtype=torch.bool, device=dev),
                                persistent=False)
            mod.__class__ = cls
        return mod

    def exclude(self, positions: List[int]) -> None:
        """Stop normalizing over these channel positions (they are only ever added)."""
        if positions:
            self.kept[torch.as_tensor(positions, dtype=torch.long, device=self.kept.device)] = False

    def restore_class(self) -> nn.LayerNorm:
        """Back to the plain class once every channel is kept (after thinning)."""
        if bool(self.kept.all()):
            plain = self.plain_class
            del self._buffers["kept"]
            del self.plain_class, self.channel_dim
            self.__class__ = plain
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cd = self.channel_dim
        y = x.movedim(cd, -1) if cd != -1 else x
        if bool(self.kept.all()):
            y = F.layer_norm(y, self.normalized_shape, self.weight, self.bias, self.eps)
        else:
            idx = self.kept.nonzero().flatten()
            w = None if self.weight is None else self.weight.index_select(0, idx)
            b = None if self.bias is None else self.bias.index_select(0, idx)
            part = F.layer_norm(y.index_select(-1, idx), (idx.numel(),), w, b, self.eps)
            y = y.new_zeros(y.shape).index_copy(-1, idx, part)
        return y.movedim(-1, cd) if cd != -1 else y

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, channel_dim={self.channel_dim}, "
                f"kept={int(self.kept.sum())}")


def channel_dim_of(mod: nn.Module) -> Optional[int]:
    """The dim a LayerNorm class normalizes as channels (``optables.LN_CHANNEL_DIM``), or None
    for a class we do not know (its own forward may do anything) or a multi-dim shape."""
    if isinstance(mod, MaskedLayerNorm):
        return mod.channel_dim
    if not isinstance(mod, nn.LayerNorm) or len(mod.normalized_shape) != 1:
        return None
    return LN_CHANNEL_DIM.get(qualified_name(type(mod)))


def _zero_filter_classes(graph, model: nn.Module) -> set:
    """Roots of the classes that are exactly zero in the masked network: every producer's filter
    and bias entry zero, nothing blocking or dirtying them."""
    tensors = dict(model.named_parameters())
    zero: Dict[int, bool] = {}
    for p in graph.producers:
        w = tensors.get(p.weight)
        if w is None:
            continue
        nz = w.detach().ne(0).movedim(p.out_dim, 0).reshape(w.shape[p.out_dim], -1).any(1)
        if p.bias and p.bias in tensors:
            nz = nz | tensors[p.bias].detach().ne(0)
        for r, z in zip(graph.roots(p.ids), (~nz).tolist()):
            zero[r] = zero.get(r, True) and z
    return {r for r, z in zero.items() if z and r not in graph.hard and r not in graph.soft
            and r not in graph.dirty}


def tell_norms(model: nn.Module, example_input=None) -> Dict[str, int]:
    """Tell every LayerNorm over channels which of its input channels the masks made exactly zero
    (see the module docstring); returns {LayerNorm: channels it now excludes} for those that
    exclude any. Raises what the channel analysis raises (an untraceable model)."""
    from ..graph import analyze_graph
    from ..graph.blocks import is_hf_model
    target = unwrap(model)
    if is_hf_model(target) or not any(channel_dim_of(m) is not None for m in target.modules()):
        return {}   # (captured block by block, Hugging Face models keep their norms plain)
    graph = analyze_graph(target, example_input)
    zero = _zero_filter_classes(graph, target)
    out: Dict[str, int] = {}
    for rec in graph.norms:
        positions = [k for k, r in enumerate(graph.roots(rec.ids)) if r in zero]
        mod = target.get_submodule(rec.module)
        if positions:
            MaskedLayerNorm.from_layer_norm(mod, rec.channel_dim).exclude(positions)
        if isinstance(mod, MaskedLayerNorm):
            n = int((~mod.kept).sum())
            if n:
                out[rec.module] = n
    return out


def norm_listener(model: nn.Module):
    """A ``MaskStore`` listener that calls ``tell_norms`` when the masks changed; silent when the
    model cannot be analysed (thinning then refuses with the reason)."""
    from ..errors import CompressorError

    def listen() -> None:
        try:
            tell_norms(model)
        except CompressorError:
            pass
    return listen


def restrict_norms(model: nn.Module, keeps: Dict[str, List[int]]) -> None:
    """After thinning: each told LayerNorm keeps the exclusion of the channels it still has, and
    becomes its plain class again when it excludes none."""
    target = unwrap(model)
    for name, keep in keeps.items():
        mod = target.get_submodule(name)
        if isinstance(mod, MaskedLayerNorm):
            if len(keep) != mod.kept.numel():
                mod.kept = mod.kept[torch.as_tensor(keep, dtype=torch.long,
                                                    device=mod.kept.device)]
            mod.restore_class()
    for mod in target.modules():
        if isinstance(mod, MaskedLayerNorm) and mod.kept.numel() == mod.normalized_shape[0]:
            mod.restore_class()
