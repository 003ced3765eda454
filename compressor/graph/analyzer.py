"""The channel analysis: walk a traced, shape-annotated graph and apply each op's rule.

Every output channel of a convolution or linear layer is an element of a union-find; the channel
dimension of each tensor is the list of elements at its positions (``ChannelInfo``). Each node's
rule (``module_rules.MODULE_RULES`` by module class, ``function_rules.FUNCTION_RULES`` /
``METHOD_RULES`` by callable or method name) passes the list through, unites, concatenates or
repeats it, and records the layers it touches (``Producer``, ``Consumer``, ``Follower``). The
classes of the union-find are the units thinning removes, all or nothing.

Whatever a rule cannot follow exactly *blocks* the classes it touches, with a reason:

* hard blocks: an op that mixes channels (``x.mean(1)``, a ``view`` that splits them, a matmul, a
  module called twice, an op no table lists ...). Removing a channel behind one is refused.
* soft blocks: channels that are not ours to remove (the model's input, the model's output,
  constant channels padded on). They are silently kept.
* dirty: an op between the layer and its consumer maps a removed (all-zero) channel to a non-zero
  value (``sigmoid``, ``x + 1``), so removing it by its zero *filters* would change the function.
  Removal because every consumer ignores the channel (``remove_channels``) is still exact.

A batch norm's output channels get elements of their own, *linked* to the input channels it reads
(all of them, or its ``index`` once it selects channels). The links are joined at the end, so by
default a batch norm passes its classes through like any per-channel layer; ``ChannelGraph.cut``
gives the same graph with some links left open. The analysis is linear in the size of the graph
plus the total number of channels.
"""
from __future__ import annotations

import operator
from typing import Dict, Iterable, List, Optional

import torch
import torch.fx
from torch import nn

from ..errors import ThinningError
from ..masks import unwrap
from .blocks import analyze_blocks, is_hf_model
from .example_input import example_input_of
from .function_rules import FUNCTION_RULES, METHOD_RULES, NAMED_FUNCTION_RULES, Call
from .module_rules import rule_for
from .nodes import node_shape, nodes_in, qualified_name, target_name, where
from .optables import SHAPE_QUERIES
from .records import ChannelGraph, ChannelInfo, ChannelTuple, ParamSlice, Producer
from .shapes import ExampleInput, propagate_shapes
from .shuffle import ChannelGrid, finish_units, grid_op
from .trace import TraceError, trace


