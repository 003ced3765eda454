"""Per-block capture for models torch.fx cannot trace whole (Hugging Face transformers).

A Hugging Face model's top-level forward branches on its inputs and config (caches, masks, output
flags), so torch.fx cannot trace it; its blocks are plain. ``analyze_blocks`` runs the model once
on the example input with forward hooks (which modules run, how often, on what), then walks the
module tree from the top and, for each module that ran:

* an attention module of a known structure (``attention.find_heads``) becomes a ``Heads`` unit;
* a module with a feed-forward method the model's own layer calls (``feed_forward_chunk``, BERT) is
  traced through that method, so the intermediate and output projections meet in one graph;
* a module torch.fx traces (``LlamaMLP``, ``BertEmbeddings``, a ``Linear`` ...) is one block,
  analysed by the ordinary op rules with its inputs and outputs held fixed;
* anything else is opened and its children visited.

Each block's channel graph is merged into one ``ChannelGraph`` (elements renumbered, names given
the block's path). Holding every block boundary fixed is what keeps this exact without seeing the
untraced code between blocks: only channels that live and die inside one block (MLP neurons,
attention heads) can be removed, and the code around a block only ever sees its inputs and
outputs. A module that ran more than once, or whose parameters are shared, is blocked.

One exception, where it is proved: the residual stream (hidden size) of a Llama-style decoder
crosses every block; ``graph.stream.join_stream`` joins it into one class per hidden channel after
checking the decoder layers' traced forwards and, at run time, that each block's input is the
previous one's output (tied embeddings included). Elsewhere the stream stays kept, with the reason.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

import torch
import torch.fx
from torch import nn

from ..errors import ThinningError
from .attention import add_heads, find_heads
from .records import ChannelGraph, Consumer, Follower, Producer
from .stream import join_stream
from .trace import TraceError, trace

#: Methods of a layer that run its feed-forward part and return only its output; traced as a
#: block so the layer's intermediate projection and output projection are in one graph.
FEED_FORWARD_METHODS = ("feed_forward_chunk",)


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (transformers is not imported)."""
    return any(f"{c.__module__}.{c.__name__}" == "transformers.modeling_utils.PreTrainedModel"
               for c in type(model).__mro__)


class _Method(nn.Module):
    """A traceable root that calls one method of ``owner`` (graph names start with 'owner.')."""

    def __init__(self, owner: nn.Module, method: str):
        super().__init__()
        self.owner = owner
        self.method = method

    def forward(self, x):
        return getattr(self.owner, self.method)(x)


def _record_calls(model: nn.Module, example: Any) -> Dict[nn.Module, Tuple[int, tuple, dict]]:
    """{module: (times called, first args, first kwargs)} from one forward on ``example``."""
    seen: Dict[nn.Module, Tuple[int, tuple, dict]] = {}

    def hook(mod, args, kwargs):
        n, a, k = seen.get(mod, (0, args, kwargs))
        seen[mod] = (n + 1, a, k)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example, dict):
                model(**example)
            else:
                model(example)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ThinningError(f"cannot thin {type(model).__name__}: its forward on the example input "
                            f"failed ({type(e).__name__}: {first}); pass input ids as a tensor "
                            f"of shape (batch, tokens)") from None
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t
    return seen


def _positional(mod: nn.Module, forward, args: tuple, kwargs: dict) -> Optional[list]:
    """The recorded call as the positional inputs of ``forward``'s traced placeholders."""
    try:
        bound = inspect.signature(forward).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    out = []
    for p in inspect.signature(forward).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if bound.arguments.get(p.name):
                return None
            continue
        out.append(bound.arguments[p.name])
    return out


