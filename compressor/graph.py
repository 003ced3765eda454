"""Small questions about a model's dataflow graph, answered with torch.fx.

Which convolution feeds which batch norm (``conv_bn_pairs``, used by ``fold_batchnorm`` and by
structured pruners to mask the batch norm of a pruned filter), and which activation module first
sees each convolution's output channels (``following_activations``, used by activation-ranked
pruners to place their hooks). The thinning module builds its own, fuller view of the graph.

A module whose class sets ``selects_channels = True`` (thinning's channel-selecting batch norm,
``compressor.thinning.selection``) is traced as a leaf, and its output channels are not taken for
its input's: it is no conv's batch norm, and activations are not followed through it.
"""
from __future__ import annotations

import operator
from collections import Counter, deque
from typing import Dict, Iterable, Optional, Tuple, Type

import torch
import torch.fx
from torch import nn

from .errors import CompressorError
from .masks import unwrap


def selects_channels(module: nn.Module) -> bool:
    """Whether ``module`` reads only some of its input channels (see the module docstring)."""
    return getattr(type(module), "selects_channels", False) is True


def _wrapped(m: nn.Module) -> Optional[nn.Module]:
    """The module a DataParallel / DistributedDataParallel / torch.compile wrapper holds, else None."""
    inner = unwrap(m)
    return inner if inner is not m else None


class _Tracer(torch.fx.Tracer):
    """torch.fx's default tracer, keeping channel-selecting modules as leaves and tracing through
    wrapped submodules.

    A submodule wrapped in DataParallel (Distiller's VGG/AlexNet layout, ``features.module.0``),
    DDP or ``torch.compile`` would otherwise be one opaque leaf (or untraceable): the wrapper's
    call is replaced by its inner module's, so the graph's module names are the real paths with
    the wrapper's segment (``features.module.0``, ``features._orig_mod.0``), as the model's
    parameter names have them.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _wrapped(m) is not None:
            return False
        return selects_channels(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        inner = _wrapped(m)
        if inner is not None:
            return self.call_module(inner, inner.forward, args, kwargs)
        return super().call_module(m, forward, args, kwargs)


def symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, with channel-selecting modules kept as leaves."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` (unwrapped), with a clear error when it cannot be traced."""
    model = unwrap(model)
    try:
        return symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise CompressorError(f"cannot trace {type(model).__name__} with torch.fx: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def conv_bn_pairs(model: nn.Module) -> Dict[str, nn.Module]:
    """{conv weight name: the BatchNorm module that directly consumes that conv's output}."""
    gm = trace(model)
    modules = dict(unwrap(model).named_modules())
    users = {}
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            users.setdefault(arg, []).append(node)
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.conv._ConvNd):
            continue
        consumers = users.get(node, [])
        bn = modules.get(consumers[0].target) if len(consumers) == 1 and \
            consumers[0].op == "call_module" else None
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not selects_channels(bn):
            pairs[f"{node.target}.weight"] = bn
    return pairs


# Nodes that keep a convolution's output channels where they are: channel c of their output is
# (a function of) channel c of the convolution's. Pooling and reshapes are not walked through.
_CHANNEL_PRESERVING_MODULES: Tuple[Type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout, nn.Dropout2d)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


def following_activations(model: nn.Module,
                          classes: Optional[Iterable[Type[nn.Module]]] = None) -> Dict[str, str]:
    """{conv weight name: name of the activation module that first sees that conv's channels}.

    From each convolution the graph is walked forward, breadth first, through batch norms,
    identities, dropouts and additions (a residual sum: its channels are the conv's channels plus
    the shortcut's), to the nearest module of ``classes`` (default: ReLU, ReLU6, LeakyReLU), so no
    naming convention is assumed. A convolution is left out when no such module is reached or when
    the module is called more than once in ``forward`` (a forward hook could not tell the calls apart).
    """
    if classes is None:
        from .activations import ACTIVATIONS
        classes = ACTIVATIONS
    classes = tuple(classes)
    gm = trace(model)
    modules = dict(unwrap(model).named_modules())
    users: Dict[torch.fx.Node, list] = {}
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            users.setdefault(arg, []).append(node)
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")

    def passes(node) -> bool:
        if node.op == "call_module":
            mod = modules.get(node.target)
            return isinstance(mod, _CHANNEL_PRESERVING_MODULES) and not selects_channels(mod)
        if node.op == "call_function":
            return node.target in _ADD_FUNCTIONS
        return node.op == "call_method" and node.target in _ADD_METHODS

    found: Dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.conv._ConvNd):
            continue
        queue, seen = deque(users.get(node, [])), set()
        while queue:
            nxt = queue.popleft()
            if nxt in seen:
                continue
            seen.add(nxt)
            if nxt.op == "call_module" and isinstance(modules.get(nxt.target), classes):
                if calls[nxt.target] == 1:
                    found[f"{node.target}.weight"] = nxt.target
                break
            if passes(nxt):
                queue.extend(users.get(nxt, []))
    return found