class Analyzer:
    """The state of one walk, and the primitives rules use to record layers and blocks."""

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, input_shape):
        self.model = model
        self.gm = gm
        self.modules = dict(model.named_modules())
        self.g = ChannelGraph(type(model).__name__, input_shape)
        self.env: Dict[torch.fx.Node, Optional[ChannelInfo]] = {}
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
        self._tensors: Optional[Dict[str, torch.Tensor]] = None

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

    def tensor(self, name: str) -> Optional[torch.Tensor]:
        """The model's parameter or buffer ``name`` (a get_attr target), or None."""
        if self._tensors is None:
            self._tensors = dict(self.model.named_parameters())
            self._tensors.update(dict(self.model.named_buffers()))
        return self._tensors.get(name)

    def slice_param(self, name: str, dim: int, ids: List[int]) -> bool:
        """Record that tensor ``name`` is sliced along ``dim`` with the channels ``ids``; a tensor
        met again must meet channels of the same count on the same dim (they are then coupled).
        False when it does not (the caller blocks the channels)."""
        for rec in self.g.params:
            if rec.tensor == name:
                if rec.dim != dim or len(rec.ids) != len(ids):
                    self.hard_ids(rec.ids, f"tensor '{name}' meets channels on two dims")
                    return False
                for i, j in zip(rec.ids, ids):
                    self.g.uf.union(i, j)
                return True
        self.g.params.append(ParamSlice(name, dim, list(ids)))
        return True

    # -- primitives for rules -------------------------------------------------------------------
    def hard(self, info: Optional[ChannelInfo], reason: str) -> None:
        """Block the classes of ``info``'s channels: removing them would change the function."""
        if info is not None:
            self.hard_ids(info.ids, reason)

    def hard_ids(self, ids: Iterable[int], reason: str) -> None:
        for i in set(ids):
            self._hard.setdefault(i, reason)

    def soft_ids(self, ids: Iterable[int], reason: str) -> None:
        """Keep these elements' classes, silently (not ours to remove)."""
        for i in set(ids):
            self._soft.setdefault(i, reason)

    def source(self, n: int, reason: str) -> List[int]:
        """``n`` new elements for channels that come from outside any layer (softly blocked)."""
        ids = self.g.uf.new(n)
        self.soft_ids(ids, reason)
        return ids

    def mark_dirty(self, info: ChannelInfo) -> None:
        """A layer consumes ``info``: its dirty channels cannot be removed by their zero filters."""
        if info.dirty is not None:
            for i, reason in zip(info.ids, info.dirty):
                if reason is not None:
                    self._dirty.setdefault(i, reason)

    def block_inputs(self, node: torch.fx.Node, what: str) -> None:
        for arg in nodes_in((node.args, node.kwargs)):
            self.hard(self.env.get(arg), f"{what} at node '{node.name}' (in {where(node)})")

    def inplace(self, node: torch.fx.Node, x, out: Optional[ChannelInfo]) -> Optional[ChannelInfo]:
        """Later users of an input mutated in place see the new value."""
        mod = self.modules.get(node.target) if node.op == "call_module" else None
        in_place = bool(getattr(mod, "inplace", False)) or bool(node.kwargs.get("inplace")) or (
            node.op == "call_method" and str(node.target).endswith("_"))
        if in_place and isinstance(x, torch.fx.Node):
            self.env[x] = out
        return out

    def mixing(self, node: torch.fx.Node, info: Optional[ChannelInfo], what: str) -> None:
        """An op that mixes the channels of ``info``: they are blocked, nothing is followed out."""
        self.hard(info, f"{what} at node '{node.name}' (in {where(node)})")
        return None

    def fallback(self, node: torch.fx.Node, what: str) -> None:
        """An op we do not know: every channel reaching it is kept, and its output is untracked."""
        self.block_inputs(node, f"{what} cannot be followed")
        return None

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = node_shape(node)
                self.env[node] = (ChannelInfo(self.source(shape[1], "the channels of the model's "
                                                                    "input are fixed"), 1)
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
                for arg in nodes_in(node.args):
                    info = self.env.get(arg)
                    if info is not None:
                        self.soft_ids(info.ids, "its channels are part of the model's output")
        self.finish()
        return self.g

    def finish(self) -> None:
        g = self.g
        finish_units(self)
        for layer_list in (g.producers, g.consumers, g.followers):
            for rec in layer_list:
                reason = self.direct.get(rec.module) or self.shared.get(rec.module)
                if reason:
                    for i in set(rec.ids):
                        self._hard.setdefault(i, f"module '{rec.module}': {reason}")
        g.base = list(g.uf.parent)
        g.blocks = (self._hard, self._soft, self._dirty)
        g.link_and_block()

    def module(self, node: torch.fx.Node, mod: nn.Module) -> Optional[ChannelInfo]:
        x = node.args[0] if node.args else None
        info = self.env.get(x) if isinstance(x, torch.fx.Node) else None
        in_shape, out_shape = node_shape(x), node_shape(node)
        name = str(node.target)
        has_state = any(True for _ in mod.parameters(recurse=False)) or \
            any(b is not None for b in mod._buffers.values())
        if has_state and self.calls.get(name, 0) > 1:
            return self._called_twice(node, mod, out_shape)
        rule = rule_for(mod)
        if rule is not None and getattr(rule, "multi_input", False):   # reads node.args itself
            return rule(self, node, mod, info, in_shape, out_shape)
        if len(node.args) != 1 or node.kwargs:
            return self.fallback(node, f"{type(mod).__name__} '{name}' with several inputs")
        if isinstance(info, (ChannelTuple, ChannelGrid)):
            return self.fallback(node, f"{type(mod).__name__} '{name}' on a tuple of tensors"
                                 if isinstance(info, ChannelTuple) else
                                 f"{type(mod).__name__} '{name}' on a split channel dimension")
        if rule is None:
            return self.fallback(node, f"{type(mod).__name__} '{name}'")
        return rule(self, node, mod, info, in_shape, out_shape)

    def _called_twice(self, node: torch.fx.Node, mod: nn.Module, out_shape) -> Optional[ChannelInfo]:
        """A module with state called more than once: its channels cannot go at one place only."""
        name = str(node.target)
        times = f"module '{name}' is called {self.calls[name]} times"
        self.block_inputs(node, times)
        if out_shape is None or len(out_shape) < 2:
            return None
        cdim = len(out_shape) - 1 if isinstance(mod, nn.Linear) else 1
        ids = self.g.uf.new(out_shape[cdim])
        self.hard_ids(ids, f"{times}, so its channels cannot be removed at one place only")
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) and name not in self.seen_twice:
            self.seen_twice.add(name)   # listed, so its zero filters are reported, not ignored
            out_dim = 1 if isinstance(mod, nn.modules.conv._ConvTransposeNd) else 0
            self.g.producers.append(Producer(
                name, f"{name}.weight", f"{name}.bias" if mod.bias is not None else None,
                out_dim, ids, "dense",
                attr="out_features" if isinstance(mod, nn.Linear) else "out_channels"))
        return ChannelInfo(ids, cdim)

    def function(self, node: torch.fx.Node) -> Optional[ChannelInfo]:
        t = node.target
        tracked = [a for a in nodes_in((node.args, node.kwargs)) if self.env.get(a) is not None]
        if not tracked:
            return None   # nothing we follow goes in (shapes, constants, untracked tensors)
        is_method = node.op == "call_method"
        if t is getattr or (is_method and t in SHAPE_QUERIES):
            return None
        grid = next((self.env[a] for a in tracked if isinstance(self.env[a], ChannelGrid)), None)
        if grid is not None:   # inside a channel shuffle of a shuffle unit (graph.shuffle)
            return grid_op(self, node, grid, target_name(t))
        rule = METHOD_RULES.get(t) if is_method else (
            FUNCTION_RULES.get(t) or NAMED_FUNCTION_RULES.get(qualified_name(t)))
        if rule is None:
            return self.fallback(node, target_name(t))
        if t is not operator.getitem and any(isinstance(self.env[a], ChannelTuple) for a in tracked):
            return self.fallback(node, f"{target_name(t)} on a tuple of tensors")   # only indexed
        x = node.args[0] if node.args else None
        info = self.env.get(x) if isinstance(x, torch.fx.Node) else None
        return rule(self, node, Call(x, info, node_shape(x), node_shape(node), len(tracked),
                                     target_name(t)))


def trace_for_thinning(model: nn.Module) -> torch.fx.GraphModule:
    """``trace``, with a ``ThinningError`` that says what thinning needs of the forward."""
    try:
        return trace(model)
    except TraceError as e:
        raise ThinningError(
            f"cannot thin {e.model}: torch.fx cannot trace its forward ({e.cause}); thinning "
            f"follows channels through the traced graph, so the forward must not branch on "
            f"tensor values") from None


def analyze_graph(model: nn.Module, example_input: ExampleInput = None) -> ChannelGraph:
    """Trace ``model`` (unwrapped), propagate shapes and follow every channel; see module doc.

    Without ``example_input``, the model's recorded one (``compressor.example_input``) is used,
    else the usual image sizes are tried."""
    if example_input is None:
        example_input = example_input_of(model)
    model = unwrap(model)
    if is_hf_model(model):   # torch.fx cannot trace them whole: block by block (see blocks.py)
        return analyze_blocks(model, example_input)
    gm = trace_for_thinning(model)
    shape = propagate_shapes(model, gm, example_input)
    return Analyzer(model, gm, shape).run()


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