class _Merger:
    """Builds one ChannelGraph out of block graphs and head units."""

    def __init__(self, model: nn.Module, input_shape: Tuple[int, ...]):
        self.model = model
        self.g = ChannelGraph(type(model).__name__, input_shape)
        self.hard: Dict[int, str] = {}
        self.soft: Dict[int, str] = {}
        self.dirty: Dict[int, str] = {}

    def block(self, prefix: str, strip: str, bg: ChannelGraph) -> None:
        """Append ``bg`` (names relative to the block; ``strip`` removed first) under ``prefix``."""
        off = len(self.g.uf.parent)
        self.g.uf.parent.extend(p + off for p in bg.base)

        def name(n: str) -> str:
            if n and strip and n.startswith(strip):
                n = n[len(strip):]
            return f"{prefix}.{n}" if prefix and n else (n or prefix)

        def ids(xs):
            return None if xs is None else [x + off for x in xs]

        for p in bg.producers:
            self.g.producers.append(Producer(name(p.module), name(p.weight),
                                             name(p.bias) if p.bias else None, p.out_dim,
                                             ids(p.ids), p.kind, p.groups, p.attr))
        for c in bg.consumers:
            self.g.consumers.append(Consumer(name(c.module), name(c.weight), c.in_dim, ids(c.ids),
                                             c.kind, c.groups, c.attr))
        for f in bg.followers:
            shift = None if f.shift is None else tuple(name(s) if s else "" for s in f.shift)
            self.g.followers.append(Follower(name(f.module), [name(t) for t in f.tensors],
                                             list(f.attrs), ids(f.ids), shift, ids(f.in_ids),
                                             f.index))
        def why(reason: str) -> str:   # say where, in the model's names
            if reason == "its channels are part of the model's output":
                return f"its channels leave the block '{prefix}', whose boundaries are kept"
            if reason == "the channels of the model's input are fixed":
                return f"the channels entering the block '{prefix}' are kept"
            return reason.replace(f"(in {strip}", f"(in {prefix}.") if strip else reason

        for src, dst in zip(bg.blocks, (self.hard, self.soft, self.dirty)):
            for el, reason in src.items():
                dst.setdefault(el + off, why(reason))

    def finish(self, calls: Dict[str, int], handled: frozenset = frozenset()) -> ChannelGraph:
        """Block what runs twice or shares parameters (except the modules of ``handled``, whose
        sharing the stream join handles: tied embeddings), then map blocks to classes."""
        g = self.g
        shared = {m: why for m, why in _shared_owners(self.model).items() if m not in handled}
        for recs in (g.producers, g.consumers, g.followers):
            for r in recs:
                why = shared.get(r.module)
                if why is None and calls.get(r.module, 1) > 1:
                    why = f"module '{r.module}' runs {calls[r.module]} times in one forward"
                if why:
                    for i in r.ids:
                        self.hard.setdefault(i, why)
        g.base = list(g.uf.parent)
        g.blocks = (self.hard, self.soft, self.dirty)
        g.link_and_block()
        return g


def _shared_owners(model: nn.Module) -> Dict[str, str]:
    seen: Dict[int, str] = {}
    out: Dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen and seen[id(p)] != name:
            for n, other in ((name, seen[id(p)]), (seen[id(p)], name)):
                out[n.rpartition(".")[0]] = f"its parameter '{n}' is shared with '{other}'"
        seen.setdefault(id(p), name)
    return out


def _analyze_traced(root: nn.Module, gm: torch.fx.GraphModule, inputs: list):
    """The channel graph of one traced block, shapes from its recorded inputs (run for real)."""
    from .analyzer import Analyzer          # lazily: the analyzer falls back to this module
    from .shapes import _ShapeProp
    flags = [(m, m.training) for m in root.modules()]
    root.eval()
    try:
        with torch.no_grad():
            _ShapeProp(gm, meta=False).propagate(*inputs)
    finally:
        for m, t in flags:
            m.training = t
    first = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
    return Analyzer(root, gm, tuple(first.shape) if first is not None else ()).run()


