"""The rules for functions and tensor methods, as tables keyed by callable and by method name.

A rule takes the analyzer (``an``), the ``call_function`` / ``call_method`` node and a ``Call``
(the channel info and shape of its first argument, its output shape, how many of its inputs carry
followed channels, a readable name), and returns the channel info of its output (None: nothing
followed comes out). Supporting a new function or method is one entry in ``FUNCTION_RULES`` or
``METHOD_RULES`` and, when no rule here fits, one rule function beside it. Targets the tables do
not know block every channel reaching them (``an.fallback``).
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .channel_ops import pad, reshape, softmax, spatial
from .module_rules import channel_norm
from .nodes import module_path, node_shape, qualified_name, target_name, where
from .optables import (ARITH, CAT, F_DIRTY, F_POOL, F_ZERO, LN_CHANNEL_DIM, M_ARITH, M_DIRTY,
                       M_REDUCE, M_ZERO, NAMED_ZERO, REDUCE)
from .records import Balanced, ChannelInfo, ChannelTuple
from .shuffle import permute_rule, split_at_rule, unit_chunk, unit_of

if TYPE_CHECKING:
    from .analyzer import Analyzer


class Call(NamedTuple):
    """What every function rule reads about its node."""
    x: Any                                # the first argument (a node, or a constant)
    info: Optional[ChannelInfo]           # its channels, when followed
    in_shape: Optional[Tuple[int, ...]]   # its shape
    out_shape: Optional[Tuple[int, ...]]
    n_tracked: int                        # inputs that carry followed channels
    name: str                             # the target as users write it (``F.relu``)

    @property
    def single(self) -> bool:
        """Exactly one input carries followed channels, and it is the first argument."""
        return self.info is not None and self.n_tracked == 1


FunctionRule = Callable[["Analyzer", torch.fx.Node, Call], Optional[ChannelInfo]]


def getitem(an: "Analyzer", node, info, in_shape) -> Optional[ChannelInfo]:
    if info is None or in_shape is None:
        return None   # indexing a tuple/list: the op that made it was handled already
    idx = node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (torch.fx.Node, list, torch.Tensor)) or
           (not isinstance(i, (int, slice)) and i is not None and i is not Ellipsis) for i in idx):
        return an.mixing(node, info, "indexing with tensors or lists")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    rank = len(in_shape)
    dims: List[Any] = []
    for i in idx:
        if i is Ellipsis:
            dims.extend([slice(None)] * (rank - n_real))
        else:
            dims.append(i)
    consumed = sum(1 for d in dims if d is not None)
    dims.extend([slice(None)] * (rank - consumed))
    in_dim, out_dim = 0, 0
    for d in dims:
        if d is None:
            out_dim += 1
            continue
        if in_dim == info.cdim:
            if isinstance(d, slice) and d == slice(None):
                return info.with_(cdim=out_dim)
            return an.mixing(node, info, "indexing into the channel dimension")
        in_dim += 1
        if isinstance(d, slice):
            out_dim += 1
    return an.mixing(node, info, "indexing into the channel dimension")


def _operand(an: "Analyzer", a):
    """(info, shape, is_scalar, scalar_value) of an arithmetic operand."""
    if isinstance(a, torch.fx.Node):
        shape = node_shape(a)
        if shape is None:
            return None, None, True, None
        return an.env.get(a), shape, False, None
    if isinstance(a, (int, float, bool)):
        return None, None, True, float(a)
    if isinstance(a, torch.Tensor):
        return None, tuple(a.shape), False, None
    return None, None, True, None


# Methods a directly read parameter may go through and still be that parameter, broadcast
# (ViT's ``self.class_token.expand(n, -1, -1)``).
_SAME_TENSOR = {"expand", "expand_as", "contiguous", "clone", "to", "type", "float", "double",
                "half", "bfloat16", "detach"}


def param_source(an: "Analyzer", node) -> Optional[str]:
    """The name of the parameter or buffer ``node`` reads directly (a get_attr, possibly through
    ``expand``, ``contiguous`` ...), else None."""
    while isinstance(node, torch.fx.Node):
        if node.op == "get_attr":
            return node.target if an.tensor(node.target) is not None else None
        if node.op != "call_method" or node.target not in _SAME_TENSOR or not node.args:
            return None
        node = node.args[0]
    return None


def param_channels(an: "Analyzer", node, other, other_shape, od: int, info: ChannelInfo,
                   verb: Optional[str], what: str) -> Optional[List[Optional[str]]]:
    """``other`` (of ``other_shape``, channel dim ``od``) is a parameter read directly with one
    entry per channel of ``info`` (ConvNeXt's ``layer_scale``, ViT's ``pos_embedding`` or class
    token): record it to be sliced with the channels (``ParamSlice``) and return the dirty reasons
    of the result. Multiplying keeps a zero channel zero; adding makes it the parameter's entry,
    so a channel whose entries are not all zero is dirty (removing it by its zero filters would
    change the function), one whose entries are zero is not (``verb``: how the op puts the
    parameter into the channel, 'adds' or 'joins'; None for a product). None: not such a
    parameter."""
    name = param_source(an, other)
    t = an.tensor(name) if name is not None else None
    if t is None:
        return None
    pdim = od - (len(other_shape) - t.dim())
    n = len(info.ids)
    if pdim < 0 or t.shape[pdim] != n or not an.slice_param(name, pdim, info.ids):
        return None
    dirty = list(info.dirty or [None] * n)
    if verb:
        nonzero = t.detach().ne(0).movedim(pdim, 0).reshape(n, -1).any(dim=1).tolist()
        reason = (f"{what} {verb} '{name}', not zero for this channel (zero its entries with the "
                  f"channel's filters, or remove the channel where no layer reads it)")
        an.g.param_dirt.add(reason)
        dirty = [d or (reason if z else None) for d, z in zip(dirty, nonzero)]
    return dirty


def arith(an: "Analyzer", node, op: str) -> Optional[ChannelInfo]:
    if len(node.args) < 2:
        return an.fallback(node, target_name(node.target))
    a, b = node.args[0], node.args[1]
    out_shape = node_shape(node)
    if out_shape is None:
        return an.fallback(node, target_name(node.target))
    R = len(out_shape)
    ia, sa, scal_a, va = _operand(an, a)
    ib, sb, scal_b, vb = _operand(an, b)
    what = f"{target_name(node.target)} at node '{node.name}' (in {where(node)})"

    def aligned(info, shape):
        return None if info is None else info.cdim + (R - len(shape))

    ca, cb = aligned(ia, sa), aligned(ib, sb)
    if op == "pow":
        if ia is not None and scal_b and vb is not None and vb > 0:
            return an.inplace(node, a, ia.with_(cdim=ca))
        return an.fallback(node, target_name(node.target))
    if op == "div" and ib is not None:
        an.hard(ia, f"division by channels in {what}")
        an.hard(ib, f"division by channels in {what}")
        return None
    if ia is not None and ib is not None:
        if ca != cb:
            an.hard(ia, f"{what} combines tensors whose channels are on different dims")
            an.hard(ib, f"{what} combines tensors whose channels are on different dims")
            return None
        na, nb = len(ia.ids), len(ib.ids)
        if na == nb:
            for i, j in zip(ia.ids, ib.ids):
                an.g.uf.union(i, j)
            da = ia.dirty or [None] * na
            db = ib.dirty or [None] * nb
            if op == "mul":   # zero if either side is zero
                dirty = [x if (x is not None and y is not None) else None for x, y in zip(da, db)]
            else:
                dirty = [x or y for x, y in zip(da, db)]
            out = ChannelInfo(ia.ids, ca, dirty)
            return an.inplace(node, a, out)
        if 1 in (na, nb):   # one side broadcasts a single channel over the other's
            small, big = (ia, ib) if na == 1 else (ib, ia)
            an.soft_ids(small.ids, f"{what} broadcasts this single channel over others")
            out = big.with_(cdim=ca)
            if op in ("add", "sub"):
                out = out.dirtied(f"{what} adds a broadcast channel")
            return an.inplace(node, a, out)
        an.hard(ia, f"{what} combines tensors of different channel counts")
        an.hard(ib, f"{what} combines tensors of different channel counts")
        return None
    info, cdim, other_shape, other_scalar, other_value = (
        (ia, ca, sb, scal_b, vb) if ia is not None else (ib, cb, sa, scal_a, va))
    if not other_scalar and other_shape is not None:
        od = cdim - (R - len(other_shape))
        if od >= 0 and other_shape[od] != 1:
            dirty = param_channels(an, node, b if info is ia else a, other_shape, od, info,
                                   "adds" if op in ("add", "sub") else None, what)
            if dirty is None:
                return an.mixing(node, info, f"{what} with a per-channel tensor that is not "
                                               f"followed")
            return an.inplace(node, a, info.with_(cdim=cdim, dirty=dirty))
    out = info.with_(cdim=cdim)
    if op in ("add", "sub") and not (other_scalar and other_value == 0):
        out = out.dirtied(f"{what} adds a value to a removed (zero) channel")
    return an.inplace(node, a, out)


def cat(an: "Analyzer", node) -> Optional[ChannelInfo]:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out_shape = node_shape(node)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or out_shape is None:
        return an.fallback(node, "torch.cat")
    dim %= len(out_shape)
    infos = [an.env.get(t) if isinstance(t, torch.fx.Node) else None for t in tensors]
    tracked = [i for i in infos if i is not None]
    cdims = {i.cdim for i in tracked}
    if len(cdims) != 1:
        return an.fallback(node, "torch.cat of tensors with channels on different dims")
    cdim = cdims.pop()
    what = f"torch.cat at node '{node.name}' (in {where(node)})"
    if dim == cdim:
        ids: List[int] = []
        dirty: List[Optional[str]] = []
        for t, i in zip(tensors, infos):
            if i is None:
                shape = node_shape(t)
                n = shape[cdim] if shape is not None else 0
                ids.extend(an.source(n, f"{what} joins channels that cannot be followed"))
                dirty.extend([None] * n)
            else:
                ids.extend(i.ids)
                dirty.extend(i.dirty or [None] * len(i.ids))
        return ChannelInfo(ids, cdim, dirty)
    first = tracked[0]
    dirty = [None] * len(first.ids)
    for t, i in zip(tensors, infos):   # a parameter joined along the tokens: sliced along
        if i is None and isinstance(t, torch.fx.Node) and node_shape(t) is not None:
            d = param_channels(an, node, t, node_shape(t), cdim, first, "joins", what)
            if d is not None:
                dirty = [x or y for x, y in zip(dirty, d)]
                infos = [first if u is t else v for u, v in zip(tensors, infos)]
    tracked = [i for i in infos if i is not None]
    if len(tracked) != len(infos) or len({len(i.ids) for i in tracked}) != 1:
        return an.mixing(node, tracked[0], f"{what} joins tensors whose channels differ")
    for other in tracked[1:]:
        for i, j in zip(first.ids, other.ids):
            an.g.uf.union(i, j)
    for i in tracked:
        if i.dirty:
            dirty = [d or e for d, e in zip(dirty, i.dirty)]
    return ChannelInfo(first.ids, cdim, dirty)


def move(an: "Analyzer", node, info, in_shape, out_shape, what) -> Optional[ChannelInfo]:
    if in_shape is None or out_shape is None:
        return an.fallback(node, what)
    rank = len(in_shape)
    t = node.target
    name = t if isinstance(t, str) else t.__name__
    args = list(node.args[1:])
    c = info.cdim
    if name == "permute":
        perm = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        perm = node.kwargs.get("dims", perm)
        perm = [p % rank for p in perm]
        return info.with_(cdim=perm.index(c))
    if name in ("transpose", "swapaxes", "swapdims"):
        d0 = args[0] if args else node.kwargs.get("dim0", node.kwargs.get("axis0"))
        d1 = args[1] if len(args) > 1 else node.kwargs.get("dim1", node.kwargs.get("axis1"))
        d0, d1 = d0 % rank, d1 % rank
        return info.with_(cdim=d1 if c == d0 else d0 if c == d1 else c)
    if name == "unsqueeze":
        d = args[0] if args else node.kwargs.get("dim")
        d %= rank + 1
        return info.with_(cdim=c + 1 if d <= c else c)
    if name == "squeeze":
        d = args[0] if args else node.kwargs.get("dim")
        dims = [d] if isinstance(d, int) else list(d) if d is not None else \
            [i for i, s in enumerate(in_shape) if s == 1]
        dims = [x % rank for x in dims if in_shape[x % rank] == 1]
        if c in dims:
            return an.mixing(node, info, f"{what} squeezes the single channel away")
        return info.with_(cdim=c - sum(1 for x in dims if x < c))
    return an.fallback(node, what)


def reduce(an: "Analyzer", node, info, in_shape, out_shape, what) -> Optional[ChannelInfo]:
    if in_shape is None or out_shape is None:
        return an.fallback(node, what)
    rank = len(in_shape)
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    if dim is None:
        return an.mixing(node, info, f"{what} over all dimensions")
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not all(isinstance(d, int) for d in dims):
        return an.fallback(node, what)
    dims = [d % rank for d in dims]
    if info.cdim in dims:
        return an.mixing(node, info, f"{what} over the channel dimension")
    return info.with_(cdim=info.cdim if keep else info.cdim - sum(1 for d in dims if d < info.cdim))


def keeps_zero(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    """Elementwise ops that map 0 to 0 (relu, tanh, abs, dtype and device moves)."""
    if not c.single:
        return an.fallback(node, c.name)
    if node.target is F.hardtanh:
        lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
        hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
        if not lo <= 0 <= hi:
            return an.inplace(node, c.x, c.info.dirtied(f"{c.name} maps 0 to non-zero"))
    return an.inplace(node, c.x, c.info)


def dirties(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    """Elementwise ops that map 0 to a non-zero value (sigmoid, exp)."""
    if not c.single:
        return an.fallback(node, c.name)
    return an.inplace(node, c.x, c.info.dirtied(
        f"{c.name} at node '{node.name}' maps a removed (zero) channel to a non-zero value"))


def clamp(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    if not c.single:
        return an.fallback(node, c.name)
    lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
    hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
    ok = (lo is None or (isinstance(lo, (int, float)) and lo <= 0)) and \
         (hi is None or (isinstance(hi, (int, float)) and hi >= 0))
    return an.inplace(node, c.x, c.info if ok else c.info.dirtied(f"{c.name} maps 0 to non-zero"))


def pool(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    if not c.single:
        return an.fallback(node, c.name)
    return spatial(an, node, c.info, c.in_shape, F_POOL[node.target], c.name)


def interpolate(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    if not c.single:
        return an.fallback(node, c.name)
    return spatial(an, node, c.info, c.in_shape, len(c.in_shape) - 2, c.name)


def pad_function(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    if not c.single:
        return an.fallback(node, c.name)
    widths = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
    if isinstance(widths, (list, tuple)) and all(isinstance(p, int) for p in widths):
        return pad(an, node, c.info, c.in_shape, list(widths), mode, float(value or 0.0), c.name)
    return an.fallback(node, c.name)


def softmax_function(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dim, int) or dim is None:
        return softmax(an, node, c.info, c.in_shape, dim, c.name)
    return an.fallback(node, c.name)


def layer_norm(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    """``F.layer_norm(x, normalized_shape, weight, bias)`` (ConvNeXt's LayerNorm2d calls it on a
    permuted tensor): over the channel dim it mixes them; over other dims each channel is
    normalized on its own, and a bias maps a zero channel to non-zero."""
    shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
    if not c.single or c.in_shape is None or not isinstance(shape, (list, tuple)):
        return an.fallback(node, c.name)
    if c.info.cdim >= len(c.in_shape) - len(shape):
        owner = an.modules.get(module_path(node))   # ConvNeXt's LayerNorm2d traced into
        if isinstance(owner, nn.LayerNorm) and len(shape) == 1 and \
                LN_CHANNEL_DIM.get(qualified_name(type(owner)), -1) != -1 and \
                c.info.cdim == len(c.in_shape) - 1:
            return channel_norm(an, node, module_path(node), owner, c.info, len(c.in_shape), -1,
                                LN_CHANNEL_DIM[qualified_name(type(owner))])
        return an.mixing(node, c.info, f"{c.name} normalizes over the channel dimension (a "
                                         f"removed channel would still count in its mean and "
                                         f"variance)")
    bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
    return c.info if bias is None else c.info.dirtied(f"{c.name} maps a zero channel to its bias")


def getitem_rule(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    if isinstance(c.info, ChannelTuple):   # an element of x.chunk(...): its own channels
        idx = node.args[1] if len(node.args) > 1 else None
        if isinstance(idx, int) and -len(c.info.parts) <= idx < len(c.info.parts):
            return c.info.parts[idx]
        return an.fallback(node, "indexing a tuple of tensors with a slice or a tensor")
    return getitem(an, node, c.info, c.in_shape)


def split(an: "Analyzer", node, c: Call) -> Optional[ChannelTuple]:
    """``torch.chunk`` / ``torch.split`` (and the tensor methods): a tuple of parts.

    Along another dim, every part keeps every channel. Along the channel dim, part ``j`` holds a
    consecutive range of channels. ``chunk(n)`` into ``n`` equal parts stays exact when every
    part loses as many channels as the others (a ``Balanced`` record the plan honours): the
    thinned tensor is then cut at the same places. Fixed sizes (``split(58)``, ``split([a, b])``)
    would cut the thinned tensor elsewhere, so their channels are blocked.
    """
    tm = node.meta.get("tensor_meta")
    if not c.single or c.in_shape is None or not isinstance(tm, (list, tuple)) or \
            not all(hasattr(t, "shape") for t in tm):
        return an.fallback(node, c.name)
    is_chunk = c.name.endswith("chunk")
    args = node.args[1:]
    first = args[0] if args else node.kwargs.get(
        "chunks" if is_chunk else "split_size_or_sections", node.kwargs.get("split_size"))
    dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(dim, int):
        return an.fallback(node, c.name)
    info = c.info
    shapes = [tuple(t.shape) for t in tm]
    if dim % len(c.in_shape) != info.cdim:
        return ChannelTuple([info for _ in shapes])
    sizes = [s[info.cdim] for s in shapes]
    what = f"{c.name} at node '{node.name}' (in {where(node)})"
    if not (is_chunk and isinstance(first, int) and len(sizes) == first and len(set(sizes)) == 1):
        return an.mixing(node, info, f"{what} cuts the channel dimension at the fixed sizes "
                                       f"{sizes} (torch.chunk into equal parts follows thinning)")
    unit = unit_of(an, node) if len(sizes) == 2 and info.cdim == 1 else None
    if unit is not None:   # a shuffle unit splits at the sizes it keeps (graph.shuffle)
        return unit_chunk(an, node, info, sizes, unit, what)
    an.g.balanced.append(Balanced(what, list(info.ids), len(sizes)))
    parts, start = [], 0
    for n in sizes:
        dirty = None if info.dirty is None else info.dirty[start:start + n]
        parts.append(ChannelInfo(info.ids[start:start + n], info.cdim, dirty))
        start += n
    return ChannelTuple(parts)


def cat_rule(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    return cat(an, node)


def _single(rule) -> FunctionRule:
    """A rule of (an, node, info, in_shape, out_shape, name) for one followed input, else fallback."""
    def apply(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
        if not c.single:
            return an.fallback(node, c.name)
        return rule(an, node, c.info, c.in_shape, c.out_shape, c.name)
    return apply


def _arith(op: str) -> FunctionRule:
    def apply(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
        return arith(an, node, op)
    return apply


_RESHAPE, _MOVE, _REDUCE_RULE = _single(reshape), _single(move), _single(reduce)
_CLAMP = ("clamp", "clamp_", "clip")

FUNCTION_RULES: Dict[Any, FunctionRule] = {
    operator.getitem: getitem_rule,
    **{t: _arith(op) for t, op in ARITH.items()},
    **{t: keeps_zero for t in F_ZERO},
    **{t: dirties for t in F_DIRTY},
    torch.clamp: clamp,
    **{t: pool for t in F_POOL},
    F.interpolate: interpolate,
    F.pad: pad_function,
    **{t: softmax_function for t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)},
    **{t: cat_rule for t in CAT},
    torch.flatten: _RESHAPE, torch.reshape: _RESHAPE,
    **{t: _MOVE for t in (torch.permute, torch.transpose, torch.swapaxes, torch.swapdims,
                          torch.unsqueeze, torch.squeeze)},
    **{t: _REDUCE_RULE for t in REDUCE},
    torch.chunk: split, torch.split: split,
    F.layer_norm: layer_norm,
}

# Functions of optional packages, by ``nodes.qualified_name`` (looked up after FUNCTION_RULES).
def patch_merging(an: "Analyzer", node, c: Call) -> Optional[ChannelInfo]:
    """torchvision Swin's ``_patch_merging_pad(x)`` on ``(..., H, W, C)``: zero-pads H and W to
    even sizes and joins the four 2x2 phases along the channels, ``cat([x0, x1, x2, x3], -1)``:
    the channel list four times (a zero channel stays zero in each copy)."""
    if not c.single or c.in_shape is None or c.info.cdim != len(c.in_shape) - 1:
        return an.fallback(node, c.name)
    dirty = None if c.info.dirty is None else c.info.dirty * 4
    return ChannelInfo(list(c.info.ids) * 4, c.info.cdim, dirty)


NAMED_FUNCTION_RULES: Dict[str, FunctionRule] = {
    **{n: keeps_zero for n in NAMED_ZERO},
    "torchvision.models.swin_transformer._patch_merging_pad": patch_merging,
    "compressor.graph.shuffle.split_at": split_at_rule,
    "compressor.graph.shuffle.permute_channels": permute_rule,
}

METHOD_RULES: Dict[str, FunctionRule] = {
    **{m: _arith(op) for m, op in M_ARITH.items()},
    **{m: keeps_zero for m in M_ZERO},
    **{m: dirties for m in M_DIRTY},
    **{m: clamp for m in _CLAMP},
    "softmax": softmax_function, "log_softmax": softmax_function,
    "cat": cat_rule,
    **{m: _RESHAPE for m in ("flatten", "view", "reshape")},
    **{m: _MOVE for m in ("permute", "transpose", "swapaxes", "swapdims", "unsqueeze", "squeeze")},
    **{m: _REDUCE_RULE for m in M_REDUCE},
    "chunk": split, "split": split,
}
