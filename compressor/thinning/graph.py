"""Channel dataflow of a network, read from its torch.fx graph.

This module answers one question: which channels of which layers must be removed together, who
consumes them, and what, if anything, stops them from being removed. Every output channel of a
convolution or linear layer is an element of a union-find structure; the channel dimension of each
tensor in the graph is described by the list of elements sitting at its positions. Channel-
preserving ops (batch norm, activations, pooling, dropout, flatten into a linear layer, elementwise
ops) pass the list through; a residual addition unites the elements of its operands position by
position; ``torch.cat`` along the channels concatenates the lists; a depthwise convolution passes
its input's elements through to its filters. The classes of the union-find are the units that
thinning removes, all or nothing.

Whatever the analysis cannot follow exactly *blocks* the classes it touches, with a reason:

* hard blocks: an op that mixes channels (``x.mean(1)``, a ``view`` that splits them, a matmul, a
  module called twice ...). Asking to remove a channel behind one is a ``ThinningError``.
* soft blocks: channels that are not ours to remove (the model's input, the model's output,
  constant channels padded on). They are silently kept.
* dirty: an op between the layer and its consumer maps a removed (all-zero) channel to a non-zero
  value (``sigmoid``, ``x + 1``), so removing it by its zero *filters* would change the function.
  Removal because every consumer ignores the channel (``remove_channels``) is still exact.

A batch norm's output channels get elements of their own, *linked* to the input channels it reads
(all of them, or its ``index`` once it selects channels, see ``selection``). The links are joined
at the end, so by default a batch norm passes its classes through like any per-channel layer;
``ChannelGraph.cut`` gives the same graph with some links left open, where thinning lets a batch
norm drop channels its input keeps (the residual stream of a pre-activation ResNet).

The analysis is linear in the size of the graph plus the total number of channels.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ThinningError
from ..example_input import example_input_of
from ..graph import symbolic_trace
from ..masks import unwrap
from .selection import can_select, is_selecting

ExampleInput = Union[torch.Tensor, Sequence[int], str, None]

# ---------------------------------------------------------------------------------------------
# Records: what the executor needs to know about each layer touching a channel class.


@dataclass
class Producer:
    """A layer whose output channels are filters of its weight (conv, linear, depthwise conv)."""
    module: str
    weight: str
    bias: Optional[str]
    out_dim: int                 # the weight dimension of output channels
    ids: List[int]               # union-find element of each output channel
    kind: str                    # 'dense' | 'depthwise' | 'grouped'
    groups: int = 1              # grouped: output removal is balanced across these groups
    attr: str = "out_channels"


@dataclass
class Consumer:
    """A layer reading channels through its weight's input dimension."""
    module: str
    weight: str
    in_dim: int
    ids: List[int]               # union-find element of each input position
    kind: str                    # 'dense' | 'depthwise' | 'grouped'
    groups: int = 1
    attr: str = "in_channels"


@dataclass
class Follower:
    """A per-channel layer (batch norm, per-channel PReLU ...): its tensors are sliced on dim 0.

    A batch norm that may select channels (``selection.can_select``) has output elements of its own
    (``ids``) and the elements of its input (``in_ids``); output channel j reads input channel
    ``index[j]`` (``index`` None: channel j). Other followers pass their input's elements through.
    """
    module: str
    tensors: List[str]
    attrs: List[str]
    ids: List[int]
    shift: Optional[Tuple[str, ...]] = None   # (bias, weight, running_mean, running_var) names of a BN
    in_ids: Optional[List[int]] = None
    index: Optional[List[int]] = None

    def links(self) -> List[Tuple[int, int]]:
        """(output element, input element it reads) for each output channel."""
        if self.in_ids is None:
            return []
        index = self.index if self.index is not None else range(len(self.ids))
        return [(o, self.in_ids[k]) for o, k in zip(self.ids, index)]


