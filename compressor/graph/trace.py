"""Tracing a model with torch.fx: through DataParallel / DDP / torch.compile wrappers, with
channel-selecting modules kept as leaves.

A module whose class sets ``selects_channels = True`` (thinning's channel-selecting batch norm, see
``compressor.thinning.selection``) or ``graph_leaf = True`` (a LayerNorm told the mask,
``compressor.thinning.norms``) is one leaf of the graph: its ``index_select`` then needs no
tracing, and the graph code knows its output channels are not its input's. ``trace`` is the one
entry every graph reader uses; it raises ``TraceError`` (a ``CompressorError``) naming the model
when torch.fx cannot follow its forward, and callers word that for their own purpose.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx
from torch import nn

from ..errors import CompressorError
from ..masks import unwrap
from .attention import is_attention_leaf


class TraceError(CompressorError):
    """torch.fx cannot trace a model's forward; ``model`` is its class name, ``cause`` the
    exception's type and the first line of what torch.fx said."""

    def __init__(self, model: str, error: Exception):
        text = str(error)
        super().__init__(f"cannot trace {model} with torch.fx: {type(error).__name__}: "
                         f"{text.splitlines()[0] if text else ''}")
        first = text.strip().splitlines()[0] if text.strip() else ""
        self.model, self.cause = model, f"{type(error).__name__}: {first}"


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
        # attention modules (nn.MultiheadAttention, torchvision's window attention, their thinned
        # subclasses) stay one node: a rule reads their heads (graph.attention)
        return selects_channels(m) or is_attention_leaf(m) or \
            getattr(type(m), "graph_leaf", False) is True or \
            super().is_leaf_module(m, module_qualified_name)

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
    """Symbolically trace ``model`` (unwrapped); ``TraceError`` when torch.fx cannot."""
    model = unwrap(model)
    try:
        return symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise TraceError(type(model).__name__, e) from None
