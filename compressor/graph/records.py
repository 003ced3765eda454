"""The records of a channel analysis: layers, their channel elements, and the union-find joining them.

Every output channel of a convolution or linear layer is an element of a union-find (``UnionFind``);
the channel dimension of a tensor is a ``ChannelInfo`` (its elements, which dim, and where a zero
channel stops being zero). ``Producer``, ``Consumer`` and ``Follower`` say how each layer touches
channel elements; ``ChannelGraph`` holds them with the reasons that block classes and answers the
questions thinning and filter coupling ask (which layers couple, which classes may go).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

@dataclass
class Producer:
    """A layer whose output channels are filters of its weight (conv, linear, depthwise conv)."""
    module: str
    weight: str
    bias: Optional[str]
    out_dim: int                 # the weight dimension of output channels
    ids: List[int]               # union-find element of each output channel
    kind: str                    # 'dense' | 'depthwise' | 'grouped'
    groups: int = 1              # grouped: output removal is balanced across these groups
    attr: str = "out_channels"


@dataclass
class Consumer:
    """A layer reading channels through its weight's input dimension."""
    module: str
    weight: str
    in_dim: int
    ids: List[int]               # union-find element of each input position
    kind: str                    # 'dense' | 'depthwise' | 'grouped'
    groups: int = 1
    attr: str = "in_channels"


@dataclass
class Follower:
    """A per-channel layer (batch norm, per-channel PReLU ...): its tensors are sliced on dim 0.

    A batch norm that may select channels (``selection.can_select``) has output elements of its own
    (``ids``) and the elements of its input (``in_ids``); output channel j reads input channel
    ``index[j]`` (``index`` None: channel j). Other followers pass their input's elements through.
    """
    module: str
    tensors: List[str]
    attrs: List[str]
    ids: List[int]
    shift: Optional[Tuple[str, ...]] = None   # (bias, weight, running_mean, running_var) names of a BN
    in_ids: Optional[List[int]] = None
    index: Optional[List[int]] = None

    def links(self) -> List[Tuple[int, int]]:
        """(output element, input element it reads) for each output channel."""
        if self.in_ids is None:
            return []
        index = self.index if self.index is not None else range(len(self.ids))
        return [(o, self.in_ids[k]) for o, k in zip(self.ids, index)]


@dataclass
class Balanced:
    """Channels an op cuts into ``groups`` equal consecutive parts whose sizes follow the channel
    count (``torch.chunk`` along channels): every part must lose as many channels as the others,
    so the op still cuts the thinned tensor at the same places. Thinning balances them like the
    groups of a grouped convolution (``kind`` is 'grouped' for that reason)."""
    what: str
    ids: List[int]
    groups: int
    kind: str = "grouped"


@dataclass
class ParamSlice:
    """A parameter or buffer the forward reads directly and combines with followed channels
    (ConvNeXt's ``layer_scale * x``, ViT's ``x + pos_embedding``, a class token concatenated
    along the tokens): sliced along ``dim`` with those channels (``ids``, one per position)."""
    tensor: str
    dim: int
    ids: List[int]


@dataclass
class NormRecord:
    """A LayerNorm over channels (``module``, normalizing dim ``channel_dim`` of its input) reading
    the channels ``ids``: they may be removed only once it is told they are zero (see
    ``compressor.thinning.norms``); until then they are blocked for thinning but not for the
    dry run's list of thinnable layers (``ChannelGraph.norm``)."""
    module: str
    ids: List[int]
    channel_dim: int


@dataclass
class WidthAttr:
    """An integer module attribute the forward uses as a channel count (torchvision ViT's
    ``hidden_dim`` in a ``reshape``): set to the number of channels of ``ids`` that stay."""
    module: str
    attr: str
    ids: List[int]


@dataclass
class UnitShuffle:
    """A shuffle unit (``graph.shuffle``): its input cut into ``parts`` (the element lists of each
    part; None for a unit that does not split), and the list ``ids`` it permutes, output channel
    ``p`` being ``ids[perm[p]]``. ``bad``: why the unit cannot be made thin (its channels are
    blocked then)."""
    module: str
    parts: Optional[List[List[int]]] = None
    ids: Optional[List[int]] = None
    perm: Optional[List[int]] = None
    bad: Optional[str] = None