class _UF:
    """Union-find over channel elements; the smaller element is the root, so results are stable."""

    __slots__ = ("parent",)

    def __init__(self):
        self.parent: List[int] = []

    def new(self, n: int) -> List[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


class _Info:
    """The channel dimension of one tensor: its elements, which dim, and where it is not zero."""

    __slots__ = ("ids", "cdim", "dirty")

    def __init__(self, ids: List[int], cdim: int, dirty: Optional[List[Optional[str]]] = None):
        self.ids, self.cdim = ids, cdim
        self.dirty = dirty if dirty is not None and any(d is not None for d in dirty) else None

    def with_(self, ids=None, cdim=None, dirty=Ellipsis) -> "_Info":
        return _Info(self.ids if ids is None else ids, self.cdim if cdim is None else cdim,
                     self.dirty if dirty is Ellipsis else dirty)

    def dirtied(self, reason: str) -> "_Info":
        return _Info(self.ids, self.cdim, [reason] * len(self.ids))


@dataclass
class ChannelGraph:
    """The result of the analysis: layers, their channel elements and what blocks them."""
    model_name: str
    input_shape: Tuple[int, ...]
    producers: List[Producer] = field(default_factory=list)
    consumers: List[Consumer] = field(default_factory=list)
    followers: List[Follower] = field(default_factory=list)
    uf: _UF = field(default_factory=_UF)
    hard: Dict[int, str] = field(default_factory=dict)    # root -> reason
    soft: Dict[int, str] = field(default_factory=dict)
    dirty: Dict[int, str] = field(default_factory=dict)
    base: List[int] = field(default_factory=list)         # union-find parents before the links
    blocks: Tuple[Dict[int, str], ...] = field(default_factory=lambda: ({}, {}, {}))  # per element

    def link_and_block(self, open_links: Iterable[str] = ()) -> None:
        """Join every follower link except those of ``open_links`` (modules), then map the
        per-element blocks to the resulting classes."""
        open_links = set(open_links)
        for f in self.followers:
            if f.module not in open_links:
                for o, i in f.links():
                    self.uf.union(o, i)
        find = self.uf.find
        for src, dst in zip(self.blocks, (self.hard, self.soft, self.dirty)):
            for el, reason in src.items():
                dst.setdefault(find(el), reason)

    def cut(self, modules: Iterable[str]) -> "ChannelGraph":
        """The same layers with the links of the batch norms ``modules`` left open: their output
        channels form classes apart from their input's, so they can drop channels it keeps."""
        g = ChannelGraph(self.model_name, self.input_shape, self.producers, self.consumers,
                         self.followers, base=self.base, blocks=self.blocks)
        g.uf.parent = list(self.base)
        g.link_and_block(modules)
        return g

    def root(self, x: int) -> int:
        return self.uf.find(x)

    def roots(self, ids: Iterable[int]) -> List[int]:
        find = self.uf.find
        return [find(i) for i in ids]

    def filter_block(self, root: int) -> Optional[str]:
        """Why a class cannot be removed for its zero filters (None when it can)."""
        return self.hard.get(root) or self.soft.get(root) or self.dirty.get(root)

    def layer_status(self) -> Tuple[List[str], Dict[str, str], Dict[str, str]]:
        """(thinnable layers, {fully blocked layer: reason}, {partly blocked layer: note})."""
        thinnable, blocked, partial = [], {}, {}
        for p in self.producers:
            reasons = [self.filter_block(r) for r in self.roots(p.ids)]
            bad = [r for r in reasons if r]
            if len(bad) == len(reasons):
                hard = [self.hard.get(r) for r in self.roots(p.ids) if self.hard.get(r)]
                blocked[p.module] = hard[0] if hard else bad[0]
            else:
                thinnable.append(p.module)
                if bad:
                    partial[p.module] = (f"{len(bad)} of {len(reasons)} channels cannot be "
                                         f"removed: {bad[0]}")
        return thinnable, blocked, partial

    def coupled_groups(self, order: Sequence[str]) -> List[List[str]]:
        """Weight names whose output channels are coupled position by position (2+ members)."""
        by_sig: Dict[tuple, List[str]] = {}
        for p in self.producers:
            by_sig.setdefault(tuple(self.roots(p.ids)), []).append(p.weight)
        rank = {n: i for i, n in enumerate(order)}
        groups = [sorted(set(g), key=lambda n: rank.get(n, len(rank))) for g in by_sig.values()
                  if len(set(g)) > 1]
        return sorted(groups, key=lambda g: rank.get(g[0], len(rank)))

    def coupled_classes(self, order: Sequence[str]) -> List[Dict[str, List[int]]]:
        """Layers whose output channels meet only in part (a depthwise convolution after a
        concatenation, a sum of a concatenation): one {weight: the class position of each output
        channel} per connected group of 2+ layers whose channels are not all the same classes
        (those are ``coupled_groups``). Positions number the group's channel classes 0..n-1."""
        rank = {n: i for i, n in enumerate(order)}
        prods = sorted({p.weight: p for p in self.producers}.values(),
                       key=lambda p: rank.get(p.weight, len(rank)))
        owner: Dict[int, int] = {}   # class root -> index of the first producer that has it
        uf = _UF()
        slots = uf.new(len(prods))
        for k, p in enumerate(prods):
            for r in self.roots(p.ids):
                if r in owner:
                    uf.union(slots[owner[r]], slots[k])
                else:
                    owner[r] = k
        comps: Dict[int, List[int]] = {}
        for k in range(len(prods)):
            comps.setdefault(uf.find(slots[k]), []).append(k)
        out = []
        for ks in comps.values():
            sigs = {tuple(self.roots(prods[k].ids)) for k in ks}
            if len(ks) < 2 or len(sigs) == 1:
                continue
            pos: Dict[int, int] = {}
            index = {}
            for k in ks:
                index[prods[k].weight] = [pos.setdefault(r, len(pos)) for r in self.roots(prods[k].ids)]
            out.append(index)
        return out


# ---------------------------------------------------------------------------------------------
# Op tables.

_ACT_ZERO = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
             nn.Hardswish, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
             nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)
_ACT_DIRTY = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
          nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2,
          nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2,
          nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2}
_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
         nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)

_F_ZERO = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
           F.mish, F.hardswish, torch.tanh, F.tanh, F.softsign, F.tanhshrink, F.hardshrink,
           F.softshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
           F.feature_alpha_dropout, torch.neg, torch.abs, torch.relu_, F.relu_, F.hardtanh,
           operator.neg, operator.pos, operator.abs}
_F_DIRTY = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, torch.exp, torch.cos}
_F_POOL = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
           F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
           F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
           F.adaptive_max_pool3d: 3, F.lp_pool1d: 1, F.lp_pool2d: 2}
_M_ZERO = {"relu", "relu_", "tanh", "tanh_", "neg", "neg_", "abs", "abs_", "contiguous", "clone",
           "detach", "float", "double", "half", "bfloat16", "to", "type", "cpu", "cuda",
           "requires_grad_"}
_M_DIRTY = {"sigmoid", "sigmoid_", "exp", "exp_"}
_ARITH = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub",
          operator.isub: "sub", torch.sub: "sub", torch.subtract: "sub", operator.mul: "mul",
          operator.imul: "mul", torch.mul: "mul", torch.multiply: "mul", operator.truediv: "div",
          operator.itruediv: "div", torch.div: "div", torch.true_divide: "div",
          operator.pow: "pow", torch.pow: "pow"}
_M_ARITH = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
            "div": "div", "div_": "div", "pow": "pow"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_M_REDUCE = {"mean", "sum", "amax", "amin"}
_SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement", "get_device"}


def _fname(target) -> str:
    if isinstance(target, str):
        return f"Tensor.{target}"
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if mod.startswith("torch") or mod == "" else f"{mod}.{name}"


