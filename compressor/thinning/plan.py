"""Zero structures -> which channel classes to remove -> a recipe of plain data.

A channel class (see ``graph``) is removed

* by its *filters* (``remove_filters``) when every layer producing it has an all-zero filter for
  it: the channel is then zero in the masked network (up to biases and batch-norm shifts, which
  the result counts), so no consumer notices it is gone;
* by its *channels* (``remove_channels``) when every layer consuming it has all-zero weights for
  it: no consumer reads it, so whatever the producers compute there does not matter;
* by either (``contract_model``).

Each layer keeps at least one output channel (with a warning), and grouped convolutions remove the
same number of channels from each of their groups (extra zero channels are kept to balance them).
The recipe lists, per tensor, the index selections to apply, and per module, the attributes to
set; it holds only dicts, lists, ints and strings, so it survives ``torch.save`` and
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from ..errors import ThinningError
from .graph import ChannelGraph, Consumer, Producer

MODES = ("remove_filters", "remove_channels", "contract_model")
RECIPE_VERSION = 1


@dataclass
class ThinningResult:
    """What one thinning did.

    ``removed``: {layer: (channels removed, channels before)} for every layer that lost output
    channels. ``nonzero_bias_removed``: how many removed (layer, channel) pairs carried a non-zero
    bias or batch-norm shift although a consumer still read them (the masked network was not exactly
    zero there; structured pruners mask those too). ``recipe`` is None when nothing was removed.
    """
    kind: str
    recipe: Optional[dict] = None
    removed: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    nonzero_bias_removed: int = 0
    nonzero_bias_layers: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.recipe is not None

    def __repr__(self) -> str:
        n = sum(r for r, _ in self.removed.values())
        return (f"ThinningResult(kind={self.kind!r}, channels_removed={n}, "
                f"layers={len(self.removed)}, nonzero_bias_removed={self.nonzero_bias_removed})")


def _tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


def _nonzero_2d(w: torch.Tensor) -> torch.Tensor:
    """(dim 0, dim 1) -> whether any weight of that pair is non-zero; one pass over the tensor."""
    nz = w.detach().ne(0)
    if nz.dim() == 1:
        return nz.unsqueeze(1)
    if nz.dim() > 2 and nz[0, 0].numel() == 1:   # 1x1 kernels: nothing to reduce
        return nz.reshape(nz.shape[0], nz.shape[1])
    return nz.flatten(2).any(dim=2) if nz.dim() > 2 else nz


def _zero_filters(p: Producer, nz: torch.Tensor) -> List[bool]:
    return (~nz.any(dim=1 - p.out_dim)).tolist()


def _zero_inputs(c: Consumer, nz: torch.Tensor) -> List[bool]:
    if c.kind == "dense":
        return (~nz.any(dim=1 - c.in_dim)).tolist()
    if c.kind == "depthwise":   # input channel i is read by filters i*q .. i*q+q-1
        return (~nz.reshape(len(c.ids), -1).any(dim=1)).tolist()
    g = c.groups
    return (~nz.reshape(g, nz.shape[0] // g, nz.shape[1]).any(dim=1).reshape(-1)).tolist()


@dataclass
class Plan:
    """The classes (union-find roots) to remove, before it is turned into a recipe."""
    graph: ChannelGraph
    kind: str
    removed: Set[int]
    ignored: Set[int]        # classes every consumer ignores (removal exact whatever their values)
    warnings: List[str]


def make_plan(graph: ChannelGraph, model: nn.Module, kind: str) -> Plan:
    """Choose the classes to remove; raises ThinningError when a wanted one is blocked."""
    if kind not in MODES:
        raise ValueError(f"unknown thinning kind {kind!r}; valid: {', '.join(MODES)}")
    tensors = _tensors(model)
    cache: Dict[str, torch.Tensor] = {}

    def nonzero(name: str) -> torch.Tensor:
        if name not in cache:
            cache[name] = _nonzero_2d(tensors[name])
        return cache[name]

    by_filters = kind in ("remove_filters", "contract_model")
    by_channels = kind in ("remove_channels", "contract_model")
    fz: Dict[int, bool] = {}
    cz: Dict[int, bool] = {}
    owner: Dict[int, str] = {}
    for p in graph.producers:
        roots = graph.roots(p.ids)
        for r in roots:
            owner.setdefault(r, p.module)
        if by_filters:
            for r, z in zip(roots, _zero_filters(p, nonzero(p.weight))):
                fz[r] = fz.get(r, True) and z
    for c in graph.consumers:
        roots = graph.roots(c.ids)
        for r in roots:
            owner.setdefault(r, c.module)
        if by_channels:
            for r, z in zip(roots, _zero_inputs(c, nonzero(c.weight))):
                cz[r] = cz.get(r, True) and z
    ignored = {r for r, z in cz.items() if z} if by_channels else set()
    wanted = ({r for r, z in fz.items() if z} if by_filters else set()) | ignored

    errors: Dict[str, str] = {}
    removed: Set[int] = set()
    for r in sorted(wanted):
        if r in graph.hard:
            errors.setdefault(owner.get(r, "?"), graph.hard[r])
        elif r in graph.soft:
            continue
        elif r not in ignored and r in graph.dirty:
            errors.setdefault(owner.get(r, "?"), graph.dirty[r])
        else:
            removed.add(r)
    if errors:
        layer, reason = next(iter(errors.items()))
        more = f" (and {len(errors) - 1} more layers: {', '.join(list(errors)[1:4])}" \
               f"{' ...' if len(errors) > 4 else ''})" if len(errors) > 1 else ""
        raise ThinningError(f"cannot thin {layer}: {reason}; its zero channels cannot be removed "
                            f"exactly{more}. Nothing was changed.")

    notes: List[str] = []
    # every layer keeps one output channel; every consumer keeps one input
    for rec in list(graph.producers) + list(graph.consumers):
        roots = graph.roots(rec.ids)
        if roots and all(r in removed for r in roots):
            removed.discard(roots[0])
            role = "filter" if isinstance(rec, Producer) else "input channel"
            msg = (f"thinning {rec.module}: every {role} of '{rec.weight}' is removable; keeping "
                   f"channel 0 so the layer is not emptied")
            notes.append(msg)
            warnings.warn(msg, stacklevel=3)
    _balance_groups(graph, removed)
    return Plan(graph, kind, removed, ignored, notes)


def _balance_groups(graph: ChannelGraph, removed: Set[int]) -> None:
    """Grouped convs keep equal channel counts per group: un-remove until they are balanced."""
    grouped = [r for r in list(graph.producers) + list(graph.consumers) if r.kind == "grouped"]
    changed = True
    while changed and grouped:
        changed = False
        for rec in grouped:
            roots = graph.roots(rec.ids)
            per = len(roots) // rec.groups
            counts = [sum(1 for r in roots[j * per:(j + 1) * per] if r in removed)
                      for j in range(rec.groups)]
            target = min(min(counts), per - 1)
            for j, n in enumerate(counts):
                extra = n - target
                for r in reversed(roots[j * per:(j + 1) * per]):
                    if extra <= 0:
                        break
                    if r in removed:
                        removed.discard(r)
                        changed = True
                        extra -= 1


def _kept(graph: ChannelGraph, ids: List[int], removed: Set[int]) -> List[int]:
    find = graph.uf.find
    return [i for i, x in enumerate(ids) if find(x) not in removed]


def build_recipe(plan: Plan, model: nn.Module) -> ThinningResult:
    """Turn a plan into a recipe (plain data) and a result summary; changes nothing."""
    graph, removed = plan.graph, plan.removed
    result = ThinningResult(plan.kind, warnings=list(plan.warnings))
    if not removed:
        return result
    tensors = _tensors(model)
    entries: Dict[str, dict] = {}
    modules: Dict[str, dict] = {}

    def op(name: str, spec: dict) -> None:
        entry = entries.setdefault(name, {"shape": list(tensors[name].shape), "ops": []})
        entry["ops"].append(spec)

    find = graph.uf.find
    for p in graph.producers:
        keep = _kept(graph, p.ids, removed)
        if len(keep) == len(p.ids):
            continue
        op(p.weight, {"dim": p.out_dim, "index": keep})
        if p.bias:
            op(p.bias, {"dim": 0, "index": keep})
        modules.setdefault(p.module, {})[p.attr] = len(keep)
        result.removed[p.module] = (len(p.ids) - len(keep), len(p.ids))
        if p.bias:
            b = tensors[p.bias].detach()
            n = sum(1 for i, x in enumerate(p.ids) if find(x) in removed
                    and find(x) not in plan.ignored and float(b[i]) != 0.0)
            if n:
                result.nonzero_bias_layers[p.module] = result.nonzero_bias_layers.get(p.module, 0) + n
    for c in graph.consumers:
        keep = _kept(graph, c.ids, removed)
        if len(keep) == len(c.ids):
            continue
        if c.kind == "dense":
            op(c.weight, {"dim": c.in_dim, "index": keep})
            modules.setdefault(c.module, {})[c.attr] = len(keep)
        elif c.kind == "depthwise":   # its filters were selected as a producer
            modules.setdefault(c.module, {}).update({"in_channels": len(keep), "groups": len(keep)})
        else:
            per = len(c.ids) // c.groups
            local = [[i - j * per for i in keep if j * per <= i < (j + 1) * per]
                     for j in range(c.groups)]
            op(c.weight, {"dim": c.in_dim, "groups": c.groups, "index": local})
            modules.setdefault(c.module, {})[c.attr] = len(keep)
    for f in graph.followers:
        keep = _kept(graph, f.ids, removed)
        if len(keep) == len(f.ids):
            continue
        for t in f.tensors:
            op(t, {"dim": 0, "index": keep})
        for a in f.attrs:
            modules.setdefault(f.module, {})[a] = len(keep)
        if f.shift:
            shift = _bn_shift(tensors, f.shift, model, f.module)
            if shift is not None:
                n = sum(1 for i, x in enumerate(f.ids) if find(x) in removed
                        and find(x) not in plan.ignored and float(shift[i]) != 0.0)
                if n:
                    result.nonzero_bias_layers[f.module] = result.nonzero_bias_layers.get(f.module, 0) + n
    result.nonzero_bias_removed = sum(result.nonzero_bias_layers.values())
    result.recipe = {"version": RECIPE_VERSION, "kind": plan.kind, "modules": modules,
                     "tensors": entries}
    return result


def _bn_shift(tensors, names, model, module) -> Optional[torch.Tensor]:
    """A batch norm's output for a zero input in eval mode: beta - gamma * mean / std."""
    bias, weight, mean, var = (tensors.get(n) if n else None for n in names)
    eps = getattr(model.get_submodule(module), "eps", 1e-5)
    with torch.no_grad():
        shift = torch.zeros_like(mean if mean is not None else bias) if (
            mean is not None or bias is not None) else None
        if shift is None:
            return None
        if mean is not None and var is not None:
            scale = weight.detach() if weight is not None else torch.ones_like(mean)
            shift = shift - scale * mean / torch.sqrt(var + eps)
        if bias is not None:
            shift = shift + bias.detach()
    return shift
