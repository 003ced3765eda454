"""Small questions about a model's dataflow graph, answered with torch.fx.

Which convolution feeds which batch norm (``conv_bn_pairs``, used by ``fold_batchnorm`` and by
structured pruners to mask the batch norm of a pruned filter), and which activation module first
sees each convolution's output channels (``following_activations``, used by activation-ranked
pruners to place their hooks). The thinning module builds its own, fuller view of the graph.
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


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` (unwrapped), with a clear error when it cannot be traced."""
    model = unwrap(model)
    try:
        return torch.fx.symbolic_trace(model)
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
        if len(consumers) == 1 and consumers[0].op == "call_module" and isinstance(
                modules.get(consumers[0].target), nn.modules.batchnorm._BatchNorm):
            pairs[f"{node.target}.weight"] = modules[consumers[0].target]
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
            return isinstance(modules.get(node.target), _CHANNEL_PRESERVING_MODULES)
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