# ---------------------------------------------------------------------------------------------
# Tracing and shapes.


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` of the unwrapped model (channel-selecting batch norms kept as
    leaves), or a ThinningError saying why not."""
    model = unwrap(model)
    try:
        return symbolic_trace(model)
    except Exception as e:   # fx raises many exception types on untraceable code
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ThinningError(
            f"cannot thin {type(model).__name__}: torch.fx cannot trace its forward "
            f"({type(e).__name__}: {first}); thinning follows channels through the traced graph, "
            f"so the forward must not branch on tensor values") from None


class NoExampleInputError(ThinningError):
    """No example input was given and none of the usual image sizes runs through the model."""


def _first_layer(model: nn.Module) -> Optional[nn.Module]:
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            return m
    return None


def _candidate_inputs(model: nn.Module) -> List[Tuple[int, ...]]:
    first = _first_layer(model)
    if isinstance(first, nn.Linear):
        return [(first.in_features,), (1, 28, 28), (3, 32, 32), (3, 224, 224)]
    if isinstance(first, nn.modules.conv._ConvNd):
        c = first.in_channels
        nd = len(first.kernel_size)
        return [(c,) + (s,) * nd for s in (28, 32, 64, 224, 96, 128, 256, 299)]
    return [(1, 28, 28), (3, 32, 32), (3, 224, 224)]


def example_tensor(model: nn.Module, example_input: ExampleInput) -> Optional[torch.Tensor]:
    """A batch of two zero samples of shape ``example_input`` (a tensor is passed through)."""
    if example_input is None or isinstance(example_input, torch.Tensor):
        return example_input
    if isinstance(example_input, str):
        from ..models.registry import DATASETS
        if example_input.lower() not in DATASETS:
            raise ThinningError(f"unknown dataset '{example_input}' for the example input; known: "
                                f"{', '.join(sorted(DATASETS))} (or pass a sample shape such as "
                                f"(3, 32, 32), or a tensor)")
        example_input = DATASETS[example_input.lower()].input_shape
    if not isinstance(example_input, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in example_input):
        raise TypeError(f"example_input must be a tensor, the shape of one sample such as "
                        f"(3, 32, 32), or a dataset name; got {type(example_input).__name__}. "
                        f"(Distiller's remove_filters(model, zeros_mask_dict, arch, dataset, "
                        f"optimizer) is remove_filters(model, dataset, optimizer=optimizer, "
                        f"store=scheduler) here.)")
    shape = tuple(example_input)
    ref = next(iter(model.parameters()), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    return torch.zeros((2,) + shape, **kw)


def _module_shape(mod: nn.Module, shape: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
    """Output shape of the common shape-changing layers, computed directly.

    The meta device would give the same answer, but its first use of pooling and convolution
    imports large parts of torch (seconds); these formulas are PyTorch's documented ones. Other
    layers (and unusual arguments) return None and run on the meta device.
    """
    def spatial(k, s, p, d, n, ceil=False):
        out = []
        for i in range(n):
            size = shape[len(shape) - n + i]
            span = size + 2 * p[i] - d[i] * (k[i] - 1) - 1
            o = (-(-span // s[i]) if ceil else span // s[i]) + 1
            if ceil and (o - 1) * s[i] >= size + p[i]:
                o -= 1
            out.append(o)
        return out

    def tup(v, n):
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n

    if isinstance(mod, nn.Linear) and shape and shape[-1] == mod.in_features:
        return shape[:-1] + (mod.out_features,)
    if type(mod) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        n = len(mod.kernel_size)
        if len(shape) != n + 2 or shape[1] != mod.in_channels or isinstance(mod.padding, str):
            return None
        return (shape[0], mod.out_channels) + tuple(spatial(
            mod.kernel_size, mod.stride, mod.padding, mod.dilation, n))
    if type(mod) in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d):
        n = _POOLS[type(mod)]
        if len(shape) != n + 2 or getattr(mod, "return_indices", False):
            return None
        k = tup(mod.kernel_size, n)
        st = tup(mod.stride if mod.stride is not None else mod.kernel_size, n)
        return shape[:2] + tuple(spatial(k, st, tup(mod.padding, n),
                                         tup(getattr(mod, "dilation", 1), n), n, mod.ceil_mode))
    if type(mod) in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d):
        n = _POOLS[type(mod)]
        if len(shape) != n + 2 or getattr(mod, "return_indices", False):
            return None
        size = tup(mod.output_size, n)
        return shape[:2] + tuple(shape[2 + i] if s is None else s for i, s in enumerate(size))
    return None


class TensorShape(NamedTuple):
    """What the shape propagation records per tensor (``node.meta['tensor_meta']``)."""
    shape: Tuple[int, ...]
    dtype: torch.dtype


_SAME_SHAPE = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
               nn.LayerNorm, nn.PReLU, nn.Hardtanh, nn.Threshold) + _ACT_ZERO + _ACT_DIRTY


class _ShapeProp(ShapeProp):
    """ShapeProp that can run on the meta device (shapes only, no arithmetic), and never prints.

    On the meta device every module runs with meta copies of its parameters and buffers
    (``torch.func.functional_call``), so a ResNet-50 at 224x224 takes milliseconds.
    """

    def __init__(self, gm: torch.fx.GraphModule, meta: bool):
        super().__init__(gm)
        self.on_meta = meta

    def run_node(self, n: torch.fx.Node) -> Any:
        result = torch.fx.Interpreter.run_node(self, n)
        found = []

        def extract(obj):
            if isinstance(obj, torch.Tensor):
                found.append(True)
                return TensorShape(tuple(obj.shape), obj.dtype)
            return obj

        meta = torch.fx.node.map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result

    def call_function(self, target, args, kwargs):
        if self.on_meta and target in _ARITH and target is not operator.pow and not kwargs:
            shape = self._broadcast(args)   # meta arithmetic would import torch._dynamo (seconds)
            if shape is not None:
                return shape
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if self.on_meta and target in _M_ARITH and target != "pow" and not kwargs:
            shape = self._broadcast(args)
            if shape is not None:
                return shape
        return super().call_method(target, args, kwargs)

    @staticmethod
    def _broadcast(args) -> Optional[torch.Tensor]:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(args) != 2 or not tensors or not all(
                isinstance(a, (torch.Tensor, int, float)) for a in args):
            return None
        try:
            shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        except RuntimeError:
            return None
        dtype = torch.result_type(*args) if len(tensors) == 2 or not isinstance(
            args[0], bool) else tensors[0].dtype
        return torch.empty(shape, dtype=dtype, device="meta")

    def fetch_attr(self, target: str):
        obj = super().fetch_attr(target)
        return obj.to("meta") if self.on_meta and isinstance(obj, torch.Tensor) else obj

    def call_module(self, target, args, kwargs):
        if not self.on_meta:
            return super().call_module(target, args, kwargs)
        mod = self.fetch_attr(target)
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            if is_selecting(mod):
                shape = args[0].shape[:1] + (len(mod.index),) + args[0].shape[2:]
                return torch.empty(shape, dtype=args[0].dtype, device="meta")
            if isinstance(mod, _SAME_SHAPE):
                return torch.empty_like(args[0])
            shape = _module_shape(mod, tuple(args[0].shape))
            if shape is not None:
                return torch.empty(shape, dtype=args[0].dtype, device="meta")
        state = {k: v.to("meta") for k, v in mod.named_parameters(remove_duplicate=False)}
        state.update({k: v.to("meta") for k, v in mod.named_buffers(remove_duplicate=False)
                      if v is not None})
        return torch.func.functional_call(mod, state, tuple(args), dict(kwargs))


def _run_shapes(gm: torch.fx.GraphModule, x: torch.Tensor) -> None:
    """Record every node's shape: on the meta device, else (an op meta cannot run) for real."""
    try:
        _ShapeProp(gm, meta=True).propagate(x.to("meta"))
    except Exception:
        for node in gm.graph.nodes:
            node.meta.pop("tensor_meta", None)
        _ShapeProp(gm, meta=False).propagate(x)


def propagate_shapes(model: nn.Module, gm: torch.fx.GraphModule,
                     example_input: ExampleInput) -> Tuple[int, ...]:
    """Record the shape of every node (eval mode, no grad; training flags restored).

    Returns the input shape. Without an example input, tries inputs of the usual image sizes for
    the first layer's channel count and keeps the first that runs.
    """
    x = example_tensor(model, example_input)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if x is not None:
                try:
                    _run_shapes(gm, x)
                except Exception as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ThinningError(f"cannot thin {type(model).__name__}: the forward pass on "
                                        f"the example input of shape {tuple(x.shape)} failed "
                                        f"({type(e).__name__}: {first})") from None
                return tuple(x.shape)
            tried = []
            for shape in _candidate_inputs(model):
                x = example_tensor(model, shape)
                for node in gm.graph.nodes:   # no stale shapes from a failed attempt
                    node.meta.pop("tensor_meta", None)
                try:
                    _ShapeProp(gm, meta=True).propagate(x.to("meta"))
                    return tuple(x.shape)
                except Exception:
                    tried.append(str(shape))
            for shape in _candidate_inputs(model):   # ops the meta device cannot run
                x = example_tensor(model, shape)
                for node in gm.graph.nodes:
                    node.meta.pop("tensor_meta", None)
                try:
                    _ShapeProp(gm, meta=False).propagate(x)
                    return tuple(x.shape)
                except Exception:
                    pass
            raise NoExampleInputError(f"cannot thin {type(model).__name__}: no example input given and "
                                f"none of the usual shapes ({', '.join(tried)}) runs through it; "
                                f"pass example_input (or input_shape / dataset in the schedule)")
    finally:
        for m, t in flags:
            m.training = t


def _shape(node) -> Optional[Tuple[int, ...]]:
    if not isinstance(node, torch.fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    shape = getattr(tm, "shape", None)
    return tuple(shape) if shape is not None else None


def _nodes_in(arg) -> List[torch.fx.Node]:
    out: List[torch.fx.Node] = []
    torch.fx.node.map_arg(arg, out.append)
    return out


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if node.op == "call_module":
        return str(node.target)
    if stack:
        path = list(stack.values())[-1][0]
        return str(path) if path else "the model's forward"
    return "the model's forward"


# ---------------------------------------------------------------------------------------------
# The analysis.


class _Analyzer:
    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, input_shape):
        self.model = model
        self.gm = gm
        self.modules = dict(model.named_modules())
        self.g = ChannelGraph(type(model).__name__, input_shape)
        self.env: Dict[torch.fx.Node, Optional[_Info]] = {}
        self._hard: Dict[int, str] = {}
        self._soft: Dict[int, str] = {}
        self._dirty: Dict[int, str] = {}
        self.calls: Dict[str, int] = {}
        self.direct: Dict[str, str] = {}
        self.seen_twice: set = set()
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        self.shared = self._shared_params()

    def _shared_params(self) -> Dict[str, str]:
        seen: Dict[int, str] = {}
        shared: Dict[str, str] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if id(p) in seen and seen[id(p)] != name:
                other = seen[id(p)]
                shared[owner] = f"its parameter '{name}' is shared with '{other}'"
                shared[other.rsplit(".", 1)[0] if "." in other else ""] = \
                    f"its parameter '{other}' is shared with '{name}'"
            seen.setdefault(id(p), name)
        return shared

    # -- blocking ---------------------------------------------------------------------------
    def hard(self, info: Optional[_Info], reason: str) -> None:
        if info is not None:
            for i in set(info.ids):
                self._hard.setdefault(i, reason)

    def soft_ids(self, ids: Iterable[int], reason: str) -> None:
        for i in set(ids):
            self._soft.setdefault(i, reason)

    def source(self, n: int, reason: str) -> List[int]:
        ids = self.g.uf.new(n)
        self.soft_ids(ids, reason)
        return ids

    def block_inputs(self, node: torch.fx.Node, what: str) -> None:
        for arg in _nodes_in((node.args, node.kwargs)):
            self.hard(self.env.get(arg), f"{what} at node '{node.name}' (in {_where(node)})")

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                self.env[node] = (_Info(self.source(shape[1], "the channels of the model's input "
                                                             "are fixed"), 1)
                                  if shape is not None and len(shape) >= 2 else None)
            elif node.op == "get_attr":
                owner = node.target.rsplit(".", 1)[0] if "." in node.target else ""
                self.direct.setdefault(owner, f"its tensor '{node.target}' is read directly at "
                                              f"node '{node.name}'")
                self.env[node] = None
            elif node.op == "call_module":
                self.env[node] = self.module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.env[node] = self.function(node)
            elif node.op == "output":
                for arg in _nodes_in(node.args):
                    info = self.env.get(arg)
                    if info is not None:
                        self.soft_ids(info.ids, "its channels are part of the model's output")
        self.finish()
        return self.g

    def finish(self) -> None:
        g = self.g
        for layer_list in (g.producers, g.consumers, g.followers):
            for rec in layer_list:
                reason = self.direct.get(rec.module) or self.shared.get(rec.module)
                if reason:
                    for i in set(rec.ids):
                        self._hard.setdefault(i, f"module '{rec.module}': {reason}")
        g.base = list(g.uf.parent)
        g.blocks = (self._hard, self._soft, self._dirty)
        g.link_and_block()

    # -- modules ----------------------------------------------------------------------------
    def module(self, node: torch.fx.Node, mod: nn.Module) -> Optional[_Info]:
        x = node.args[0] if node.args else None
        info = self.env.get(x) if isinstance(x, torch.fx.Node) else None
        in_shape, out_shape = _shape(x), _shape(node)
        name = str(node.target)
        has_state = any(True for _ in mod.parameters(recurse=False)) or \
            any(b is not None for b in mod._buffers.values())
        if has_state and self.calls.get(name, 0) > 1:
            times = f"module '{name}' is called {self.calls[name]} times"
            self.block_inputs(node, times)
            if out_shape is None or len(out_shape) < 2:
                return None
            cdim = len(out_shape) - 1 if isinstance(mod, nn.Linear) else 1
            ids = self.g.uf.new(out_shape[cdim])
            for i in ids:
                self._hard[i] = f"{times}, so its channels cannot be removed at one place only"
            if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) and name not in self.seen_twice:
                self.seen_twice.add(name)   # listed, so its zero filters are reported, not ignored
                out_dim = 1 if isinstance(mod, nn.modules.conv._ConvTransposeNd) else 0
                self.g.producers.append(Producer(
                    name, f"{name}.weight", f"{name}.bias" if mod.bias is not None else None,
                    out_dim, ids, "dense",
                    attr="out_features" if isinstance(mod, nn.Linear) else "out_channels"))
            return _Info(ids, cdim)
        if len(node.args) != 1 or node.kwargs:
            return self.fallback(node, f"{type(mod).__name__} '{name}' with several inputs")

        if isinstance(mod, nn.modules.conv._ConvNd):
            return self.conv(node, mod, info, in_shape, out_shape)
        if isinstance(mod, nn.Linear):
            return self.linear(node, mod, info, in_shape)
        if can_select(mod):
            return self.batchnorm(node, mod, info)
        if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            return self.follower(node, mod, info, "num_features", bn=isinstance(
                mod, nn.modules.batchnorm._BatchNorm))
        if isinstance(mod, nn.GroupNorm):
            if mod.num_groups == mod.num_channels:
                return self.follower(node, mod, info, "num_channels", extra_attrs=("num_groups",))
            return self.mixing(node, info, f"GroupNorm '{name}' normalizes groups of "
                                           f"{mod.num_channels // mod.num_groups} channels together")
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters == 1:
                return info
            return self.follower(node, mod, info, "num_parameters")
        if isinstance(mod, nn.LayerNorm):
            return self.layernorm(node, mod, info, in_shape)
        if isinstance(mod, _ACT_ZERO):
            return self.inplace(node, x, info)
        if isinstance(mod, nn.Hardtanh):   # ReLU6 is a Hardtanh subclass, already handled
            out = info if mod.min_val <= 0 <= mod.max_val or info is None else \
                info.dirtied(f"Hardtanh '{name}' maps 0 to a non-zero value")
            return self.inplace(node, x, out)
        if isinstance(mod, nn.Threshold):
            out = info if info is None or mod.value == 0 or mod.threshold < 0 else \
                info.dirtied(f"Threshold '{name}' maps 0 to {mod.value}")
            return self.inplace(node, x, out)
        if isinstance(mod, _ACT_DIRTY):
            out = None if info is None else info.dirtied(
                f"{type(mod).__name__} '{name}' maps a removed (zero) channel to a non-zero value")
            return self.inplace(node, x, out)
        if type(mod) in _POOLS:
            return self.spatial(node, info, in_shape, _POOLS[type(mod)], f"{type(mod).__name__} '{name}'")
        if isinstance(mod, nn.Upsample):
            return self.spatial(node, info, in_shape, len(in_shape) - 2 if in_shape else 0,
                                f"Upsample '{name}'")
        if isinstance(mod, _PADS):
            value = float(getattr(mod, "value", 0.0))
            mode = "constant" if isinstance(mod, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                                                   nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)) else "other"
            return self.pad(node, info, in_shape, list(mod.padding), mode, value,
                            f"{type(mod).__name__} '{name}'")
        if isinstance(mod, nn.Flatten):
            return self.reshape(node, info, in_shape, out_shape, f"Flatten '{name}'")
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return self.softmax(node, info, in_shape, mod.dim, f"{type(mod).__name__} '{name}'")
        return self.fallback(node, f"{type(mod).__name__} '{name}'")

    def inplace(self, node, x, out: Optional[_Info]) -> Optional[_Info]:
        """Later users of an input mutated in place see the new value."""
        mod = self.modules.get(node.target) if node.op == "call_module" else None
        in_place = bool(getattr(mod, "inplace", False)) or bool(node.kwargs.get("inplace")) or (
            node.op == "call_method" and str(node.target).endswith("_"))
        if in_place and isinstance(x, torch.fx.Node):
            self.env[x] = out
        return out

    def conv(self, node, mod, info, in_shape, out_shape) -> Optional[_Info]:
        name = str(node.target)
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
        bias = f"{name}.bias" if mod.bias is not None else None
        if in_shape is None or len(in_shape) != len(mod.kernel_size) + 2:
            return self.fallback(node, f"{type(mod).__name__} '{name}' on an unbatched input")
        if info is not None and info.cdim != 1:
            self.hard(info, f"{type(mod).__name__} '{name}' reads a tensor whose channels were "
                            f"moved to dim {info.cdim}")
            info = None
        if transposed and g != 1:
            self.hard(info, f"grouped {type(mod).__name__} '{name}' is not supported")
            ids = self.g.uf.new(cout)
            for i in ids:
                self._hard[i] = f"grouped {type(mod).__name__} '{name}' is not supported"
            return _Info(ids, 1)
        if info is not None and len(info.ids) != cin:   # never expected: refuse, do not guess
            self.hard(info, f"{type(mod).__name__} '{name}' expects {cin} input channels but the "
                            f"analysis followed {len(info.ids)}")
            info = None
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        if g == 1:
            if info is not None:
                self.g.consumers.append(Consumer(name, f"{name}.weight", in_dim, info.ids, "dense"))
                self._mark_dirty(info)
            ids = self.g.uf.new(cout)
            self.g.producers.append(Producer(name, f"{name}.weight", bias, out_dim, ids, "dense"))
            return _Info(ids, 1)
        per_out = cout // g
        if cin == g:   # depthwise (with channel multiplier per_out): filters follow their input
            if info is None:
                ids = self.source(cout, f"depthwise {type(mod).__name__} '{name}' reads channels "
                                        f"that cannot be followed")
                return _Info(ids, 1)
            self.g.consumers.append(Consumer(name, f"{name}.weight", in_dim, info.ids, "depthwise",
                                             groups=g))
            ids = [info.ids[o // per_out] for o in range(cout)]
            self.g.producers.append(Producer(name, f"{name}.weight", bias, out_dim, ids, "depthwise",
                                             groups=g))
            return _Info(ids, 1)
        # grouped: keep the group count, remove the same number of channels from every group
        if info is not None:
            self.g.consumers.append(Consumer(name, f"{name}.weight", in_dim, info.ids, "grouped",
                                             groups=g))
            self._mark_dirty(info)
        ids = self.g.uf.new(cout)
        self.g.producers.append(Producer(name, f"{name}.weight", bias, out_dim, ids, "grouped",
                                         groups=g))
        return _Info(ids, 1)

    def _mark_dirty(self, info: _Info) -> None:
        if info.dirty is not None:
            for i, reason in zip(info.ids, info.dirty):
                if reason is not None:
                    self._dirty.setdefault(i, reason)

    def linear(self, node, mod, info, in_shape) -> Optional[_Info]:
        name = str(node.target)
        if in_shape is None:
            return self.fallback(node, f"Linear '{name}'")
        last = len(in_shape) - 1
        if info is not None and info.cdim != last:
            self.hard(info, f"Linear '{name}' acts on dim {last}, not on the channel dim "
                            f"{info.cdim}")
            info = None
        if info is not None and len(info.ids) != mod.in_features:
            self.hard(info, f"Linear '{name}' expects {mod.in_features} input features but the "
                            f"analysis followed {len(info.ids)}")
            info = None
        if info is not None:
            self.g.consumers.append(Consumer(name, f"{name}.weight", 1, info.ids, "dense",
                                             attr="in_features"))
            self._mark_dirty(info)
        ids = self.g.uf.new(mod.out_features)
        self.g.producers.append(Producer(name, f"{name}.weight",
                                         f"{name}.bias" if mod.bias is not None else None, 0, ids,
                                         "dense", attr="out_features"))
        return _Info(ids, last)

    def follower(self, node, mod, info, attr, bn=False, extra_attrs=()) -> Optional[_Info]:
        name = str(node.target)
        if info is None:
            return None
        if info.cdim != 1:
            return self.mixing(node, info, f"{type(mod).__name__} '{name}' normalizes dim 1, "
                                           f"not the channel dim {info.cdim}")
        per_channel = [(t, v) for t, v in list(mod._parameters.items()) + list(mod._buffers.items())
                       if v is not None and v.dim() >= 1]
        if any(v.dim() != 1 or v.shape[0] != len(info.ids) for _, v in per_channel):
            return self.mixing(node, info, f"{type(mod).__name__} '{name}' has tensors that are not "
                                           f"one value per channel of its {len(info.ids)}")
        tensors = [f"{name}.{t}" for t, _ in per_channel]
        shift = None
        if bn:
            shift = tuple(f"{name}.{t}" if getattr(mod, t, None) is not None else ""
                          for t in ("bias", "weight", "running_mean", "running_var"))
        self.g.followers.append(Follower(name, tensors, [attr, *extra_attrs], info.ids, shift))
        return info

    def batchnorm(self, node, mod, info) -> Optional[_Info]:
        """A batch norm that may select channels: output elements of its own, linked to the input
        channels it reads (all, or ``mod.index`` once it selects; see ``ChannelGraph``)."""
        name = str(node.target)
        if info is None:
            return None
        if info.cdim != 1:
            return self.mixing(node, info, f"{type(mod).__name__} '{name}' normalizes dim 1, "
                                           f"not the channel dim {info.cdim}")
        n_in = len(info.ids)
        index = mod.index.tolist() if is_selecting(mod) else None
        reads = index if index is not None else range(n_in)
        tensors = list(mod._parameters.items()) + list(mod._buffers.items())
        per_channel = [(t, v) for t, v in tensors if v is not None and v.dim() >= 1
                       and not (t == "index" and index is not None)]
        if len(reads) != mod.num_features or any(not 0 <= k < n_in for k in reads) or any(
                v.dim() != 1 or v.shape[0] != mod.num_features for _, v in per_channel):
            return self.mixing(node, info, f"{type(mod).__name__} '{name}' has tensors that are "
                                           f"not one value per channel of its {n_in}")
        ids = self.g.uf.new(mod.num_features)
        shift = tuple(f"{name}.{t}" if getattr(mod, t, None) is not None else ""
                      for t in ("bias", "weight", "running_mean", "running_var"))
        self.g.followers.append(Follower(name, [f"{name}.{t}" for t, _ in per_channel],
                                         ["num_features"], ids, shift, list(info.ids), index))
        dirty = None if info.dirty is None else [info.dirty[k] for k in reads]
        return _Info(ids, 1, dirty)

    def layernorm(self, node, mod, info, in_shape) -> Optional[_Info]:
        if info is None or in_shape is None:
            return info
        first = len(in_shape) - len(mod.normalized_shape)
        if info.cdim >= first:
            return self.mixing(node, info, f"LayerNorm '{node.target}' normalizes over the "
                                           f"channel dimension")
        return info.dirtied(f"LayerNorm '{node.target}' maps a zero channel to its bias") \
            if mod.bias is not None else info

    def spatial(self, node, info, in_shape, nd: int, what: str) -> Optional[_Info]:
        if info is None or in_shape is None:
            return info
        if info.cdim >= len(in_shape) - nd:
            return self.mixing(node, info, f"{what} acts on the channel dimension")
        return info

    def pad(self, node, info, in_shape, padding, mode, value, what) -> Optional[_Info]:
        if info is None or in_shape is None:
            return info
        rank = len(in_shape)
        pairs = {rank - 1 - k: (padding[2 * k], padding[2 * k + 1]) for k in range(len(padding) // 2)}
        lo, hi = pairs.get(info.cdim, (0, 0))
        if lo == 0 and hi == 0:
            return info if value == 0 or mode != "constant" else info.dirtied(
                f"{what} pads with {value}")
        if mode != "constant" or lo < 0 or hi < 0:
            return self.mixing(node, info, f"{what} pads the channel dimension with copies of "
                                           f"channels")
        reason = f"{what} pads constant channels on"
        dirty = None
        if value != 0 and any(pairs.get(d, (0, 0)) != (0, 0) for d in range(rank) if d != info.cdim):
            dirty = [f"{what} pads with {value}"] * len(info.ids)
        ids = self.source(lo, reason) + info.ids + self.source(hi, reason)
        old = info.dirty or dirty
        if old is not None:
            old = [None] * lo + list(old) + [None] * hi
        return _Info(ids, info.cdim, old)

    def softmax(self, node, info, in_shape, dim, what) -> Optional[_Info]:
        if info is None or in_shape is None:
            return info
        if dim is None or dim % len(in_shape) == info.cdim:
            return self.mixing(node, info, f"{what} normalizes over the channel dimension")
        return info.dirtied(f"{what} maps a zero channel to a non-zero value")

    def mixing(self, node, info, what: str) -> None:
        self.hard(info, f"{what} at node '{node.name}' (in {_where(node)})")
        return None

    def fallback(self, node, what: str) -> None:
        """An op we do not know: every channel reaching it is kept, and its output is untracked."""
        self.block_inputs(node, f"{what} cannot be followed")
        return None

    # -- functions and methods ----------------------------------------------------------------
    def function(self, node: torch.fx.Node) -> Optional[_Info]:
        t = node.target
        tracked = [a for a in _nodes_in((node.args, node.kwargs)) if self.env.get(a) is not None]
        if not tracked:
            return None   # nothing we follow goes in (shapes, constants, untracked tensors)
        x = node.args[0] if node.args else None
        info = self.env.get(x) if isinstance(x, torch.fx.Node) else None
        in_shape, out_shape = _shape(x), _shape(node)
        fname = _fname(t)
        is_m = node.op == "call_method"
        if t is getattr or (is_m and t in _SHAPE_QUERIES):
            return None
        if t is operator.getitem:
            return self.getitem(node, info, in_shape)
        if (not is_m and t in _ARITH) or (is_m and t in _M_ARITH):
            return self.arith(node, _ARITH.get(t) if not is_m else _M_ARITH[t])
        if (not is_m and t in _F_ZERO) or (is_m and t in _M_ZERO):
            if info is not None and len(tracked) == 1:
                if t is F.hardtanh:
                    lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
                    hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
                    if not lo <= 0 <= hi:
                        return self.inplace(node, x, info.dirtied(f"{fname} maps 0 to non-zero"))
                return self.inplace(node, x, info)
        if (not is_m and t in _F_DIRTY) or (is_m and t in _M_DIRTY):
            if info is not None and len(tracked) == 1:
                return self.inplace(node, x, info.dirtied(
                    f"{fname} at node '{node.name}' maps a removed (zero) channel to a non-zero value"))
        if (t is torch.clamp or (is_m and t in ("clamp", "clamp_", "clip"))) and info is not None \
                and len(tracked) == 1:
            lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
            hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
            ok = (lo is None or (isinstance(lo, (int, float)) and lo <= 0)) and \
                 (hi is None or (isinstance(hi, (int, float)) and hi >= 0))
            return self.inplace(node, x, info if ok else info.dirtied(f"{fname} maps 0 to non-zero"))
        if not is_m and t in _F_POOL and info is not None and len(tracked) == 1:
            return self.spatial(node, info, in_shape, _F_POOL[t], fname)
        if not is_m and t is F.interpolate and info is not None and len(tracked) == 1:
            return self.spatial(node, info, in_shape, len(in_shape) - 2, fname)
        if not is_m and t is F.pad and info is not None and len(tracked) == 1:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
            if isinstance(pad, (list, tuple)) and all(isinstance(p, int) for p in pad):
                return self.pad(node, info, in_shape, list(pad), mode, float(value or 0.0), fname)
        if (not is_m and t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)) or \
                (is_m and t in ("softmax", "log_softmax")):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            if isinstance(dim, int) or dim is None:
                return self.softmax(node, info, in_shape, dim, fname)
        if (not is_m and t in _CAT) or (is_m and t == "cat"):
            return self.cat(node)
        if (not is_m and t is torch.flatten) or (is_m and t in ("flatten", "view", "reshape")) or \
                (not is_m and t is torch.reshape):
            if info is not None and len(tracked) == 1:
                return self.reshape(node, info, in_shape, out_shape, fname)
        if (not is_m and t in (torch.permute, torch.transpose)) or \
                (is_m and t in ("permute", "transpose", "unsqueeze", "squeeze")) or \
                (not is_m and t in (torch.unsqueeze, torch.squeeze)):
            if info is not None and len(tracked) == 1:
                return self.move(node, info, in_shape, out_shape, fname)
        if ((not is_m and t in _REDUCE) or (is_m and t in _M_REDUCE)) and info is not None \
                and len(tracked) == 1:
            return self.reduce(node, info, in_shape, out_shape, fname)
        return self.fallback(node, fname)

    def getitem(self, node, info, in_shape) -> Optional[_Info]:
        if info is None or in_shape is None:
            return None   # indexing a tuple/list: the op that made it was handled already
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (torch.fx.Node, list, torch.Tensor)) or
               (not isinstance(i, (int, slice)) and i is not None and i is not Ellipsis) for i in idx):
            return self.mixing(node, info, "indexing with tensors or lists")
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
                return self.mixing(node, info, "indexing into the channel dimension")
            in_dim += 1
            if isinstance(d, slice):
                out_dim += 1
        return self.mixing(node, info, "indexing into the channel dimension")

    def _operand(self, a):
        """(info, shape, is_scalar, scalar_value) of an arithmetic operand."""
        if isinstance(a, torch.fx.Node):
            shape = _shape(a)
            if shape is None:
                return None, None, True, None
            return self.env.get(a), shape, False, None
        if isinstance(a, (int, float, bool)):
            return None, None, True, float(a)
        if isinstance(a, torch.Tensor):
            return None, tuple(a.shape), False, None
        return None, None, True, None

    def arith(self, node, op: str) -> Optional[_Info]:
        if len(node.args) < 2:
            return self.fallback(node, _fname(node.target))
        a, b = node.args[0], node.args[1]
        out_shape = _shape(node)
        if out_shape is None:
            return self.fallback(node, _fname(node.target))
        R = len(out_shape)
        ia, sa, scal_a, va = self._operand(a)
        ib, sb, scal_b, vb = self._operand(b)
        what = f"{_fname(node.target)} at node '{node.name}' (in {_where(node)})"

        def aligned(info, shape):
            return None if info is None else info.cdim + (R - len(shape))

        ca, cb = aligned(ia, sa), aligned(ib, sb)
        if op == "pow":
            if ia is not None and scal_b and vb is not None and vb > 0:
                return self.inplace(node, a, ia.with_(cdim=ca))
            return self.fallback(node, _fname(node.target))
        if op == "div" and ib is not None:
            self.hard(ia, f"division by channels in {what}")
            self.hard(ib, f"division by channels in {what}")
            return None
        if ia is not None and ib is not None:
            if ca != cb:
                self.hard(ia, f"{what} combines tensors whose channels are on different dims")
                self.hard(ib, f"{what} combines tensors whose channels are on different dims")
                return None
            na, nb = len(ia.ids), len(ib.ids)
            if na == nb:
                for i, j in zip(ia.ids, ib.ids):
                    self.g.uf.union(i, j)
                da = ia.dirty or [None] * na
                db = ib.dirty or [None] * nb
                if op == "mul":   # zero if either side is zero
                    dirty = [x if (x is not None and y is not None) else None for x, y in zip(da, db)]
                else:
                    dirty = [x or y for x, y in zip(da, db)]
                out = _Info(ia.ids, ca, dirty)
                return self.inplace(node, a, out)
            if 1 in (na, nb):   # one side broadcasts a single channel over the other's
                small, big = (ia, ib) if na == 1 else (ib, ia)
                self.soft_ids(small.ids, f"{what} broadcasts this single channel over others")
                out = big.with_(cdim=ca)
                if op in ("add", "sub"):
                    out = out.dirtied(f"{what} adds a broadcast channel")
                return self.inplace(node, a, out)
            self.hard(ia, f"{what} combines tensors of different channel counts")
            self.hard(ib, f"{what} combines tensors of different channel counts")
            return None
        info, cdim, other_shape, other_scalar, other_value = (
            (ia, ca, sb, scal_b, vb) if ia is not None else (ib, cb, sa, scal_a, va))
        if not other_scalar and other_shape is not None:
            od = cdim - (R - len(other_shape))
            if od >= 0 and other_shape[od] != 1:
                return self.mixing(node, info, f"{what} with a per-channel tensor that is not "
                                               f"followed")
        out = info.with_(cdim=cdim)
        if op in ("add", "sub") and not (other_scalar and other_value == 0):
            out = out.dirtied(f"{what} adds a value to a removed (zero) channel")
        return self.inplace(node, a, out)

    def cat(self, node) -> Optional[_Info]:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = _shape(node)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or out_shape is None:
            return self.fallback(node, "torch.cat")
        dim %= len(out_shape)
        infos = [self.env.get(t) if isinstance(t, torch.fx.Node) else None for t in tensors]
        tracked = [i for i in infos if i is not None]
        cdims = {i.cdim for i in tracked}
        if len(cdims) != 1:
            return self.fallback(node, "torch.cat of tensors with channels on different dims")
        cdim = cdims.pop()
        what = f"torch.cat at node '{node.name}' (in {_where(node)})"
        if dim == cdim:
            ids: List[int] = []
            dirty: List[Optional[str]] = []
            for t, i in zip(tensors, infos):
                if i is None:
                    shape = _shape(t)
                    n = shape[cdim] if shape is not None else 0
                    ids.extend(self.source(n, f"{what} joins channels that cannot be followed"))
                    dirty.extend([None] * n)
                else:
                    ids.extend(i.ids)
                    dirty.extend(i.dirty or [None] * len(i.ids))
            return _Info(ids, cdim, dirty)
        if len(tracked) != len(infos) or len({len(i.ids) for i in tracked}) != 1:
            return self.mixing(node, tracked[0], f"{what} joins tensors whose channels differ")
        first = tracked[0]
        for other in tracked[1:]:
            for i, j in zip(first.ids, other.ids):
                self.g.uf.union(i, j)
        dirty = [None] * len(first.ids)
        for i in tracked:
            if i.dirty:
                dirty = [d or e for d, e in zip(dirty, i.dirty)]
        return _Info(first.ids, cdim, dirty)

    def reshape(self, node, info, in_shape, out_shape, what) -> Optional[_Info]:
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
        new = _reshape_cdim(in_shape, out_shape, c)
        if new is None:
            return self.mixing(node, info, f"{what} to {list(out_shape)} mixes the channel "
                                           f"dimension with others")
        cdim, factor = new
        if sizes is not None and cdim < len(sizes):
            s = sizes[cdim]
            if isinstance(s, int) and s != -1:
                return self.mixing(node, info, f"{what} has the fixed size {s} at the channel "
                                               f"dimension (use x.flatten(1) or "
                                               f"x.view(x.size(0), -1), which follow thinning)")
        if factor == 1:
            return info.with_(cdim=cdim)
        ids = [i for i in info.ids for _ in range(factor)]
        dirty = None if info.dirty is None else [d for d in info.dirty for _ in range(factor)]
        return _Info(ids, cdim, dirty)

    def move(self, node, info, in_shape, out_shape, what) -> Optional[_Info]:
        if in_shape is None or out_shape is None:
            return self.fallback(node, what)
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
        if name == "transpose":
            d0 = args[0] if args else node.kwargs.get("dim0")
            d1 = args[1] if len(args) > 1 else node.kwargs.get("dim1")
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
                return self.mixing(node, info, f"{what} squeezes the single channel away")
            return info.with_(cdim=c - sum(1 for x in dims if x < c))
        return self.fallback(node, what)

    def reduce(self, node, info, in_shape, out_shape, what) -> Optional[_Info]:
        if in_shape is None or out_shape is None:
            return self.fallback(node, what)
        rank = len(in_shape)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if dim is None:
            return self.mixing(node, info, f"{what} over all dimensions")
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not all(isinstance(d, int) for d in dims):
            return self.fallback(node, what)
        dims = [d % rank for d in dims]
        if info.cdim in dims:
            return self.mixing(node, info, f"{what} over the channel dimension")
        return info.with_(cdim=info.cdim if keep else info.cdim - sum(1 for d in dims if d < info.cdim))


def _reshape_cdim(in_shape, out_shape, c) -> Optional[Tuple[int, int]]:
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


def analyze_graph(model: nn.Module, example_input: ExampleInput = None) -> ChannelGraph:
    """Trace ``model`` (unwrapped), propagate shapes and follow every channel; see module doc.

    Without ``example_input``, the model's recorded one (``compressor.example_input``) is used,
    else the usual image sizes are tried."""
    if example_input is None:
        example_input = example_input_of(model)
    model = unwrap(model)
    gm = trace(model)
    shape = propagate_shapes(model, gm, example_input)
    return _Analyzer(model, gm, shape).run()


def coupled_filter_groups(model: nn.Module, example_input: ExampleInput = None) -> List[List[str]]:
    """Weight names whose output channels must share one filter mask, one list per group.

    Two layers are coupled when channel ``i`` of one meets channel ``i`` of the other: both feed
    the same residual addition, or one is a depthwise convolution reading the other. Only groups
    of two or more layers are listed, each in model order. Without ``example_input`` the usual
    image sizes are tried. Raises ``ThinningError`` when the model cannot be traced.
    """
    g = analyze_graph(model, example_input)
    order = [n for n, _ in unwrap(model).named_parameters()]
    return g.coupled_groups(order)


def coupled_filter_classes(model: nn.Module, example_input: ExampleInput = None
                           ) -> List[Dict[str, List[int]]]:
    """Layers whose output channels are coupled in part, e.g. a depthwise convolution reading a
    concatenation of two convolutions: {weight: class position of each of its output channels},
    one mapping per group (see ``ChannelGraph.coupled_classes``). Pruning the group's classes
    together keeps every member's zero filters aligned, so thinning removes them."""
    g = analyze_graph(model, example_input)
    order = [n for n, _ in unwrap(model).named_parameters()]
    return g.coupled_classes(order)
