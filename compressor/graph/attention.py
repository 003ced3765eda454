"""Attention heads as channel classes: q/k/v output rows and the output projection's input columns.

A head is removed whole: its rows of the query, key and value projections (weights and biases) and
its columns of the output projection. ``Heads`` describes one attention module found by its
structure (``find_heads``); ``add_heads`` writes it into a ``ChannelGraph`` as ordinary records, one
union-find element per removable unit, so the planner, the recipe and the executor need nothing new:
every row of a unit's heads carries the unit's element, every column of the output projection too,
and attribute-only followers rewrite the module's head counts.

Grouped-query attention (fewer key/value heads than query heads): the unit is one key/value head
with all the query heads that read it. Removing whole groups keeps ``num_key_value_groups`` (the
query heads per key/value head, which Hugging Face's attention functions read to repeat keys and
values), so the thinned module computes the same function with no change to its code.

Exactness: a unit whose output-projection columns are all zero contributes nothing, whatever its
q/k/v compute, so removing it by its *channels* is exact; removing it by its *filters* (q, k and v
rows all zero) is exact when the value bias is zero there too (otherwise the result counts it as a
non-zero bias removed, as for convolutions). The residual stream (the hidden size) is left alone.

Recognised structures (duck-typed, no import of transformers):

* ``q_proj``/``k_proj``/``v_proj``/``o_proj`` Linear children and an integer ``head_dim``
  (Llama, Mistral, Qwen2, SmolLM ... in Hugging Face transformers);
* ``self.query``/``self.key``/``self.value`` with ``self.attention_head_size`` and
  ``output.dense`` (BERT-style ``BertAttention``).

``nn.MultiheadAttention`` (torchvision's ViT) is a module rule (``multihead_attention``, listed
in ``module_rules.MODULE_RULES``): its packed ``in_proj_weight`` rows are three blocks of
``num_heads * head_dim`` rows, each head a class with its ``out_proj`` columns; ``num_heads`` (and
an int ``num_heads`` of the module holding it, torchvision's ``EncoderBlock``) follow the heads.
Its forward needs ``num_heads * head_dim == embed_dim``, so thinning makes it a
``compressor.thinning.mha.ThinMultiheadAttention`` (same module, class changed in place, replayed
by recipes), whose input and output widths are its tensors' and need not equal the heads' width.

torchvision's window attention (Swin V1/V2 ``ShiftedWindowAttention``, MaxViT's
``RelativePositionalMultiHeadAttention``) stays one leaf of the traced graph (``is_attention_leaf``)
with a module rule (``windowed_attention``, by qualified name in ``module_rules``): each head is a
class spanning its q/k/v rows of ``qkv``/``to_qkv``, its columns of ``proj``/``merge``, its column
of the relative position bias table (V1, MaxViT), its ``logit_scale`` entry and its row of the
``cpb_mlp`` output layer (V2); ``num_heads``/``n_heads`` follow. V2's ``cpb_mlp`` hidden neurons
are classes too (``cpb_hidden``). Their forwards take the head size
from the input width (Swin: ``C // num_heads``; MaxViT reshapes back to the input width), so
thinning changes their class in place to the ``compressor.thinning.mha`` subclass that does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from torch import nn

from .nodes import qualified_name
from .records import (ChannelGraph, ChannelInfo, ChannelTuple, Consumer, Follower, Producer,
                      WidthAttr)


@dataclass
class Heads:
    """One attention module's heads: module paths of its projections and the head layout.

    ``attrs`` maps a module path to {attribute: 'heads' | 'kv_heads' | 'width'}: the integer
    attributes to rewrite with the kept query heads, key/value heads, or query width."""
    module: str
    q: str
    k: str
    v: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    attrs: Dict[str, Dict[str, str]] = field(default_factory=dict)

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads


def _linear(m: Optional[nn.Module]) -> bool:
    return isinstance(m, nn.Linear)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def find_heads(name: str, mod: nn.Module) -> Optional[Heads]:
    """The ``Heads`` of ``mod`` (at path ``name``) if it is an attention module we know, else None."""
    if all(_linear(getattr(mod, p, None)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) \
            and isinstance(getattr(mod, "head_dim", None), int):
        d = mod.head_dim
        q, k, v, o = mod.q_proj, mod.k_proj, mod.v_proj, mod.o_proj
        h, kv = q.out_features // d, k.out_features // d
        if d <= 0 or q.out_features != h * d or k.out_features != kv * d or \
                v.out_features != kv * d or o.in_features != h * d or kv == 0 or h % kv or \
                getattr(mod, "num_key_value_groups", h // kv) != h // kv:
            return None
        attrs = {name: {a: role for a, role in (("num_heads", "heads"),
                                                 ("num_attention_heads", "heads"),
                                                 ("num_key_value_heads", "kv_heads"))
                        if isinstance(getattr(mod, a, None), int)}}
        return Heads(name, *(_join(name, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
                     h, kv, d, attrs)
    s, out = getattr(mod, "self", None), getattr(mod, "output", None)
    if isinstance(s, nn.Module) and all(_linear(getattr(s, p, None))
                                        for p in ("query", "key", "value")) and \
            _linear(getattr(out, "dense", None)) and \
            isinstance(getattr(s, "attention_head_size", None), int):
        d = s.attention_head_size
        width = s.query.out_features
        h = width // d if d > 0 else 0
        if h == 0 or width != h * d or s.key.out_features != width or \
                s.value.out_features != width or out.dense.in_features != width:
            return None
        sp = _join(name, "self")
        attrs = {sp: {a: role for a, role in (("num_attention_heads", "heads"),
                                               ("all_head_size", "width"))
                      if isinstance(getattr(s, a, None), int)}}
        return Heads(name, _join(sp, "query"), _join(sp, "key"), _join(sp, "value"),
                     _join(name, "output.dense"), h, h, d, attrs)
    return None


def add_heads(g: ChannelGraph, model: nn.Module, heads: Heads, soft: Dict[int, str]) -> List[int]:
    """Write ``heads`` into ``g`` (records and union-find elements); returns the unit elements.

    ``soft`` receives the elements of the output projection's rows: the residual stream is kept.
    """
    mods = dict(model.named_modules())
    units = g.uf.new(heads.kv_heads)
    d, grp = heads.head_dim, heads.group
    q_rows = [units[(r // d) // grp] for r in range(heads.heads * d)]
    kv_rows = [units[r // d] for r in range(heads.kv_heads * d)]

    def bias(path: str) -> Optional[str]:
        return f"{path}.bias" if mods[path].bias is not None else None

    for path, ids in ((heads.q, q_rows), (heads.k, kv_rows), (heads.v, kv_rows)):
        g.producers.append(Producer(path, f"{path}.weight", bias(path), 0, list(ids), "dense",
                                    attr="out_features"))
    g.consumers.append(Consumer(heads.o, f"{heads.o}.weight", 1, list(q_rows), "dense",
                                attr="in_features"))
    hidden = g.uf.new(mods[heads.o].out_features)
    for i in hidden:
        soft.setdefault(i, "the residual stream (hidden size) is kept")
    g.producers.append(Producer(heads.o, f"{heads.o}.weight", bias(heads.o), 0, hidden, "dense",
                                attr="out_features"))
    per_role = {"heads": [units[h // grp] for h in range(heads.heads)], "kv_heads": list(units),
                "width": q_rows}
    for path, attrs in heads.attrs.items():
        for attr, role in attrs.items():
            g.followers.append(Follower(path, [], [attr], list(per_role[role])))
    return units


def mha_blocker(mod: nn.Module) -> Optional[str]:
    """Why the heads of ``mod`` (an ``nn.MultiheadAttention``) cannot be thinned, or None."""
    if not mod._qkv_same_embed_dim or mod.in_proj_weight is None:
        return "separate q/k/v projection weights (kdim or vdim != embed_dim) are not supported"
    if mod.bias_k is not None or mod.add_zero_attn:
        return "add_bias_kv / add_zero_attn are not supported"
    inner = mod.num_heads * mod.head_dim
    if mod.in_proj_weight.shape[0] != 3 * inner or mod.out_proj.in_features != inner:
        return (f"in_proj_weight has {mod.in_proj_weight.shape[0]} rows and out_proj "
                f"{mod.out_proj.in_features} inputs, not 3 x and 1 x num_heads x head_dim = {inner}")
    return None


_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")


def multihead_attention(an, node, mod, info, in_shape, out_shape):
    """The rule of ``nn.MultiheadAttention`` (see the module docstring); it takes several inputs
    (``multi_input``): query, key and value are read through the same ``in_proj_weight`` columns,
    so their channels are joined; masks must not carry followed channels."""
    name = str(node.target)
    bound = dict(zip(_MHA_ARGS, node.args))
    bound.update(node.kwargs)
    qkv = [bound.get(k) for k in ("query", "key", "value")]
    infos = [an.env.get(x) if hasattr(x, "op") else None for x in qkv]
    what = f"MultiheadAttention '{name}'"
    for k, x in bound.items():
        if k not in ("query", "key", "value") and hasattr(x, "op") and an.env.get(x) is not None:
            return an.fallback(node, f"{what} with followed channels in its '{k}'")
    if any(isinstance(i, ChannelTuple) for i in infos):
        return an.fallback(node, f"{what} on a tuple of tensors")
    why = mha_blocker(mod)
    if why is None and (in_shape is None or len(in_shape) not in (2, 3)):
        why = "its input shape is unknown or not (batch, tokens, channels)"
    if why is not None:
        return an.fallback(node, f"{what}: {why}")
    last = len(in_shape) - 1
    width = mod.in_proj_weight.shape[1]
    ids = None
    for i in infos:
        if i is None:
            continue
        if i.cdim != last or len(i.ids) != width:
            an.hard(i, f"{what} reads channels on dim {i.cdim} ({len(i.ids)}), not its "
                       f"{width} input features on the last dim")
            continue
        an.mark_dirty(i)
        if ids is None:
            ids = list(i.ids)
        else:
            for a, b in zip(ids, i.ids):
                an.g.uf.union(a, b)
    g = an.g
    if ids is not None:
        g.consumers.append(Consumer(name, f"{name}.in_proj_weight", 1, ids, "dense",
                                    attr="embed_dim"))
    h, d = mod.num_heads, mod.head_dim
    units = g.uf.new(h)
    rows = [units[r // d] for r in range(h * d)]
    bias = f"{name}.in_proj_bias" if mod.in_proj_bias is not None else None
    g.producers.append(Producer(name, f"{name}.in_proj_weight", bias, 0, rows * 3, "dense",
                                attr=""))
    out = f"{name}.out_proj"
    g.consumers.append(Consumer(out, f"{out}.weight", 1, list(rows), "dense", attr="in_features"))
    out_ids = g.uf.new(mod.out_proj.out_features)
    g.producers.append(Producer(out, f"{out}.weight",
                                f"{out}.bias" if mod.out_proj.bias is not None else None, 0,
                                out_ids, "dense", attr="out_features"))
    g.followers.append(Follower(name, [], ["num_heads"], list(units)))
    parent = name.rpartition(".")[0]
    holder = an.modules.get(parent)
    if parent and holder is not None and getattr(holder, "num_heads", None) == h and \
            type(getattr(holder, "num_heads")) is int and \
            sum(isinstance(m, nn.MultiheadAttention) for m in holder.children()) == 1:
        g.followers.append(Follower(parent, [], ["num_heads"], list(units)))
    return ChannelTuple([ChannelInfo(out_ids, last), None])


multihead_attention.multi_input = True


SWIN = "torchvision.models.swin_transformer.ShiftedWindowAttention"
SWIN_V2 = "torchvision.models.swin_transformer.ShiftedWindowAttentionV2"
MAXVIT = "torchvision.models.maxvit.RelativePositionalMultiHeadAttention"
WINDOW_ATTENTION = (SWIN_V2, SWIN, MAXVIT)


def window_base(mod: nn.Module) -> Optional[str]:
    """The qualified name of the torchvision window attention class ``mod`` is (or derives from)."""
    for cls in type(mod).__mro__:
        q = qualified_name(cls)
        if q in WINDOW_ATTENTION:
            return q
    return None


def is_attention_leaf(mod: nn.Module) -> bool:
    """Attention modules traced as one node, so their rule sees their heads whole."""
    return isinstance(mod, nn.MultiheadAttention) or window_base(mod) is not None


@dataclass
class WindowHeads:
    """The head layout of a window attention module (paths relative to it)."""
    qkv: str
    proj: str
    heads: int
    head_dim: int
    count: str                                   # the attribute holding the head count
    tables: List[tuple] = field(default_factory=list)   # (tensor, dim of its heads)
    rows: List[str] = field(default_factory=list)       # Linear layers with one row per head


def window_heads(mod: nn.Module):
    """The ``WindowHeads`` of a torchvision window attention module, or why not (a string)."""
    base = window_base(mod)
    if base == MAXVIT:
        wh = WindowHeads("to_qkv", "merge", mod.n_heads, mod.head_dim, "n_heads",
                         [("relative_position_bias_table", 1)])
    else:
        h = mod.num_heads
        d = mod.head_dim if isinstance(getattr(mod, "head_dim", None), int) else \
            mod.qkv.in_features // h
        wh = WindowHeads("qkv", "proj", h, d, "num_heads")
        if base == SWIN_V2:
            wh.tables.append(("logit_scale", 0))
            wh.rows.append("cpb_mlp.2")
        else:
            wh.tables.append(("relative_position_bias_table", 1))
    qkv, proj = getattr(mod, wh.qkv, None), getattr(mod, wh.proj, None)
    inner = wh.heads * wh.head_dim
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear) or \
            qkv.out_features != 3 * inner or proj.in_features != inner:
        return f"its q/k/v and output projections are not 3 x and 1 x heads x head_dim = {inner} wide"
    for t, dim in wh.tables:
        v = getattr(mod, t, None)
        if v is None or v.dim() <= dim or v.shape[dim] != wh.heads:
            return f"its '{t}' does not have {wh.heads} heads on dim {dim}"
    for r in wh.rows:
        lin = mod.get_submodule(r)
        if not isinstance(lin, nn.Linear) or lin.out_features != wh.heads:
            return f"its '{r}' does not have one output per head"
    return wh


def windowed_attention(an, node, mod, info, in_shape, out_shape):
    """The rule of torchvision's window attention modules (see the module docstring)."""
    name = str(node.target)
    wh = window_heads(mod)
    what = f"{type(mod).__name__} '{name}'"
    if isinstance(wh, str) or in_shape is None:
        return an.fallback(node, f"{what}: {wh if isinstance(wh, str) else 'unknown input shape'}")
    last = len(in_shape) - 1
    g = an.g
    qkv, proj = f"{name}.{wh.qkv}", f"{name}.{wh.proj}"
    lq, lp = mod.get_submodule(wh.qkv), mod.get_submodule(wh.proj)
    if info is not None:
        if info.cdim != last or len(info.ids) != lq.in_features:
            an.hard(info, f"{what} reads channels on dim {info.cdim} ({len(info.ids)}), not its "
                          f"{lq.in_features} input features on the last dim")
        else:
            an.mark_dirty(info)
            g.consumers.append(Consumer(qkv, f"{qkv}.weight", 1, list(info.ids), "dense",
                                        attr="in_features"))
    h, d = wh.heads, wh.head_dim
    units = g.uf.new(h)
    rows = [units[r // d] for r in range(h * d)]
    g.producers.append(Producer(qkv, f"{qkv}.weight", f"{qkv}.bias" if lq.bias is not None
                                else None, 0, rows * 3, "dense", attr="out_features"))
    g.consumers.append(Consumer(proj, f"{proj}.weight", 1, list(rows), "dense",
                                attr="in_features"))
    out_ids = g.uf.new(lp.out_features)
    g.producers.append(Producer(proj, f"{proj}.weight", f"{proj}.bias" if lp.bias is not None
                                else None, 0, out_ids, "dense", attr="out_features"))
    for t, dim in wh.tables:
        if not an.slice_param(f"{name}.{t}", dim, units):
            an.hard_ids(units, f"{what}: its '{t}' is read elsewhere on another dim")
    for r in wh.rows:
        lin = mod.get_submodule(r)
        g.producers.append(Producer(f"{name}.{r}", f"{name}.{r}.weight",
                                    f"{name}.{r}.bias" if lin.bias is not None else None, 0,
                                    list(units), "dense", attr="out_features"))
    g.widths.append(WidthAttr(name, wh.count, list(units)))
    cpb_hidden(g, name, mod)
    return ChannelInfo(out_ids, last)


def cpb_hidden(g: ChannelGraph, name: str, mod: nn.Module) -> None:
    """Swin-V2's continuous position bias MLP, ``cpb_mlp = Linear(2, n) → ReLU → Linear(n,
    heads)``, run on a buffer inside the attention leaf: each of its ``n`` hidden neurons is a
    class of its own (the first layer's row and bias entry, the second's column). ReLU keeps a
    zero neuron zero, so removing it by its row (bias zero) or by its column is exact."""
    cpb = getattr(mod, "cpb_mlp", None)
    if not isinstance(cpb, nn.Sequential) or len(cpb) != 3 or not _linear(cpb[0]) or \
            not isinstance(cpb[1], nn.ReLU) or not _linear(cpb[2]) or \
            cpb[0].out_features != cpb[2].in_features:
        return
    first, second = f"{name}.cpb_mlp.0", f"{name}.cpb_mlp.2"
    hidden = g.uf.new(cpb[0].out_features)
    g.producers.append(Producer(first, f"{first}.weight", f"{first}.bias" if cpb[0].bias is not
                                None else None, 0, list(hidden), "dense", attr="out_features"))
    g.consumers.append(Consumer(second, f"{second}.weight", 1, list(hidden), "dense",
                                attr="in_features"))
