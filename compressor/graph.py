"""Small questions about a model's dataflow graph, answered with torch.fx.

For now: which convolution feeds which batch norm (used by ``fold_batchnorm``). The thinning
module builds its own, fuller view of the graph.
"""
from __future__ import annotations

from typing import Dict

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
