"""The residual stream (hidden size) of a Llama-style decoder as channel classes, where proved.

Per-block capture (``graph.blocks``) holds every block boundary fixed, so a hidden channel, which
crosses every block, is kept. In a Llama-style decoder (``LlamaForCausalLM`` and models with its
layout: ``embed_tokens``, ``layers`` of ``input_layernorm → self_attn → + → post_attention_layernorm
→ mlp → +``, a final ``norm`` and ``lm_head``) hidden channel ``j`` is one class across the model:
column ``j`` of the embedding weight, row ``j`` of every ``o_proj`` and ``down_proj``, entry ``j``
of every RMSNorm weight, column ``j`` of every q/k/v/gate/up projection and of ``lm_head``.
``join_stream`` joins them, but only where the data path is proved:

* each decoder layer's own forward is traced with torch.fx (its two norms, attention and MLP as
  leaves) and must be exactly ``h = x + attn(norm1(x))[0]; out = h + mlp(norm2(h))``, nothing else
  reading the stream;
* one forward on the example input with hooks checks, tensor by tensor (same storage, shape and
  strides), that the embedding's output is layer 0's input, layer i's output is layer i+1's input,
  the last layer's output is the final norm's input and the norm's output is ``lm_head``'s input
  (``logits_to_keep=0`` slices a full view); inside the blocks, that q/k/v read the attention's
  input, the attention returns ``o_proj``'s output, gate/up read the MLP's input and the MLP
  returns ``down_proj``'s output; and every module ran once;
* every norm is an RMS norm: its output on a random input is ``weight * x / sqrt(mean(x²) + eps)``;
* none of the modules on the stream has forward hooks (they may change what it returns).

A channel that is zero in the stream (embedding column, ``o_proj`` and ``down_proj`` rows all
zero) stays zero through every RMSNorm, but it counts in the norm's mean: removing ``k`` of ``n``
channels is exact when each norm's weight is multiplied by ``sqrt(n/(n-k))`` and its eps becomes
``eps·n/(n-k)``. ``records.RMSNormRecord`` tells thinning to do so; such a class may only go by its
zero filters (a channel nobody reads is still counted by the norms). Tied embeddings
(``lm_head.weight is embed_tokens.weight``) are one tensor: its columns are sliced once, as the
embedding's, and ``lm_head.in_features`` follows. Where a proof fails, the stream stays kept, and
the reason is what the dry run says for ``o_proj`` and ``down_proj``.
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.fx
from torch import nn

from .attention import find_heads
from .records import ChannelGraph, Consumer, Follower, Producer, RMSNormRecord

KEPT = "the residual stream (hidden size) is kept"


@dataclass
class _Layer:
    path: str
    norm1: str
    attn: Any          # attention.Heads
    norm2: str
    mlp: str


@dataclass
class Decoder:
    """The module paths of a Llama-style decoder's stream."""
    embed: str
    layers: List[_Layer]
    norm: str
    lm_head: Optional[str]
    tied: bool = False
    width: int = 0
    extra: List[Tuple[str, str]] = field(default_factory=list)   # (module, int width attribute)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def find_decoder(model: nn.Module):
    """The ``Decoder`` of a Llama-style model, or why ``model`` is not one (a string)."""
    base, bp = model, ""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(inner, "layers", None), nn.ModuleList):
        base, bp = inner, "model"
    embed, layers, norm = (getattr(base, a, None) for a in ("embed_tokens", "layers", "norm"))
    if not isinstance(embed, nn.Embedding) or not isinstance(layers, nn.ModuleList) or \
            not isinstance(norm, nn.Module) or not len(layers):
        return "not a Llama-style decoder (embed_tokens, layers, norm)"
    n = embed.embedding_dim
    out = Decoder(_join(bp, "embed_tokens"), [], _join(bp, "norm"), None, width=n)
    for i, layer in enumerate(layers):
        lp = _join(bp, f"layers.{i}")
        parts = [getattr(layer, a, None) for a in ("input_layernorm", "self_attn",
                                                   "post_attention_layernorm", "mlp")]
        heads = find_heads(_join(lp, "self_attn"), parts[1]) if parts[1] is not None else None
        mlp = parts[3]
        lins = [getattr(mlp, a, None) for a in ("gate_proj", "up_proj", "down_proj")]
        if heads is None or any(p is None for p in parts) or \
                not all(isinstance(x, nn.Linear) for x in lins):
            return (f"layer '{lp}' is not input_layernorm, a q/k/v/o self_attn and a "
                    f"gate/up/down mlp")
        a = parts[1]
        if any(getattr(a, p).in_features != n for p in ("q_proj", "k_proj", "v_proj")) or \
                a.o_proj.out_features != n or lins[0].in_features != n or \
                lins[1].in_features != n or lins[2].out_features != n:
            return f"layer '{lp}': its projections do not read and write {n} hidden channels"
        out.layers.append(_Layer(lp, _join(lp, "input_layernorm"), heads,
                                 _join(lp, "post_attention_layernorm"), _join(lp, "mlp")))
        for path, mod in ((lp, layer), (_join(lp, "mlp"), mlp)):
            if type(getattr(mod, "hidden_size", None)) is int and mod.hidden_size == n:
                out.extra.append((path, "hidden_size"))
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and head.in_features == n:
        out.lm_head = "lm_head"
        out.tied = head.weight is embed.weight
    return out