@dataclass
class RMSNormRecord:
    """An RMS norm over the channels ``ids`` (a decoder's residual stream, ``graph.stream``):
    when ``k`` of its ``n`` channels go, thinning multiplies ``weight`` by ``sqrt(n/(n-k))`` and
    the float attribute ``eps`` by ``n/(n-k)`` (``thinning.rms``); its classes may go only by
    their zero filters, since the norm counts an unread channel in its mean square."""
    module: str
    weight: str
    eps: str
    ids: List[int]


class UnionFind:
    """Union-find over channel elements; the smaller element is the root, so results are stable."""

    __slots__ = ("parent",)

    def __init__(self):
        self.parent: List[int] = []

    def new(self, n: int) -> List[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


class ChannelTuple:
    """The channels of a tuple of tensors (``x.chunk(2, dim=1)``): one ``ChannelInfo`` (or None)
    per element; ``ids`` lists all of them, so blocking the tuple blocks every element."""

    __slots__ = ("parts",)

    def __init__(self, parts: List[Optional["ChannelInfo"]]):
        self.parts = parts

    @property
    def ids(self) -> List[int]:
        return [i for p in self.parts if p is not None for i in p.ids]


class ChannelInfo:
    """The channel dimension of one tensor: its elements, which dim, and where it is not zero."""

    __slots__ = ("ids", "cdim", "dirty")

    def __init__(self, ids: List[int], cdim: int, dirty: Optional[List[Optional[str]]] = None):
        self.ids, self.cdim = ids, cdim
        self.dirty = dirty if dirty is not None and any(d is not None for d in dirty) else None

    def with_(self, ids=None, cdim=None, dirty=Ellipsis) -> "ChannelInfo":
        return ChannelInfo(self.ids if ids is None else ids, self.cdim if cdim is None else cdim,
                     self.dirty if dirty is Ellipsis else dirty)

    def dirtied(self, reason: str) -> "ChannelInfo":
        return ChannelInfo(self.ids, self.cdim, [reason] * len(self.ids))


@dataclass
class ChannelGraph:
    """The result of the analysis: layers, their channel elements and what blocks them."""
    model_name: str
    input_shape: Tuple[int, ...]
    producers: List[Producer] = field(default_factory=list)
    consumers: List[Consumer] = field(default_factory=list)
    followers: List[Follower] = field(default_factory=list)
    uf: UnionFind = field(default_factory=UnionFind)
    hard: Dict[int, str] = field(default_factory=dict)    # root -> reason
    soft: Dict[int, str] = field(default_factory=dict)
    dirty: Dict[int, str] = field(default_factory=dict)
    base: List[int] = field(default_factory=list)         # union-find parents before the links
    blocks: Tuple[Dict[int, str], ...] = field(default_factory=lambda: ({}, {}, {}))  # per element
    balanced: List[Balanced] = field(default_factory=list)
    params: List[ParamSlice] = field(default_factory=list)
    widths: List[WidthAttr] = field(default_factory=list)
    norms: List[NormRecord] = field(default_factory=list)
    norm: Dict[int, str] = field(default_factory=dict)    # root -> reason (a LayerNorm not told)
    norm_elems: Dict[int, str] = field(default_factory=dict)   # the same per element
    # dirty reasons that are a parameter's entries added to a channel (``pos_embedding``): the
    # structured pruners mask those entries with the filters, so the dry run lists such layers
    param_dirt: set = field(default_factory=set)
    shuffles: Dict[str, UnitShuffle] = field(default_factory=dict)   # shuffle units, by module
    rms_norms: List[RMSNormRecord] = field(default_factory=list)   # (graph.stream)

    def link_and_block(self, open_links: Iterable[str] = ()) -> None:
        """Join every follower link except those of ``open_links`` (modules), then map the
        per-element blocks to the resulting classes."""
        open_links = set(open_links)
        for f in self.followers:
            if f.module not in open_links:
                for o, i in f.links():
                    self.uf.union(o, i)
        find = self.uf.find
        for src, dst in zip(self.blocks, (self.hard, self.soft, self.dirty)):
            for el, reason in src.items():
                dst.setdefault(find(el), reason)
        for el, reason in self.norm_elems.items():
            self.norm.setdefault(find(el), reason)

    def cut(self, modules: Iterable[str]) -> "ChannelGraph":
        """The same layers with the links of the batch norms ``modules`` left open: their output
        channels form classes apart from their input's, so they can drop channels it keeps."""
        g = ChannelGraph(self.model_name, self.input_shape, self.producers, self.consumers,
                         self.followers, base=self.base, blocks=self.blocks,
                         balanced=self.balanced, params=self.params, widths=self.widths,
                         norms=self.norms, norm_elems=self.norm_elems, param_dirt=self.param_dirt,
                         shuffles=self.shuffles, rms_norms=self.rms_norms)
        g.uf.parent = list(self.base)
        g.link_and_block(modules)
        return g

    def root(self, x: int) -> int:
        return self.uf.find(x)

    def roots(self, ids: Iterable[int]) -> List[int]:
        find = self.uf.find
        return [find(i) for i in ids]

    def filter_block(self, root: int) -> Optional[str]:
        """Why a class cannot be removed for its zero filters (None when it can)."""
        return self.hard.get(root) or self.soft.get(root) or self.dirty.get(root)

    def layer_status(self) -> Tuple[List[str], Dict[str, str], Dict[str, str]]:
        """(thinnable layers, {fully blocked layer: reason}, {partly blocked layer: note}).

        A channel made non-zero only by a parameter's entries added to it (``param_dirt``) does
        not make its layer blocked, since the structured pruners mask those entries with the
        filters; it is still noted as partly blocked while the entries are not zero."""
        thinnable, blocked, partial = [], {}, {}
        for p in self.producers:
            reasons = [self.filter_block(r) for r in self.roots(p.ids)]
            bad = [r for r in reasons if r]
            if all(r and r not in self.param_dirt for r in reasons):
                hard = [self.hard.get(r) for r in self.roots(p.ids) if self.hard.get(r)]
                blocked[p.module] = hard[0] if hard else bad[0]
            else:
                thinnable.append(p.module)
                if bad:
                    partial[p.module] = (f"{len(bad)} of {len(reasons)} channels cannot be "
                                         f"removed: {bad[0]}")
        return thinnable, blocked, partial

    def coupled_groups(self, order: Sequence[str]) -> List[List[str]]:
        """Weight names whose output channels are coupled position by position (2+ members)."""
        by_sig: Dict[tuple, List[str]] = {}
        for p in self.producers:
            by_sig.setdefault(tuple(self.roots(p.ids)), []).append(p.weight)
        rank = {n: i for i, n in enumerate(order)}
        groups = [sorted(set(g), key=lambda n: rank.get(n, len(rank))) for g in by_sig.values()
                  if len(set(g)) > 1]
        return sorted(groups, key=lambda g: rank.get(g[0], len(rank)))

    def coupled_classes(self, order: Sequence[str]) -> List[Dict[str, List[int]]]:
        """Layers whose output channels meet only in part (a depthwise convolution after a
        concatenation, a sum of a concatenation): one {weight: the class position of each output
        channel} per connected group of 2+ layers whose channels are not all the same classes
        (those are ``coupled_groups``). Positions number the group's channel classes 0..n-1."""
        rank = {n: i for i, n in enumerate(order)}
        prods = sorted({p.weight: p for p in self.producers}.values(),
                       key=lambda p: rank.get(p.weight, len(rank)))
        owner: Dict[int, int] = {}   # class root -> index of the first producer that has it
        uf = UnionFind()
        slots = uf.new(len(prods))
        for k, p in enumerate(prods):
            for r in self.roots(p.ids):
                if r in owner:
                    uf.union(slots[owner[r]], slots[k])
                else:
                    owner[r] = k
        comps: Dict[int, List[int]] = {}
        for k in range(len(prods)):
            comps.setdefault(uf.find(slots[k]), []).append(k)
        out = []
        for ks in comps.values():
            sigs = {tuple(self.roots(prods[k].ids)) for k in ks}
            if len(ks) < 2 or len(sigs) == 1:
                continue
            pos: Dict[int, int] = {}
            index = {}
            for k in ks:
                index[prods[k].weight] = [pos.setdefault(r, len(pos)) for r in self.roots(prods[k].ids)]
            out.append(index)
        return out

