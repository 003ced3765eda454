"""Shape propagation: the shape of every tensor of a traced graph, from an example input.

The example input is a tensor or the shape of one sample (``(3, 32, 32)``); without one, inputs of
the usual image sizes for the first layer's channel count are tried. Shapes run on the meta device
(no arithmetic: a ResNet-50 at 224x224 takes milliseconds), with the common layers' output shapes
computed by PyTorch's documented formulas, and for real only where an op cannot run on meta.
Every node gets ``node.meta['tensor_meta']`` (a ``TensorShape``); read it with
``nodes.node_shape``. Dataset names are resolved by the callers that accept them, not here.
"""
from __future__ import annotations

import operator
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ThinningError
from .optables import ACT_DIRTY, ACT_ZERO, ARITH, M_ARITH, POOLS
from .trace import selects_channels

ExampleInput = Union[torch.Tensor, Sequence[int], None]


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


def module_shape(mod: nn.Module, shape: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
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
        n = POOLS[type(mod)]
        if len(shape) != n + 2 or getattr(mod, "return_indices", False):
            return None
        k = tup(mod.kernel_size, n)
        st = tup(mod.stride if mod.stride is not None else mod.kernel_size, n)
        return shape[:2] + tuple(spatial(k, st, tup(mod.padding, n),
                                         tup(getattr(mod, "dilation", 1), n), n, mod.ceil_mode))
    if type(mod) in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d):
        n = POOLS[type(mod)]
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
               nn.LayerNorm, nn.PReLU, nn.Hardtanh, nn.Threshold) + ACT_ZERO + ACT_DIRTY


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
        if self.on_meta and target in ARITH and target is not operator.pow and not kwargs:
            shape = self._broadcast(args)   # meta arithmetic would import torch._dynamo (seconds)
            if shape is not None:
                return shape
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        if self.on_meta and target in M_ARITH and target != "pow" and not kwargs:
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
            if selects_channels(mod):
                shape = args[0].shape[:1] + (len(mod.index),) + args[0].shape[2:]
                return torch.empty(shape, dtype=args[0].dtype, device="meta")
            if isinstance(mod, _SAME_SHAPE):
                return torch.empty_like(args[0])
            shape = module_shape(mod, tuple(args[0].shape))
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

