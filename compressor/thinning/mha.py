"""Attention modules with fewer heads: ``ThinMultiheadAttention`` and torchvision's window attention.

``nn.MultiheadAttention`` computes through ``F.multi_head_attention_forward``, which needs
``num_heads * head_dim == embed_dim ==`` the width of its input, so a head cannot go without the
residual stream going too. ``ThinMultiheadAttention`` is the same module (a subclass, same
parameters, same names, same forward signature and returns) whose forward takes its widths from
its tensors instead: q, k and v are ``F.linear`` of the input with the three ``num_heads *
head_dim``-row blocks of ``in_proj_weight`` (and ``in_proj_bias``), the heads attend with
``head_dim ** -0.5`` as the original does, and ``out_proj`` maps ``num_heads * head_dim`` back to
its own ``out_features``. So

* thinning removes heads (rows of each q/k/v block, columns of ``out_proj``) and sets
  ``num_heads``; ``head_dim`` stays;
* the input width (``in_proj_weight``'s columns, ``embed_dim``) and the output width
  (``out_proj``'s rows) may differ from ``num_heads * head_dim`` and may be thinned on their own
  (the residual stream of a ViT, if its norms allow it).

A thinning recipe that sets an attribute of a plain ``nn.MultiheadAttention`` makes it a
``ThinMultiheadAttention`` by changing its class in place (``make_thin``; the same object, the
same Parameter objects, as channel-selecting batch norms do), so ``replay`` turns the dense model
built before loading a checkpoint into the thinned one before the weights load.

Supported as in torchvision: packed projections (``kdim == vdim == embed_dim`` when built),
no ``add_bias_kv`` / ``add_zero_attn``; ``batch_first`` either way, batched or unbatched input,
``key_padding_mask``, 2-D ``attn_mask`` (a 3-D one must have ``batch * num_heads`` of the
thinned heads), ``need_weights`` (averaged or per head) and ``is_causal``.

torchvision's window attention has the same tie: Swin's ``shifted_window_attention`` takes the
head size as ``C // num_heads`` of its input width C, MaxViT's attention reshapes its heads back
to the input width. ``make_thin`` gives them (exact torchvision classes only) a subclass made on
first use, ``Thin<class name>``, whose forward takes the head size from ``head_dim`` (stored on
the module when it is made thin, from its dense widths) and the heads' width from ``num_heads *
head_dim`` (``n_heads`` for MaxViT): ``window_attention`` below is Swin's windowed attention
(padding to whole windows, cyclic shift with the -100 mask between regions, relative position
bias, V2's cosine attention with ``logit_scale``) written that way.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..graph.attention import MAXVIT, SWIN, SWIN_V2
from ..graph.nodes import qualified_name
from .swap import swap_class


def _additive(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A boolean mask (True: not attended) as 0 / -inf, a float one as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class ThinMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose inner width ``num_heads * head_dim`` is not tied to its
    input and output widths (see the module docstring). Built by ``make_thin`` from a thinned
    ``nn.MultiheadAttention``; not meant to be constructed directly."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        batched = query.dim() == 3
        if not batched:   # (L, E): one sample
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        h, d = self.num_heads, self.head_dim
        inner = h * d
        w, b = self.in_proj_weight, self.in_proj_bias
        parts = [F.linear(x, w[j * inner:(j + 1) * inner],
                          None if b is None else b[j * inner:(j + 1) * inner])
                 for j, x in enumerate((query, key, value))]
        n, lq, s = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (p.view(n, p.shape[1], h, d).transpose(1, 2) for p in parts)
        mask = _additive(attn_mask, q.dtype)
        if mask is not None:
            mask = mask.view(1, 1, lq, s) if mask.dim() == 2 else mask.view(n, h, lq, s)
        elif is_causal:
            mask = torch.zeros(lq, s, dtype=q.dtype, device=q.device).masked_fill(
                torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        kpm = _additive(key_padding_mask, q.dtype)
        if kpm is not None:
            kpm = kpm.view(n, 1, 1, s)
            mask = kpm if mask is None else mask + kpm
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * d ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            a = F.dropout(scores.softmax(-1), p=p)
            out = a @ v
            weights = a.mean(1) if average_attn_weights else a
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(n, lq, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _regions(size: int, window: int, shift: int, device) -> torch.Tensor:
    """Which of the (up to) three bands of a shifted axis each position is in."""
    pos = torch.arange(size, device=device)
    return (pos >= size - window).long() + (pos >= size - shift).long()


def window_attention(x: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                     bias: torch.Tensor, window_size: List[int], num_heads: int, head_dim: int,
                     shift_size: List[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                     qkv_bias: Optional[torch.Tensor] = None,
                     proj_bias: Optional[torch.Tensor] = None,
                     logit_scale: Optional[torch.Tensor] = None,
                     training: bool = False) -> torch.Tensor:
    """Swin's (shifted) window attention of ``x`` [B, H, W, C] with ``num_heads`` heads of
    ``head_dim`` (any C); returns [B, H, W, proj rows]."""
    n, hh, ww, c = x.shape
    wy, wx = window_size
    x = F.pad(x, (0, 0, 0, (-ww) % wx, 0, (-hh) % wy))
    ph, pw = x.shape[1], x.shape[2]
    sy = 0 if wy >= ph else shift_size[0]
    sx = 0 if wx >= pw else shift_size[1]
    if sy or sx:
        x = torch.roll(x, shifts=(-sy, -sx), dims=(1, 2))
    gy, gx, t = ph // wy, pw // wx, wy * wx
    win = x.view(n, gy, wy, gx, wx, c).transpose(2, 3).reshape(n * gy * gx, t, c)
    inner = num_heads * head_dim
    if logit_scale is not None and qkv_bias is not None:   # V2: no key bias
        qkv_bias = torch.cat([qkv_bias[:inner], torch.zeros_like(qkv_bias[inner:2 * inner]),
                              qkv_bias[2 * inner:]])
    q, k, v = F.linear(win, qkv_weight, qkv_bias).view(-1, t, 3, num_heads, head_dim) \
        .permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
    scores = scores + bias
    if sy or sx:
        band = (_regions(ph, wy, sy, x.device)[:, None] * 3 +
                _regions(pw, wx, sx, x.device)[None, :])
        band = band.view(gy, wy, gx, wx).transpose(1, 2).reshape(gy * gx, t)
        mask = (band[:, None, :] != band[:, :, None]).to(scores.dtype) * -100.0
        scores = (scores.view(n, gy * gx, num_heads, t, t) + mask[None, :, None]) \
            .view(-1, num_heads, t, t)
    a = F.dropout(scores.softmax(-1), p=attention_dropout, training=training)
    out = (a @ v).transpose(1, 2).reshape(-1, t, inner)
    out = F.dropout(F.linear(out, proj_weight, proj_bias), p=dropout, training=training)
    co = out.shape[-1]
    out = out.view(n, gy, gx, wy, wx, co).transpose(2, 3).reshape(n, ph, pw, co)
    if sy or sx:
        out = torch.roll(out, shifts=(sy, sx), dims=(1, 2))
    return out[:, :hh, :ww, :].contiguous()


class _ThinWindow:
    """Swin V1/V2 attention with ``head_dim`` of its own (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(x, self.qkv.weight, self.proj.weight,
                                self.get_relative_position_bias(), self.window_size,
                                self.num_heads, self.head_dim, self.shift_size,
                                self.attention_dropout, self.dropout, self.qkv.bias,
                                self.proj.bias, getattr(self, "logit_scale", None), self.training)


class _ThinRelative:
    """MaxViT's relative positional attention whose heads' width is ``n_heads * head_dim``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, _ = x.shape
        h, d = self.n_heads, self.head_dim
        q, k, v = (t.reshape(b, g, p, h, d).transpose(2, 3)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        scores = q @ (k * self.scale_factor).transpose(-2, -1)
        a = F.softmax(scores + self.get_relative_positional_bias(), dim=-1)
        return self.merge((a @ v).transpose(2, 3).reshape(b, g, p, h * d))


_MIXINS = {SWIN: _ThinWindow, SWIN_V2: _ThinWindow, MAXVIT: _ThinRelative}
_THIN: Dict[type, type] = {}


def make_thin(mod: nn.Module) -> nn.Module:
    """Make ``mod`` its thin subclass in place when it is an attention module whose forward ties
    the heads' width to its input width (an exact ``nn.MultiheadAttention``, Swin's or MaxViT's
    attention; a subclass may have a forward of its own); returns it. Call it before its tensors
    are sliced: Swin's ``head_dim`` is taken from the dense widths."""
    cls = type(mod)
    if cls is nn.MultiheadAttention:
        mod.__class__ = ThinMultiheadAttention
        return mod
    mixin = _MIXINS.get(qualified_name(cls))
    if mixin is None:
        return mod
    if mixin is _ThinWindow:
        mod.head_dim = mod.qkv.in_features // mod.num_heads
    return swap_class(mod, mixin, _THIN)
