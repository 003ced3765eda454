"""Channel rules shared by modules and functions: pooling, padding, softmax and reshapes.

A module (``nn.MaxPool2d``, ``nn.ZeroPad2d``, ``nn.Flatten``) and its functional twin
(``F.max_pool2d``, ``F.pad``, ``torch.flatten``) move channels the same way, so both rule tables
(``module_rules``, ``function_rules``) call these. Each takes the analyzer (``an``), the node, the
channel info of its input and its shapes, and returns the channel info of its output (None:
nothing followed comes out).
"""
from __future__ import annotations

import math

import torch
from typing import TYPE_CHECKING, Optional, Tuple

from .nodes import module_path
from .records import ChannelInfo, WidthAttr
from .shuffle import unit_of, unit_split_view

if TYPE_CHECKING:
    from .analyzer import Analyzer


def spatial(an: "Analyzer", node, info, in_shape, nd: int, what: str) -> Optional[ChannelInfo]:
    if info is None or in_shape is None:
        return info
    if info.cdim >= len(in_shape) - nd:
        return an.mixing(node, info, f"{what} acts on the channel dimension")
    return info


def pad(an: "Analyzer", node, info, in_shape, padding, mode, value, what) -> Optional[ChannelInfo]:
    if info is None or in_shape is None:
        return info
    rank = len(in_shape)
    pairs = {rank - 1 - k: (padding[2 * k], padding[2 * k + 1]) for k in range(len(padding) // 2)}
    lo, hi = pairs.get(info.cdim, (0, 0))
    if lo == 0 and hi == 0:
        return info if value == 0 or mode != "constant" else info.dirtied(
            f"{what} pads with {value}")
    if mode != "constant" or lo < 0 or hi < 0:
        return an.mixing(node, info, f"{what} pads the channel dimension with copies of "
                                       f"channels")
    reason = f"{what} pads constant channels on"
    dirty = None
    if value != 0 and any(pairs.get(d, (0, 0)) != (0, 0) for d in range(rank) if d != info.cdim):
        dirty = [f"{what} pads with {value}"] * len(info.ids)
    ids = an.source(lo, reason) + info.ids + an.source(hi, reason)
    old = info.dirty or dirty
    if old is not None:
        old = [None] * lo + list(old) + [None] * hi
    return ChannelInfo(ids, info.cdim, old)


def softmax(an: "Analyzer", node, info, in_shape, dim, what) -> Optional[ChannelInfo]:
    if info is None or in_shape is None:
        return info
    if dim is None or dim % len(in_shape) == info.cdim:
        return an.mixing(node, info, f"{what} normalizes over the channel dimension")
    return info.dirtied(f"{what} maps a zero channel to a non-zero value")


def reshape(an: "Analyzer", node, info, in_shape, out_shape, what) -> Optional[ChannelInfo]:
    if info is None or in_shape is None or out_shape is None:
        return info
    c = info.cdim
    if node.op == "call_method" and node.target in ("view", "reshape") or \
            node.target is torch.reshape:
        sizes = node.args[1:] if node.op == "call_method" else node.args[1:2]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        sizes = list(sizes)
    else:
        sizes = None
    new = reshape_cdim(in_shape, out_shape, c)
    if new is None:
        j = split_cdim(in_shape, out_shape, c)
        if j is not None:
            unit = unit_of(an, node)
            if unit is not None:   # a shuffle unit's channel shuffle: followed as a permutation
                return unit_split_view(an, node, info, out_shape, j, unit)
            return split_channels(an, node, info, out_shape, sizes, j, what)
        return an.mixing(node, info, f"{what} to {list(out_shape)} mixes the channel "
                                       f"dimension with others")
    cdim, factor = new
    if sizes is not None and cdim < len(sizes):
        s = sizes[cdim]
        if isinstance(s, int) and s != -1 and not width_attribute(an, node, info, s, factor):
            return an.mixing(node, info, f"{what} has the fixed size {s} at the channel "
                                           f"dimension (use x.flatten(1) or "
                                           f"x.view(x.size(0), -1), which follow thinning, or "
                                           f"keep the width in one integer attribute of "
                                           f"'{module_path(node) or 'the model'}', which "
                                           f"thinning updates)")
    if factor == 1:
        return info.with_(cdim=cdim)
    ids = [i for i in info.ids for _ in range(factor)]
    dirty = None if info.dirty is None else [d for d in info.dirty for _ in range(factor)]
    return ChannelInfo(ids, cdim, dirty)


def reshape_cdim(in_shape, out_shape, c) -> Optional[Tuple[int, int]]:
    """(new channel dim, repeat factor) of a reshape that keeps channels whole, else None.

    Allowed: the dims before the channel dim merged or split among themselves; the dims after it
    reshaped among themselves, or merged into it (a flatten, channel-major: each channel then
    becomes ``factor`` consecutive features).
    """
    in_shape, out_shape = list(in_shape), list(out_shape)
    pre, size = math.prod(in_shape[:c]), in_shape[c]
    post = math.prod(in_shape[c + 1:])
    acc = 1
    for j in range(len(out_shape)):   # every j where the dims before it hold the same elements
        if acc == pre:
            rest = math.prod(out_shape[j + 1:])
            if out_shape[j] == size and rest == post:
                return j, 1
            if out_shape[j] % size == 0 and out_shape[j] > size and rest * out_shape[j] == size * post:
                factor = out_shape[j] // size
                # the merged dims must be whole leading dims of what follows the channel dim
                k, merged = c + 1, 1
                while merged < factor and k < len(in_shape):
                    merged *= in_shape[k]
                    k += 1
                if merged == factor:
                    return j, factor
        elif acc > pre:
            break
        acc *= out_shape[j]
    return None


def split_cdim(in_shape, out_shape, c) -> Optional[int]:
    """``j`` when a reshape splits the channel dim (and nothing else) into ``out_shape[j]`` groups
    of ``out_shape[j + 1]`` channels (ShuffleNet's ``x.view(b, groups, c // groups, h, w)``)."""
    in_shape, out_shape = list(in_shape), list(out_shape)
    pre, size, post = math.prod(in_shape[:c]), in_shape[c], math.prod(in_shape[c + 1:])
    for j in range(len(out_shape) - 1):
        if math.prod(out_shape[:j]) == pre and out_shape[j] * out_shape[j + 1] == size and \
                math.prod(out_shape[j + 2:]) == post and out_shape[j] > 1 and out_shape[j + 1] > 1:
            return j
    return None


def split_channels(an: "Analyzer", node, info, out_shape, sizes, j, what) -> Optional[ChannelInfo]:
    """A reshape into ``A = out_shape[j]`` groups of ``B`` channels: channel ``k`` of every group
    is coupled (one class), and the channel dim becomes the ``B`` dim (``j + 1``).

    Thinning then removes whole columns ``k`` (one channel from every group), so the group count
    ``A`` stays what the forward says and every group keeps the same size: the view stays valid
    and a later transpose and flatten (a channel shuffle) interleave the kept channels exactly as
    before. Removing whole groups instead would keep ``B`` fixed but make every class ``B``
    channels wide; columns are the finer choice. The group size must therefore follow thinning:
    a literal size there (not -1 or computed from ``x.size()``) is refused.
    """
    A, B = out_shape[j], out_shape[j + 1]
    if sizes is not None and j + 1 < len(sizes):
        s = sizes[j + 1]
        if isinstance(s, int) and s != -1:
            return an.mixing(node, info, f"{what} has the fixed size {s} for the channels per "
                                           f"group (compute it from x.size(), or write -1, to "
                                           f"follow thinning)")
    ids = info.ids
    for k in range(B):
        for a in range(1, A):
            an.g.uf.union(ids[k], ids[a * B + k])
    dirty = None
    if info.dirty is not None:
        dirty = [next((info.dirty[a * B + k] for a in range(A) if info.dirty[a * B + k]), None)
                 for k in range(B)]
    return ChannelInfo(ids[:B], j + 1, dirty)


def width_attribute(an: "Analyzer", node, info, size: int, factor: int) -> bool:
    """A literal channel size in a reshape that a module attribute holds (torchvision ViT's
    ``x.reshape(n, self.hidden_dim, n_h * n_w)``: the traced graph sees 768): when exactly one
    public integer attribute of the module whose forward holds the reshape equals the size, that
    attribute is the width, and thinning sets it to the channels kept (``WidthAttr``). Several
    or none: False (the caller refuses, naming the op)."""
    if factor != 1:
        return False
    path = module_path(node)
    try:
        mod = an.model.get_submodule(path) if path else an.model
    except AttributeError:
        return False
    names = [k for k, v in vars(mod).items() if type(v) is int and v == size and
             not k.startswith("_") and k != "training"]
    if len(names) != 1:
        return False
    for w in an.g.widths:   # the same width read twice: both places keep the same channels
        if (w.module, w.attr) == (path, names[0]) and len(w.ids) == len(info.ids):
            for i, j in zip(w.ids, info.ids):
                an.g.uf.union(i, j)
            return True
    an.g.widths.append(WidthAttr(path, names[0], list(info.ids)))
    return True