def rms_eps_attr(mod: nn.Module) -> Optional[str]:
    """The float attribute holding an RMS norm's epsilon (``variance_epsilon``, ``eps``) or None."""
    for a in ("variance_epsilon", "eps"):
        v = getattr(mod, a, None)
        if isinstance(v, float) and not isinstance(v, bool) and v > 0:
            return a
    return None


def check_rms_norm(path: str, mod: nn.Module, n: int) -> Optional[str]:
    """Why ``mod`` is not an RMS norm over ``n`` channels (None when it is): its output on a
    random input must be ``weight * x / sqrt(mean(x²) + eps)``."""
    w = getattr(mod, "weight", None)
    eps = rms_eps_attr(mod)
    if not isinstance(w, nn.Parameter) or w.dim() != 1 or w.numel() != n or eps is None or \
            getattr(mod, "bias", None) is not None:
        return (f"'{path}' ({type(mod).__name__}) is not an RMS norm with a weight of {n} "
                f"entries and a float epsilon")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, generator=gen, dtype=torch.float64).to(w.dtype)
    with torch.no_grad():
        y = mod(x).double()
        xd = x.double()
        ref = w.double() * xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + getattr(mod, eps))
    # a structure check, not an exactness claim: Llama's norm computes in float32 whatever the
    # input dtype; a LayerNorm (mean removed) or a (1 + weight) norm is off by O(1)
    tol = max(1e-3, 8 * torch.finfo(w.dtype).eps) * (ref.abs().max().item() + 1e-30)
    if y.shape != ref.shape or (y - ref).abs().max().item() > tol:
        return (f"'{path}' ({type(mod).__name__}) does not compute weight * x / sqrt(mean(x²) + "
                f"eps)")
    return None


# -- the decoder layer's own forward, traced ------------------------------------------------------

class _LayerCall(nn.Module):
    """Calls a decoder layer's undecorated forward on ``hidden_states`` with the other
    arguments of its recorded call as constants (masks, rotary embeddings)."""

    def __init__(self, layer: nn.Module, kwargs: dict):
        super().__init__()
        self.layer = layer
        self._kwargs = kwargs
        self._fwd = inspect.unwrap(type(layer).forward)

    def forward(self, hidden_states):
        return self._fwd(self.layer, hidden_states, **self._kwargs)


def _other_args(layer: nn.Module, args: tuple, kwargs: dict) -> Optional[dict]:
    """The recorded call's arguments other than the hidden states, by name."""
    fwd = inspect.unwrap(type(layer).forward)
    try:
        bound = inspect.signature(fwd).bind(layer, *args, **kwargs)
    except TypeError:
        return None
    names = list(inspect.signature(fwd).parameters)
    if len(names) < 2:
        return None
    out = {}
    for k, v in bound.arguments.items():
        if k in (names[0], names[1]):
            continue
        p = inspect.signature(fwd).parameters[k]
        if p.kind == p.VAR_KEYWORD:
            out.update(v)
        elif p.kind == p.VAR_POSITIONAL:
            if v:
                return None
        else:
            out[k] = v
    return out


