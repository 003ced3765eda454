"""Which parameters must be pruned together, so masked networks can be thinned exactly.

Two questions, both answered from the model's graph:

- *Coupled weights* share one structure mask. ``group_dependency: Leader`` couples every listed
  weight to the first one (Distiller). Without a dependency, filter pruning couples the
  convolutions whose outputs meet in a residual addition, or a depthwise convolution and its
  producer, as the graph layer (``compressor.graph.coupled_filter_groups``) reports them.
- *Balanced cells*: filters that feed, or are, a grouped convolution are ranked within each of
  its groups, so every group loses the same number (``compressor.graph.grouping``); thinning
  removes a grouped convolution's channels only in equal numbers per group.
- *Dependents* of a pruned output unit: the layer's bias entry and, for a convolution, the weight
  and bias of the batch norm that directly follows it. Masking them makes the pruned channel
  exactly zero, so the masked network computes what the thinned one will.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..errors import CompressorError
from ..graph import NoExampleInputError, analyze_graph, conv_bn_pairs, example_input_of
from ..graph.grouping import balanced_cells
from ..masks import normalize_name, unwrap

DEPENDENCIES = ("Leader", "Independent")


@dataclass
class Unit:
    """Weights ranked and masked as one."""
    members: List[str]      # every weight that gets the unit's structure mask
    scored: List[str]       # the weights whose criterion scores are summed to rank the structures
    target_name: str        # the listed weight whose target sparsity the unit follows
    #: For members coupled only in part (a depthwise conv after a concatenation): {member: the
    #: unit's structure position of each of its filters}; None when all members share positions.
    index: Optional[Dict[str, List[int]]] = None
    #: For members whose filters feed or are a grouped convolution: the cell (group) of each
    #: structure; the pruner prunes the same count in every cell. None: no such constraint.
    cells: Optional[List[int]] = None
    #: For members coupled in part: tensors cut into equal parts (``torch.chunk`` after a channel
    #: shuffle) that hold the unit's structures, as the structure position at each channel of
    #: each part; thinning removes channels only in equal numbers per part. None: no such tensor.
    parts: Optional[List[List[List[int]]]] = None

    def width(self, n_first: int) -> int:
        """The number of structures ranked together (``n_first``: the first member's count)."""
        return n_first if self.index is None else 1 + max(max(v) for v in self.index.values())


# Per model: (parameter names and shapes, (groups, classes, cells, layers)). Tracing and shape
# propagation take seconds, and a schedule usually builds several pruners over one model (and the
# builder's ``thinnable`` selector and thinning check read the same analysis); a changed model
# (thinned) misses.
_GROUPS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _coupling(model: nn.Module):
    """(groups, partly coupled classes, balanced cells, layers) from one analysis of the model's
    graph, cached; ``layers`` is ``_layers``'s."""
    inner = unwrap(model)
    example = example_input_of(model)
    signature = (example,) + tuple((n, tuple(p.shape)) for n, p in inner.named_parameters())
    cached = _GROUPS_CACHE.get(inner)
    if cached is not None and cached[0] == signature:
        return cached[1]
    g = analyze_graph(inner, example)
    order = [n for n, _ in inner.named_parameters()]
    classes = g.coupled_classes(order)
    # the structures these pruners cut are dim 0 of a weight (filters, output neurons); a layer
    # whose channels lie along another dim (an embedding's columns: a decoder's residual stream,
    # ranked by HiddenSizePruner) is left out of their units
    other = {p.weight for p in g.producers if p.out_dim != 0}
    groups = [[w for w in grp if w not in other] for grp in g.coupled_groups(order)]
    found = ([grp for grp in groups if len(grp) > 1], classes, balanced_cells(g, order),
             _layers(g), _balanced_parts(g, classes))
    _GROUPS_CACHE[inner] = (signature, found)
    return found


def _balanced_parts(g, classes) -> List[List[List[List[int]]]]:
    """Per unit coupled in part (``classes``, in order): each balanced tensor (``g.balanced``)
    whose channels all are the unit's classes, as the unit's structure position at each channel
    of each part."""
    out = []
    for index in classes:
        pos: Dict[int, int] = {}
        for p in g.producers:
            if p.weight in index:
                for r, k in zip(g.roots(p.ids), index[p.weight]):
                    pos[r] = k
        recs = []
        for rec in getattr(g, "balanced", []):
            roots = g.roots(rec.ids)
            if rec.groups > 1 and len(roots) % rec.groups == 0 and roots and \
                    all(r in pos for r in roots):
                per = len(roots) // rec.groups
                recs.append([[pos[r] for r in roots[j * per:(j + 1) * per]]
                             for j in range(rec.groups)])
        out.append(recs)
    return out


@dataclass(frozen=True)
class LayerFacts:
    """What the thinning analysis says of one producing layer (a conv or linear weight)."""
    module: str
    thinnable: bool            # the dry run lists it as thinnable (some output channel can go)
    reason: Optional[str]      # why none of its output channels can go (None when thinnable)
    refused: bool              # thinning would refuse its zero filters (a hard or dirty block),
    #                            rather than keep them quietly (a soft block: the model's output)


def _layers(g) -> Dict[str, LayerFacts]:
    """{producer weight: its LayerFacts}, in the graph's producer order."""
    thinnable, blocked, _ = g.layer_status()
    ok = set(thinnable)
    out: Dict[str, LayerFacts] = {}
    for p in g.producers:
        if p.out_dim != 0:      # not a filter / output neuron structure (see ``_coupling``)
            continue
        roots = g.roots(p.ids)
        hard = next((g.hard.get(r) or g.dirty.get(r) for r in roots
                     if g.hard.get(r) or g.dirty.get(r)), None)
        refused = p.module not in ok and hard is not None
        out.setdefault(p.weight, LayerFacts(p.module, p.module in ok,
                                            hard if refused else blocked.get(p.module), refused))
    return out


def layer_facts(model: nn.Module) -> Dict[str, LayerFacts]:
    """{weight: LayerFacts} of every producing layer, from the cached analysis of ``model``'s graph
    (raises the graph's ``CompressorError`` when it cannot be traced or run)."""
    return dict(_coupling(model)[3])


def coupled_filter_groups(model: nn.Module) -> List[List[str]]:
    """The graph's coupled filter groups.

    Shapes are followed from the model's example input (``compressor.example_input``: the
    schedule's ``input_shape`` or the first batch seen), else from the usual image sizes.
    """
    return _copied(_coupling(model))[0]


def coupled_filter_classes(model: nn.Module) -> List[Dict[str, List[int]]]:
    """Filters coupled in part (``graph.coupled_filter_classes``)."""
    return _copied(_coupling(model))[1]


def balanced_filter_cells(model: nn.Module) -> Dict[str, List[int]]:
    """{weight: the cell of each filter} for filters that must go in equal numbers per group of
    a grouped convolution (``graph.grouping.balanced_cells``)."""
    return _copied(_coupling(model))[2]


def _copied(found) -> tuple:
    """Copies of the cached (groups, classes, cells), so callers cannot edit the cache."""
    groups, classes, cells = found[:3]
    return ([list(g) for g in groups], [{k: list(v) for k, v in c.items()} for c in classes],
            {k: list(v) for k, v in cells.items()})


def make_units(weights: Sequence[str], dependency: Optional[str], couple_filters: bool,
               model: Optional[nn.Module], param_order: Sequence[str],
               defer: bool = False) -> Optional[List[Unit]]:
    """Group the listed ``weights`` into units.

    ``Leader``: one unit, ranked by the first weight alone. ``Independent``, or a granularity other
    than filters: one unit per weight. Otherwise (``couple_filters``) each listed weight joins its
    coupled filter group, unlisted members included, ranked by the sum of all members' scores,
    and a unit whose filters feed or are a grouped convolution gets its ``cells``.
    With ``defer``, a model whose example input is not known yet and whose graph the usual image
    sizes do not run through gives None (the caller asks again once the input is known) instead
    of a warning and independent units.
    """
    weights = list(weights)
    if dependency == "Leader":
        return [Unit(weights, [weights[0]], weights[0])]
    groups, classes, cells, parts = None, [], {}, []
    if couple_filters and dependency is None and model is not None:
        try:
            found = _coupling(model)
            groups, classes, cells = _copied(found)   # one graph lookup for all
            parts = [[[list(q) for q in rec] for rec in u] for u in found[4]]
        except CompressorError as e:
            if defer and isinstance(e, NoExampleInputError):   # the graph traced; no input yet
                return None
            warnings.warn(f"filter coupling not found, listed weights are pruned independently: {e}",
                          stacklevel=3)
    by_norm = {normalize_name(n): n for n in param_order}
    cells = {by_norm[normalize_name(str(n))]: c for n, c in cells.items()
             if normalize_name(str(n)) in by_norm}
    if not groups and not classes:
        return [Unit([w], [w], w, cells=cells.get(w)) for w in weights]
    order = {n: i for i, n in enumerate(param_order)}
    units, done = [], set()
    for index, unit_parts in zip(classes, parts or [[]] * len(classes)):
        # groups coupled in part cover their identically coupled members too
        real = {by_norm[normalize_name(str(n))]: v for n, v in index.items()
                if normalize_name(str(n)) in by_norm}
        listed = [w for w in weights if w in real]
        if not listed or len(real) != len(index):
            continue
        ordered = sorted(real, key=lambda n: order.get(n, len(order)))
        index = {n: real[n] for n in ordered}
        units.append(Unit(ordered, ordered, listed[0], index, _position_cells(index, cells),
                          unit_parts or None))
        done |= set(real)
    groups = groups or []
    partner: Dict[str, set] = {}
    for group in groups:
        real = {by_norm[normalize_name(str(n))] for n in group if normalize_name(str(n)) in by_norm}
        for n in real:
            partner.setdefault(n, set()).update(real)
    for w in weights:
        if w in done:
            continue
        members, frontier = {w}, [w]
        while frontier:
            for n in partner.get(frontier.pop(), ()):
                if n not in members:
                    members.add(n)
                    frontier.append(n)
        done |= members
        ordered = sorted(members, key=lambda n: order.get(n, len(order)))
        own = next((cells[m] for m in ordered if m in cells), None)   # members share classes
        units.append(Unit(ordered, ordered, w, cells=own))
    return units


def _position_cells(index: Dict[str, List[int]], cells: Dict[str, List[int]]
                    ) -> Optional[List[int]]:
    """The cell of each structure position of a unit coupled in part, from its members' cells;
    None unless every position gets one cell, consistently, and the cells are equal in size."""
    width = 1 + max(max(v) for v in index.values())
    out: List[Optional[int]] = [None] * width
    for m, positions in index.items():
        for pos, c in zip(positions, cells.get(m, [])):
            if out[pos] is None:
                out[pos] = c
            elif out[pos] != c:
                return None
    if any(c is None for c in out):
        return None
    sizes = [out.count(c) for c in set(out)]
    return out if len(sizes) > 1 and len(set(sizes)) == 1 else None   # type: ignore[return-value]


def param_dependents(model: nn.Module, weight_names: Sequence[str]
                     ) -> Dict[str, List[Tuple[str, int, List[int]]]]:
    """{weight name: [(parameter, dim, the weight's filter at each of its positions or -1)]} for
    the parameters the forward combines with its output channels (ViT's ``pos_embedding`` and
    class token, ConvNeXt's ``layer_scale``; ``graph.ParamSlice``). Masking their entries with
    the filters keeps a pruned channel exactly zero where the parameter is added to it. An
    untraceable model has none."""
    try:
        g = analyze_graph(model)
    except CompressorError:
        return {}
    producers = {p.weight: p for p in g.producers}
    out: Dict[str, List[Tuple[str, int, List[int]]]] = {}
    for w in weight_names:
        p = producers.get(w)
        if p is None:
            continue
        at: Dict[int, int] = {}
        for f, r in enumerate(g.roots(p.ids)):
            at.setdefault(r, f)
        for ps in g.params:
            idx = [at.get(r, -1) for r in g.roots(ps.ids)]
            if any(i >= 0 for i in idx):
                out.setdefault(w, []).append((ps.tensor, ps.dim, idx))
    return out


def dependents(model: nn.Module, weight_names: Sequence[str], with_batchnorm: bool = True
               ) -> Dict[str, List[str]]:
    """{weight name: [its layer's bias, the following batch norm's weight and bias]} (those present).

    The batch norm is the one ``graph.conv_bn_pairs`` finds (it alone consumes the conv's output);
    a batch norm without affine parameters has nothing to mask. An untraceable model gets biases only.
    """
    inner = unwrap(model)
    params = dict(inner.named_parameters())
    module_name = {id(m): n for n, m in inner.named_modules()}
    pairs = {}
    if with_batchnorm:
        try:
            pairs = conv_bn_pairs(model)
        except CompressorError:
            pairs = {}
    out: Dict[str, List[str]] = {}
    for w in weight_names:
        if w not in params:
            continue
        n_out = params[w].shape[0]
        deps = []
        prefix = w.rsplit(".", 1)[0] if "." in w else ""
        bias = f"{prefix}.bias" if prefix else "bias"
        if bias in params and params[bias].shape == (n_out,):
            deps.append(bias)
        bn = pairs.get(w)
        if bn is not None and getattr(bn, "affine", False) and id(bn) in module_name:
            for suffix in ("weight", "bias"):
                name = f"{module_name[id(bn)]}.{suffix}"
                if name in params and params[name].shape == (n_out,):
                    deps.append(name)
        if deps:
            out[w] = deps
    return out
