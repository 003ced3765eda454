"""Small questions about a model's dataflow graph: which batch norm follows a convolution, which
activation first sees its channels.

``conv_bn_pairs`` serves ``fold_batchnorm`` and the structured pruners that mask the batch norm of
a pruned filter; ``following_activations`` serves the activation-ranked pruners placing their
hooks. A channel-selecting module (``trace.selects_channels``) is no conv's batch norm, and
activations are not followed through it. The fuller channel view is ``analyzer.analyze_graph``.
"""
from __future__ import annotations

import operator
from collections import Counter, deque
from typing import Dict, Iterable, Optional, Tuple, Type

import torch
import torch.fx
from torch import nn

from ..masks import unwrap
from .trace import selects_channels, trace


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
        from ..activations import ACTIVATIONS   # lazily: it imports pandas (slow), needed here only
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