def check_layer_graph(layer: nn.Module, path: str, kwargs: dict) -> Optional[str]:
    """Why ``layer``'s forward is not ``h = x + attn(norm1(x))[0]; h + mlp(norm2(h))`` on the
    stream (None when it is). The children are leaves; arguments that do not depend on the
    hidden states (masks, rotary embeddings) do not matter."""
    leaves = {id(getattr(layer, a)): a for a in ("input_layernorm", "self_attn",
                                                 "post_attention_layernorm", "mlp")}

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, q):
            return id(m) in leaves or super().is_leaf_module(m, q)

    root = _LayerCall(layer, kwargs)
    try:
        graph = Tracer().trace(root)
    except Exception as e:          # torch.fx raises many types
        first = (str(e).strip().splitlines() or [""])[0]
        return f"torch.fx cannot trace '{path}' ({type(e).__name__}: {first})"
    why = f"the forward of '{path}' is not norm → attention → add → norm → MLP → add on the stream"
    nodes = list(graph.nodes)
    x = next((n for n in nodes if n.op == "placeholder"), None)
    if x is None:
        return why
    # the nodes that depend on the hidden states
    dep: Set[torch.fx.Node] = {x}
    for n in nodes:
        if n.op != "placeholder" and any(a in dep for a in n.all_input_nodes):
            dep.add(n)

    def call(n, name):
        return n.op == "call_module" and n.target == f"layer.{name}"

    def add_of(n):
        if n.op == "call_function" and n.target in (operator.add, torch.add) and \
                len(n.args) == 2 and not n.kwargs:
            return n.args
        return None

    out = next(n for n in nodes if n.op == "output")
    res = out.args[0]
    try:
        s1, f = add_of(res)
        if not call(f, "mlp"):
            s1, f = f, s1
        (n2,) = f.args
        assert call(f, "mlp") and not f.kwargs and call(n2, "post_attention_layernorm")
        assert n2.args == (s1,) and not n2.kwargs
        a, b = add_of(s1)
        g0 = b if a is x else a
        assert x in (a, b) and g0.op == "call_function" and g0.target is operator.getitem
        att, idx = g0.args
        assert idx == 0 and call(att, "self_attn")
        hs = att.kwargs.get("hidden_states", att.args[0] if att.args else None)
        assert call(hs, "input_layernorm") and hs.args == (x,) and not hs.kwargs
        others = [v for k, v in att.kwargs.items() if k != "hidden_states"] + list(att.args[1:])
        assert not any(isinstance(v, torch.fx.Node) and v in dep for v in others)
    except (AssertionError, TypeError, ValueError, AttributeError):
        return why
    allowed = {x, hs, att, g0, s1, n2, f, res, out}
    extra = [n for n in dep if n not in allowed and not (n.op == "call_function" and
                                                         n.target is operator.getitem and
                                                         n.args[0] is att and not n.users)]
    if extra:
        return f"{why} ('{extra[0].name}' also reads it)"
    users = {x: {hs, s1}, hs: {att}, s1: {n2, res}, n2: {f}, f: {res}}
    for n, want in users.items():
        if set(n.users) - {out} != want:
            return why
    return None


# -- one forward with hooks -----------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    """The same tensor data: storage address, shape, strides and dtype."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and \
        a.dtype == b.dtype


def _first(args: tuple, kwargs: dict, name: str = "hidden_states"):
    return args[0] if args else kwargs.get(name)