def analyze_blocks(model: nn.Module, example_input: Any = None) -> ChannelGraph:
    """The channel graph of ``model`` captured block by block (see the module docstring).

    ``example_input``: input ids (a LongTensor of shape (batch, tokens)), or a dict of keyword
    inputs; a sample shape ``(tokens,)`` (what ``record_first_input`` keeps) or None uses that
    many (8) tokens of id 1 (only shapes matter for the analysis)."""
    if example_input is None:
        example_input = (8,)
    if isinstance(example_input, (tuple, list)) and len(example_input) == 1 and \
            isinstance(example_input[0], int) and example_input[0] > 0:
        example_input = torch.ones(1, example_input[0], dtype=torch.long)
    if not isinstance(example_input, (torch.Tensor, dict)):
        raise ThinningError(f"cannot thin {type(model).__name__} block by block without an example "
                            f"input tensor: pass input ids of shape (batch, tokens), not "
                            f"{example_input!r}")
    seen = _record_calls(model, example_input)
    shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else ()
    merger = _Merger(model, shape)
    names = {m: n for n, m in model.named_modules()}
    calls = {names[m]: c for m, (c, _, _) in seen.items() if m in names}

    def visit(path: str, mod: nn.Module) -> None:
        if mod not in seen:   # a container (ModuleList) or unused: its children may have run
            for child_name, child in mod.named_children():
                visit(f"{path}.{child_name}" if path else child_name, child)
            return
        _, args, kwargs = seen[mod]
        heads = find_heads(path, mod)
        if heads is not None:
            add_heads(merger.g, model, heads, merger.soft)
            return
        opened = set()
        for method in FEED_FORWARD_METHODS:
            fn = getattr(mod, method, None)
            if not callable(fn):
                continue
            done = _feed_forward(path, mod, method, seen, merger)
            if done is not None:
                opened |= done
        if not opened and type(mod).forward is not nn.Module.forward and \
                not isinstance(mod, (nn.ModuleList, nn.ModuleDict, nn.Sequential)) and \
                _whole(path, mod, args, kwargs, merger):
            return
        if isinstance(mod, nn.Sequential) and not opened and _whole(path, mod, args, kwargs, merger):
            return
        for child_name, child in mod.named_children():
            if child_name not in opened:
                visit(f"{path}.{child_name}" if path else child_name, child)

    visit("", model)
    handled = join_stream(merger, model, example_input)
    return merger.finish(calls, frozenset(handled))


def _whole(path: str, mod: nn.Module, args: tuple, kwargs: dict, merger: _Merger) -> bool:
    """Trace ``mod`` as one block; False when torch.fx (or its recorded call) cannot."""
    if path == "":
        return False          # the whole model is what could not be traced
    try:
        gm = trace(mod)
    except TraceError:
        return False
    inputs = _positional(mod, mod.forward, args, kwargs)
    if inputs is None or len(inputs) != sum(1 for n in gm.graph.nodes if n.op == "placeholder"):
        return False
    try:
        bg = _analyze_traced(mod, gm, inputs)
    except Exception:      # a block whose recorded inputs do not run through its graph
        return False
    merger.block(path, "", bg)
    return True


def _feed_forward(path: str, mod: nn.Module, method: str, seen, merger: _Merger):
    """Trace ``mod.<method>`` as a block on the input its first submodule received."""
    root = _Method(mod, method)
    try:
        gm = trace(root)
    except TraceError:
        return None
    used = {str(n.target).split(".")[1] for n in gm.graph.nodes
            if n.op == "call_module" and str(n.target).count(".") >= 1}
    if not used:
        return None
    # the method's input: what the first submodule it calls got (BERT: the intermediate layer
    # reads the attention output the method was given); only its shape is used, for the analysis
    first = next(n for n in gm.graph.nodes if n.op == "call_module")
    sub_call = seen.get(mod.get_submodule(str(first.target).split(".")[1]))
    if sub_call is None or not sub_call[1] or not isinstance(sub_call[1][0], torch.Tensor):
        return None
    inputs = [sub_call[1][0]]
    try:
        bg = _analyze_traced(root, gm, inputs)
    except Exception:
        return None
    merger.block(path, "owner.", bg)
    return used
