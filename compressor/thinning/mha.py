"""``nn.MultiheadAttention`` with fewer heads: ``ThinMultiheadAttention``.

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
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


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


def make_thin(mod: nn.Module) -> nn.Module:
    """Make an ``nn.MultiheadAttention`` a ``ThinMultiheadAttention`` in place; returns it."""
    if type(mod) is nn.MultiheadAttention:   # a subclass may have a forward of its own
        mod.__class__ = ThinMultiheadAttention
    return mod