def run_checks(model: nn.Module, dec: Decoder, example: Any) -> Tuple[Optional[str], dict]:
    """Run ``model`` once with hooks; (why the stream is not proved or None, {layer: its call's
    other arguments})."""
    mods = dict(model.named_modules())
    want: List[str] = [dec.embed, dec.norm] + ([dec.lm_head] if dec.lm_head else [])
    for L in dec.layers:
        h = L.attn
        want += [L.path, L.norm1, h.module, h.q, h.k, h.v, h.o, L.norm2, L.mlp,
                 f"{L.mlp}.gate_proj", f"{L.mlp}.up_proj", f"{L.mlp}.down_proj"]
    chain = [dec.embed, dec.norm] + [p for L in dec.layers
                                     for p in (L.path, L.norm1, L.attn.module, L.norm2, L.mlp)]
    for name in chain:   # a hook may change what a module returns, which no trace sees
        m = mods[name]
        if m._forward_hooks or m._forward_pre_hooks:
            return f"module '{name}' has forward hooks, whose effect cannot be proved", {}
    ins: Dict[str, List[Tuple[tuple, dict]]] = {}
    outs: Dict[str, List[Any]] = {}
    handles = []
    for name in want:
        m = mods[name]
        handles.append(m.register_forward_pre_hook(
            lambda mod, a, k, name=name: ins.setdefault(name, []).append((a, k)) and None,
            with_kwargs=True))
        handles.append(m.register_forward_hook(
            lambda mod, a, o, name=name: outs.setdefault(name, []).append(o) and None))
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    kw = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    try:
        with torch.no_grad():
            if isinstance(example, dict):
                model(**{**kw, **example})
            else:
                model(example, **kw)
    except Exception as e:
        return f"the model's forward with hooks failed ({type(e).__name__})", {}
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t
    ran = [n for n in want if len(ins.get(n, [])) != 1]
    if ran:
        return f"module '{ran[0]}' ran {len(ins.get(ran[0], []))} times, not once", {}

    def inp(name):
        a, k = ins[name][0]
        return _first(a, k, "input") if name.endswith(("_proj", "lm_head")) or name == dec.embed \
            else _first(a, k)

    def out(name):
        o = outs[name][0]
        return o[0] if isinstance(o, tuple) else o

    prev, prev_what = out(dec.embed), f"the output of '{dec.embed}'"
    calls = {}
    for L in dec.layers:
        if not _same(prev, inp(L.path)):
            return f"the input of '{L.path}' is not {prev_what}", {}
        h = L.attn
        for proj in (h.q, h.k, h.v):
            if not _same(inp(proj), inp(h.module)):
                return f"'{proj}' does not read the input of '{h.module}'", {}
        if not _same(out(h.o), out(h.module)):
            return f"'{h.module}' does not return the output of '{h.o}'", {}
        for proj in ("gate_proj", "up_proj"):
            if not _same(inp(f"{L.mlp}.{proj}"), inp(L.mlp)):
                return f"'{L.mlp}.{proj}' does not read the input of '{L.mlp}'", {}
        if not _same(out(f"{L.mlp}.down_proj"), out(L.mlp)):
            return f"'{L.mlp}' does not return the output of '{L.mlp}.down_proj'", {}
        a, k = ins[L.path][0]
        other = _other_args(mods[L.path], a, k)
        if other is None:
            return f"the call of '{L.path}' cannot be bound to its forward's arguments", {}
        calls[L.path] = other
        prev, prev_what = out(L.path), f"the output of '{L.path}'"
    if not _same(prev, inp(dec.norm)):
        return f"the input of '{dec.norm}' is not {prev_what}", {}
    if dec.lm_head and not _same(out(dec.norm), inp(dec.lm_head)):
        return f"the input of '{dec.lm_head}' is not the output of '{dec.norm}'", {}
    return None, calls


# -- joining -------------------------------------------------------------------------------

def prove(model: nn.Module, example: Any) -> Tuple[Optional[Decoder], Optional[str], dict]:
    """(the decoder, None) when its stream is proved, else (decoder or None, why not)."""
    dec = find_decoder(model)
    if isinstance(dec, str):
        return None, dec, {}
    if dec.lm_head is None:
        return dec, "the final norm's output is the model's output (no lm_head reads it)", {}
    mods = dict(model.named_modules())
    n = dec.width
    for path in [dec.norm] + [p for L in dec.layers for p in (L.norm1, L.norm2)]:
        why = check_rms_norm(path, mods[path], n)
        if why:
            return dec, why, {}
    why, calls = run_checks(model, dec, example)
    if why:
        return dec, why, {}
    for L in dec.layers:
        why = check_layer_graph(mods[L.path], L.path, calls[L.path])
        if why:
            return dec, why, {}
    return dec, None, {}


