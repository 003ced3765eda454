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

``nn.MultiheadAttention`` is not: its packed projection needs ``num_heads * head_dim ==
embed_dim`` (the input width), so heads cannot go without changing the residual stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from torch import nn

from .records import ChannelGraph, Consumer, Follower, Producer


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