def join_stream(merger, model: nn.Module, example: Any) -> Set[str]:
    """Join a proved Llama-style stream into ``merger``'s graph (see the module docstring);
    returns the modules whose parameter sharing is handled (tied embeddings). Where the proof
    fails, the ``o_proj`` / ``down_proj`` rows say why the stream is kept."""
    g: ChannelGraph = merger.g
    dec, why, _ = prove(model, example)
    rows = {}          # module -> its producer (o_proj, down_proj), from the block capture
    for p in g.producers:
        rows.setdefault(p.module, p)
    outs = []
    if dec is not None:
        outs = [L.attn.o for L in dec.layers] + [f"{L.mlp}.down_proj" for L in dec.layers]
    if why is None:
        why = _check_rows(g, outs, rows)
    if why is None:   # a block that blocks its own output rows (beyond keeping them) says so
        why = next((f"'{m}': {d[i]}" for m in outs for i in rows[m].ids
                    for d in (merger.hard, merger.dirty) if i in d), None)
    if why is not None:
        for m in outs:
            p = rows.get(m)
            if p is not None:
                for i in p.ids:
                    merger.soft[i] = f"{KEPT}: {why}"
        return set()
    mods = dict(model.named_modules())
    n = dec.width
    ids = g.uf.new(n)
    uf = g.uf

    def join(xs: List[int]) -> None:
        for a, b in zip(ids, xs):
            uf.union(a, b)
        for i in xs:     # kept only as their block's output (checked above): now joined
            merger.soft.pop(i, None)

    def reads(path: str) -> None:
        g.consumers.append(Consumer(path, f"{path}.weight", 1, list(ids), "dense",
                                    attr="in_features"))

    def norm(path: str) -> None:
        g.followers.append(Follower(path, [f"{path}.weight"], [], list(ids)))
        g.rms_norms.append(RMSNormRecord(path, f"{path}.weight", rms_eps_attr(mods[path]),
                                         list(ids)))

    g.producers.append(Producer(dec.embed, f"{dec.embed}.weight", None, 1, list(ids), "dense",
                                attr="embedding_dim"))
    for L in dec.layers:
        norm(L.norm1)
        for proj in (L.attn.q, L.attn.k, L.attn.v):
            reads(proj)
        join(rows[L.attn.o].ids)
        norm(L.norm2)
        reads(f"{L.mlp}.gate_proj")
        reads(f"{L.mlp}.up_proj")
        join(rows[f"{L.mlp}.down_proj"].ids)
    norm(dec.norm)
    for path, attr in dec.extra:
        g.followers.append(Follower(path, [], [attr], list(ids)))
    if dec.tied:
        g.followers.append(Follower(dec.lm_head, [], ["in_features"], list(ids)))
        return {dec.embed, dec.lm_head}
    reads(dec.lm_head)
    return set()


def _check_rows(g: ChannelGraph, outs: List[str], rows: Dict[str, Producer]) -> Optional[str]:
    """The o_proj / down_proj rows the block capture recorded are each one producer's, read by
    nothing inside the graph (they leave their block), so they may join the stream."""
    mine: Set[int] = set()
    for m in outs:
        p = rows.get(m)
        if p is None or p.out_dim != 0:
            return f"the block capture did not record the rows of '{m}'"
        mine.update(p.ids)
    owners = [r for r in list(g.producers) + list(g.consumers) + list(g.followers)
              if any(i in mine for i in r.ids)]
    if len(owners) != len(outs) or any(i in mine for ps in g.params for i in ps.ids):
        return "the rows of o_proj / down_proj are read inside the captured blocks"
    return None


def rescale(n: int, kept: int) -> Tuple[float, float]:
    """(weight factor, eps factor) for an RMS norm keeping ``kept`` of its ``n`` channels."""
    return math.sqrt(n / kept), n / kept
