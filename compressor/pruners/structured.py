"""Ranked structure pruning: one pruner, parameterised by a criterion, a granularity and a target.

``RankedStructurePruner`` ranks the structures of each weight (or of each coupled unit of weights)
by a criterion (``criteria.py``), cut by a granularity (``granularity.py``), and prunes the lowest
ranked ones up to a target sparsity that is fixed, follows AGP over the policy's pruning events, or
is drawn at random. The names a schedule uses (Distiller's ``L1RankedStructureParameterPruner``,
``..._AGP`` and the rest) are a table in ``structured_names.py`` that only translates YAML arguments
into these parts.

Count rule (Distiller's): k = rounding_fn(fraction * N) structures, rounded to a multiple of
``group_size``; never all N unless the fraction is exactly 1 (then N - group_size). Exactly k are
pruned, ties broken by position (Distiller's threshold over-pruned on ties). Structures already
masked count towards k, so a schedule never overshoots its target.

``round_to`` (Torch-Pruning's name): the count kept, N - k, is rounded *up* to a multiple of
``round_to`` (fewer are pruned, never more), so the thinned width is a multiple of it; when N itself
is not a multiple and no smaller multiple fits, nothing is pruned. ``group_size`` rounds the count
pruned instead; the two are not combined.

Grouped convolutions: thinning removes a grouped convolution's channels only in equal numbers per
group. When a unit's filters feed or are one (``Unit.cells``, from the graph), the count rule is
applied to each group's structures on its own, k_g = count(fraction, N / G), and the k_g lowest of
every group are pruned: G * k_g in all, rounded down (with ``floor``) per group rather than over
the whole layer, so every pruned filter can be thinned.

Filter masks come with masks for the layer's bias entries and the following batch norm's weight and
bias, and coupled layers share one mask (see ``coupling.py``), so thinning the masked network gives
exactly the same function.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ComponentArgError, CompressorError, listing
from ..masks import unwrap
from ..schedules import agp_sparsity
from .base import PruneContext, Pruner
from .coupling import DEPENDENCIES, Unit, dependents, make_units, param_dependents
from .criteria import Criterion, seeded_generator
from .granularity import Granularity
from .magnitude import check_number, check_sparsity

ROUNDING = {"floor": math.floor, "ceil": math.ceil, "round": round}


def structures_to_prune(fraction: float, n: int, group_size: int = 1,
                        rounding_fn: Callable = math.floor) -> int:
    """How many of ``n`` structures to prune for ``fraction`` (Distiller's count rule).

    k = rounding_fn(fraction * n), then rounding_fn(k / group_size) * group_size; if that is all
    ``n`` structures while fraction != 1, k = n - group_size. Products are rounded to 9 decimals
    first, so 0.3 * 10 floors to 3, not 2.
    """
    k = int(rounding_fn(round(fraction * n, 9)))
    k = int(rounding_fn(round(k / group_size, 9))) * group_size
    k = max(0, min(k, n))
    if k == n and fraction != 1.0:
        k = max(0, n - group_size)
    return k


def round_kept(k: int, n: int, round_to: int = 1, cells: int = 1) -> int:
    """The largest count ``k' <= k`` to prune from each of ``cells`` equal cells of ``n``
    structures such that the count kept, ``cells * (n - k')``, is a multiple of ``round_to``
    (0 when none is)."""
    if round_to <= 1:
        return k
    for j in range(k, 0, -1):
        if (cells * (n - j)) % round_to == 0:
            return j
    return 0


# -- targets: the sparsity to reach at a pruning step ------------------------------------------
class FixedTarget:
    """The same fraction at every step."""

    def __init__(self, sparsity: float):
        self.sparsity = sparsity

    def __call__(self, name: str, ctx: PruneContext) -> float:
        return self.sparsity


class AGPTarget:
    """Zhu & Gupta's cubic ramp from ``initial`` at the first event to ``final`` at the last."""

    def __init__(self, initial: float, final: float):
        self.initial, self.final = initial, final

    def __call__(self, name: str, ctx: PruneContext) -> float:
        return agp_sparsity(self.initial, self.final, ctx.event, ctx.n_events)


class RandomLevelTarget:
    """A fraction drawn uniformly from [low, high] at each step, per weight; seeded, so a step
    always draws the same value (Distiller's "random-level drop filter")."""

    def __init__(self, low: float, high: float, seed: int = 0):
        self.low, self.high, self.seed = low, high, seed

    def __call__(self, name: str, ctx: PruneContext) -> float:
        g = seeded_generator(self.seed, "level", name, ctx.event, ctx.minibatch_id)
        return self.low + (self.high - self.low) * float(torch.rand((), generator=g))


# -- argument checks --------------------------------------------------------------------------
def _check_weights(weights) -> List[str]:
    if isinstance(weights, str):
        weights = [weights]
    if not isinstance(weights, (list, tuple)) or not weights or not all(isinstance(w, str) for w in weights):
        raise ComponentArgError("weights", f"must be a non-empty list of weight names; got {weights!r}")
    return list(dict.fromkeys(weights))


def _check_dependency(value) -> Optional[str]:
    if value is None or value in DEPENDENCIES:
        return value
    raise ComponentArgError("group_dependency", f"unknown dependency {value!r}; valid: "
                                                f"{', '.join(DEPENDENCIES)}, or leave it out to couple "
                                                f"filters that feed one residual sum automatically")


def _check_rounding(value) -> Callable:
    if callable(value):
        return value
    if isinstance(value, str) and value in ROUNDING:
        return ROUNDING[value]
    raise ComponentArgError("rounding_fn", f"must be one of {', '.join(ROUNDING)} (or a function); "
                                           f"got {value!r}")


def _check_group_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ComponentArgError("group_size", f"must be a positive integer; got {value!r}")
    return value


def _check_round_to(value, group_size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ComponentArgError("round_to", f"must be a positive integer (the kept count becomes "
                                            f"a multiple of it, e.g. 8); got {value!r}")
    if value > 1 and group_size > 1:
        raise ComponentArgError("round_to", f"give round_to (a multiple of it is kept) or "
                                            f"group_size (a multiple of it is pruned), not both; "
                                            f"got round_to={value}, group_size={group_size}")
    return value


def check_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ComponentArgError("seed", f"must be an integer; got {value!r}")
    return value


def desired_fraction(desired_sparsity, fraction_to_prune) -> float:
    """``desired_sparsity`` or its other name ``fraction_to_prune``, checked to lie in [0, 1)."""
    if desired_sparsity is None and fraction_to_prune is None:
        raise ComponentArgError("desired_sparsity", "is required: the fraction of structures to prune, "
                                                    "in [0, 1) (fraction_to_prune is the same argument)")
    if desired_sparsity is not None and fraction_to_prune is not None:
        raise ComponentArgError("fraction_to_prune", "give desired_sparsity or fraction_to_prune, not both")
    if desired_sparsity is not None:
        return check_sparsity("desired_sparsity", desired_sparsity)
    return check_sparsity("fraction_to_prune", fraction_to_prune)


def agp_fractions(initial_sparsity, final_sparsity) -> tuple:
    initial = check_sparsity("initial_sparsity", initial_sparsity)
    final = check_sparsity("final_sparsity", final_sparsity)
    if final < initial:
        raise ComponentArgError("final_sparsity", f"({final_sparsity}) must be >= initial_sparsity "
                                                  f"({initial_sparsity})")
    return initial, final


# -- the pruner -------------------------------------------------------------------------------
def _along(keep: torch.Tensor, idx: List[int], dim: int, shape) -> torch.Tensor:
    """A parameter's mask from a filter keep vector: position j along ``dim`` takes
    ``keep[idx[j]]`` (1 where ``idx[j]`` is -1)."""
    vec = keep.new_ones(len(idx))
    at = [j for j, i in enumerate(idx) if i >= 0]
    vec[at] = keep[[idx[j] for j in at]]
    view = [len(idx) if k == dim else 1 for k in range(len(shape))]
    return vec.reshape(view).expand(*shape).clone()


class RankedStructurePruner(Pruner):
    """Prune the lowest-scoring structures of each unit of weights to the target's fraction.

    ``criterion`` scores structures, ``granularity`` cuts weights into them, ``target(name, ctx)``
    gives the fraction to prune. ``group_dependency``: ``'Leader'`` (every listed weight gets the
    first one's mask), ``'Independent'`` (each weight on its own) or None (filters of convolutions
    feeding one residual sum share a mask; other group types are independent). With ``model``, the
    pruner also masks the dependents of pruned filters (bias, batch norm) and coupled weights that
    are not listed; ``param_names`` lists them all.
    """

    def __init__(self, name: str, weights: Sequence[str], criterion: Criterion,
                 granularity: Granularity, target: Callable[[str, PruneContext], float],
                 group_dependency: Optional[str] = None, group_size: int = 1,
                 rounding_fn: Callable = math.floor, noise: float = 0.0, seed: int = 0,
                 model: Optional[nn.Module] = None, round_to: int = 1):
        super().__init__(name)
        self.weights = _check_weights(weights)
        self.criterion, self.granularity, self.target = criterion, granularity, target
        if criterion.group_types is not None and granularity.group_type not in criterion.group_types:
            raise ComponentArgError("group_type", f"the {criterion.name} criterion ranks only "
                                                  f"{listing(criterion.group_types)}; got "
                                                  f"{granularity.group_type!r}")
        self.group_dependency = _check_dependency(group_dependency)
        self.group_size = _check_group_size(group_size)
        self.round_to = _check_round_to(round_to, self.group_size)
        self.rounding_fn = _check_rounding(rounding_fn)
        self.noise = check_number("noise", noise, 0.0, 1.0, high_open=False)
        self.seed = check_seed(seed)
        self.units: List[Unit] = make_units(self.weights, self.group_dependency, False, None, self.weights)
        self.deps: Dict[str, List[str]] = {}
        self.param_deps: Dict[str, list] = {}   # pos_embedding ... (coupling.param_dependents)
        self._problems: Dict[str, str] = {}
        self._pending: Optional[weakref.ref] = None
        #: Set by the builder when it records the first input: a step asked for before then is
        #: owed (its epoch kept here) instead of pruning the coupled weights independently.
        self.awaits_input = False
        self.owed_epoch: Optional[int] = None
        if model is None:
            if criterion.needs_model:
                raise ComponentArgError("model", f"the {criterion.name} criterion needs the model "
                                                 f"(the builder passes it; pass model=... yourself)")
            return
        params = dict(unwrap(model).named_parameters())
        missing = [w for w in self.weights if w not in params]
        if missing:
            raise ComponentArgError("weights", f"'{missing[0]}' is not a parameter of the model")
        units = make_units(self.weights, self.group_dependency, granularity.along_outputs,
                           model, list(params), defer=True)
        # No example input yet and no usual image size fits: coupling waits for the first batch
        # (the builder records it); until then the listed weights are checked one by one.
        self._pending = weakref.ref(model) if units is None else None
        if units is not None:
            self.units = units
        self._prepare(model, params)
        criterion.attach()
        # Hooks must not outlive the pruner (e.g. when a later component of the schedule fails).
        self._finalizer = weakref.finalize(self, criterion.close)

    def _prepare(self, model: nn.Module, params) -> None:
        """Dependents and criterion for the current units; checked."""
        granularity, criterion = self.granularity, self.criterion
        if granularity.along_outputs:
            members = [m for u in self.units for m in u.members]
            self.deps = dependents(model, members, with_batchnorm=granularity.canonical == "Filters")
            self.param_deps = param_dependents(model, members)
        scored = list(dict.fromkeys(n for u in self.units for n in u.scored))
        try:
            problems = criterion.prepare(model, scored, granularity)
        except CompressorError as e:   # the graph is needed and cannot be traced
            raise ComponentArgError("model", f"the {criterion.name} criterion needs the model's graph: "
                                             f"{e}") from None
        self._problems = {n: why for n, why in problems.items() if n in self.weights}
        self.check({n: params[n] for n in self.param_names})

    def resolve_coupling(self) -> bool:
        """Find the filter coupling deferred for want of an example input; False while still unknown.

        Without ``awaits_input`` (no one will record an input) the old fallback applies: a warning
        and independent units.
        """
        model = self._pending() if self._pending is not None else None
        if model is None:
            self._pending = None
            return True
        params = dict(unwrap(model).named_parameters())
        units = make_units(self.weights, self.group_dependency, True, model, list(params),
                           defer=self.awaits_input)
        if units is None:
            return False
        self._pending = None
        before = list(self.param_names)
        self.units = units
        self._prepare(model, params)
        if self.param_names != before:
            self.criterion.reattach()
        return True

    # -- names and checks -----------------------------------------------------------------------
    @property
    def param_names(self) -> List[str]:
        """Listed weights, then unlisted coupled weights, then biases and batch-norm parameters."""
        names = list(self.weights)
        names += [m for u in self.units for m in u.members]
        names += [d for u in self.units for m in u.members for d in self.deps.get(m, [])]
        names += [t for u in self.units for m in u.members for t, _, _ in self.param_deps.get(m, [])]
        return list(dict.fromkeys(names))

    def check(self, params) -> None:
        for name in self.weights:
            self.granularity.check(name, params[name].shape)
        for unit in self.units:
            for m in unit.members:
                if m not in self.weights:
                    try:
                        self.granularity.check(m, params[m].shape, coupled=True)
                    except ComponentArgError as e:
                        raise ComponentArgError("weights", f"'{m}' must share filter masks with "
                                                           f"'{unit.target_name}' but: {e.reason}") from None
            counts = {m: self.granularity.n_groups(params[m].shape) for m in unit.members}
            first = unit.members[0]
            if unit.index is not None:   # coupled in part: each member maps its own filters
                for m, c in counts.items():
                    if c != len(unit.index[m]):
                        raise ComponentArgError("weights", f"'{m}' {tuple(params[m].shape)} has {c} "
                                                           f"filters but its graph has "
                                                           f"{len(unit.index[m])} output channels")
                continue
            for m, c in counts.items():
                if c != counts[first]:
                    key = "group_dependency" if self.group_dependency == "Leader" else "weights"
                    raise ComponentArgError(
                        key, f"'{first}' {tuple(params[first].shape)} has {counts[first]} "
                             f"{self.granularity.group_type} groups but '{m}' "
                             f"{tuple(params[m].shape)} has {c}; weights pruned with one mask need "
                             f"the same number of groups")
        for name, why in self._problems.items():
            raise ComponentArgError("weights", f"'{name}': {why}; the {self.criterion.name} "
                                               f"criterion cannot rank it")

    # -- masks ----------------------------------------------------------------------------------
    def masks(self, params, ctx: PruneContext) -> Dict[str, torch.Tensor]:
        if self._pending is not None:
            model = self._pending()
            if not self.resolve_coupling():
                self.owed_epoch = ctx.epoch   # the builder's first-input hook prunes then
                return {}
            if model is not None:   # coupled weights the policy did not know of when it asked
                params = {**dict(unwrap(model).named_parameters()), **params}
        self.owed_epoch = None
        out: Dict[str, torch.Tensor] = {}
        for unit in self.units:
            fraction = self.target(unit.target_name, ctx)
            n = unit.width(self.granularity.n_groups(params[unit.members[0]].shape))
            keep = self.select(unit, params, ctx, fraction, n)
            if keep is None:
                continue
            for m in unit.members:
                own = keep if unit.index is None else keep[torch.tensor(unit.index[m])]
                out[m] = self.member_mask(own, params[m].shape, ctx)
                for d in self.deps.get(m, []):
                    out[d] = own.clone()
                for t, dim, idx in self.param_deps.get(m, []):
                    mask = _along(own, idx, dim, params[t].shape)
                    out[t] = mask if t not in out else out[t] * mask
        self.criterion.step_done(ctx)
        if ctx.event >= ctx.n_events - 1 and not ctx.options.mini_batch_pruning_frequency:
            self.close()   # the last pruning step: statistics are no longer needed
        return out

    def unit_scores(self, unit: Unit, params, ctx: PruneContext, n: int) -> Optional[torch.Tensor]:
        """The summed criterion over the unit's scored weights; already-masked structures -inf."""
        total = None
        for m in unit.scored:
            s = self.criterion.scores(m, params[m].detach(), self.granularity, ctx)
            width = n if unit.index is None else len(unit.index[m])
            if s is not None and s.numel() == width:   # statistics of another width are stale
                s = s.detach().float().reshape(-1).cpu()
                if unit.index is not None:   # each filter adds to its structure's score
                    s = torch.zeros(n, dtype=s.dtype).index_add_(0, torch.tensor(unit.index[m]), s)
                total = s if total is None else total + s
        if total is None:
            return None
        if self.noise:
            g = seeded_generator(self.seed, "noise", unit.target_name, ctx.event, ctx.minibatch_id)
            if float(torch.rand((), generator=g)) < self.noise:   # epsilon-greedy, as Distiller
                total = total * torch.randn(n, generator=g)
        regrow = ctx.options.mask_on_forward_only or ctx.options.use_double_copies
        if not regrow:   # masks are intersected: a masked structure stays pruned, so count it first
            for m in unit.members:
                mask = ctx.current.get(m)
                if mask is not None:
                    dead = self.granularity.sums((mask != 0).float()).cpu() == 0
                    if unit.index is not None:
                        dead = torch.zeros(n, dtype=torch.bool).index_fill_(
                            0, torch.tensor(unit.index[m])[dead], True)
                    total = total.masked_fill(dead, -math.inf)
        return total

    def select(self, unit: Unit, params, ctx: PruneContext, fraction: float, n: int
               ) -> Optional[torch.Tensor]:
        """Keep vector (bool, one per structure) for the unit, or None to leave it unchanged."""
        cells = unit.cells if unit.cells is not None and len(unit.cells) == n else None
        copies = _uneven_copies(unit, n)
        if copies is not None and not unit.parts:
            return self._select_per_member(unit, params, ctx, fraction, n, copies)
        if copies is not None:
            return self._select_weighted(unit, params, ctx, fraction, n, copies, cells)
        if cells is not None:
            return self._select_per_cell(unit, params, ctx, fraction, n, torch.tensor(cells))
        k = round_kept(structures_to_prune(fraction, n, self.group_size, self.rounding_fn), n,
                       self.round_to)
        if k == 0:
            return None
        scores = self.unit_scores(unit, params, ctx, n)
        if scores is None:
            return None
        order = torch.sort(scores, stable=True).indices
        keep = torch.ones(n, dtype=torch.bool)
        keep[order[:k]] = False
        return keep

    def _select_per_cell(self, unit: Unit, params, ctx: PruneContext, fraction: float, n: int,
                         cells: torch.Tensor) -> Optional[torch.Tensor]:
        """The count rule and the ranking within each cell (a group of a grouped convolution)."""
        n_cells = int(cells.max()) + 1
        k = round_kept(structures_to_prune(fraction, n // n_cells, self.group_size,
                                           self.rounding_fn), n // n_cells, self.round_to, n_cells)
        if k == 0:
            return None
        scores = self.unit_scores(unit, params, ctx, n)
        if scores is None:
            return None
        keep = torch.ones(n, dtype=torch.bool)
        for c in range(n_cells):
            members = (cells == c).nonzero().flatten()
            order = torch.sort(scores[members], stable=True).indices
            keep[members[order[:k]]] = False
        return keep

    def _select_per_member(self, unit: Unit, params, ctx: PruneContext, fraction: float, n: int,
                           copies: Dict[str, List[int]]) -> Optional[torch.Tensor]:
        """A unit coupled in part whose structures cover different numbers of filters, with no
        tensor cut into equal parts (ShuffleNet's stream once its shuffles are permutations: a
        class is one filter of the layer that made the channel, plus the filter of the next
        stage's depthwise convolution that reads it). Every member loses the count rule's share
        of its own filters, as an uncoupled layer would: structures go by their mean score per
        filter, lowest first, each taken while every member it covers has share left
        (``round_to`` applies to each member's count). A depthwise-shaped member (one input
        channel per filter) whose structures all are other members' too has no share of its
        own: it loses what they lose."""
        scores = self.unit_scores(unit, params, ctx, n)
        if scores is None:
            return None
        width = [sum(c[i] for c in copies.values()) for i in range(n)]
        mean = scores.double() / torch.tensor(width, dtype=torch.float64).clamp(min=1)
        quota = {m: round_kept(structures_to_prune(fraction, len(unit.index[m]), self.group_size,
                                                   self.rounding_fn), len(unit.index[m]),
                               self.round_to) for m in copies}
        for m, per in copies.items():
            shape = params[m].shape
            if len(shape) > 2 and shape[1] == 1 and all(
                    any(o != m and o in quota and copies[o][i] for o in copies)
                    for i, c in enumerate(per) if c):
                del quota[m]
        keep = torch.ones(n, dtype=torch.bool)
        for i in torch.sort(mean, stable=True).indices.tolist():
            if not width[i] or float(mean[i]) == math.inf:
                continue
            owners = [m for m in quota if copies[m][i]]
            if owners and all(quota[m] >= copies[m][i] for m in owners):
                for m in owners:
                    quota[m] -= copies[m][i]
                keep[i] = False
        for m, per in copies.items():     # every member keeps a filter
            if all(not keep[i] for i, c in enumerate(per) if c):
                return None
        return keep if not keep.all() else None

    def _select_weighted(self, unit: Unit, params, ctx: PruneContext, fraction: float, n: int,
                         copies: Dict[str, List[int]], cells: Optional[List[int]]
                         ) -> Optional[torch.Tensor]:
        """A unit coupled in part whose structures cover different numbers of filters (a channel
        shuffle couples 2, 4, 8 ... filters into one class). The count rule applies to the
        *filters*, and structures go by their mean score per filter, lowest first: summed scores
        and a count of structures would never take the wide ones, so the layers they cover would
        never lose a channel. Tensors cut into equal parts (``Unit.parts``: ShuffleNet's
        ``chunk``) must lose as many channels from each part, or thinning keeps the extra zero
        channels: structures with the same effect on every part's count are interchangeable, so
        a small search over how many of each kind go (lowest mean first) finds the most filters
        within the count that leave every part balanced. A member left without filters, or a
        part emptied, prunes nothing at this step. (``cells`` is implied by the parts.)"""
        scores = self.unit_scores(unit, params, ctx, n)
        if scores is None:
            return None
        width = [sum(c[i] for c in copies.values()) for i in range(n)]
        mean = scores.double() / torch.tensor(width, dtype=torch.float64).clamp(min=1)
        parts = unit.parts or []
        delta: List[tuple] = [() for _ in range(n)]
        for rec in parts:
            counts = []
            for part in rec:
                c = [0] * n
                for i in part:
                    if i < n:
                        c[i] += 1
                counts.append(c)
            delta = [d + tuple(counts[0][i] - cj[i] for cj in counts[1:])
                     for i, d in enumerate(delta)]
        kinds: Dict[tuple, List[int]] = {}
        for i in torch.sort(mean, stable=True).indices.tolist():
            if width[i]:
                kinds.setdefault(delta[i], []).append(i)
        k = structures_to_prune(fraction, sum(width), self.group_size, self.rounding_fn)
        zero = (0,) * len(delta[0]) if n else ()
        items = list(kinds.items())
        # what the kinds after each step can still add to each balance (to prune dead states)
        reach = [(zero, zero)]
        for d, members in reversed(items):
            lo, hi = reach[0]
            m = len(members)
            reach.insert(0, (tuple(a + min(0, m * y) for a, y in zip(lo, d)),
                             tuple(b + max(0, m * y) for b, y in zip(hi, d))))
        best: Dict[tuple, tuple] = {zero: (0, ())}     # balance -> (filters, counts per kind)
        for step, (d, members) in enumerate(items):
            prefix = [0]
            for i in members:
                prefix.append(prefix[-1] + width[i])
            lo, hi = reach[step + 1]
            nxt: Dict[tuple, tuple] = {}
            for bal, (f, chosen) in best.items():
                for c in range(len(members) + 1):
                    if f + prefix[c] > k:
                        break
                    b2 = tuple(x + c * y for x, y in zip(bal, d))
                    if any(not (a <= -x <= b) for x, a, b in zip(b2, lo, hi)):
                        continue   # the kinds left cannot balance it again
                    if b2 not in nxt or nxt[b2][0] < f + prefix[c]:
                        nxt[b2] = (f + prefix[c], chosen + (c,))
            if len(nxt) > 5000:   # keep the search small: the states with the most filters
                nxt = dict(sorted(nxt.items(), key=lambda kv: -kv[1][0])[:5000])
            best = nxt
        found = best.get(zero)
        if not found or found[0] == 0:
            return None
        keep = torch.ones(n, dtype=torch.bool)
        for (d, members), c in zip(items, found[1]):
            keep[members[:c]] = False
        for m, per in copies.items():     # every member keeps a filter, every part a channel
            if all(not keep[i] for i, c in enumerate(per) if c):
                return None
        for rec in parts:
            if any(all(not keep[i] for i in part) for part in rec):
                return None
        return keep

    def member_mask(self, keep: torch.Tensor, shape, ctx: PruneContext) -> torch.Tensor:
        return self.granularity.expand(keep, shape)

    # -- life cycle and state -------------------------------------------------------------------
    def close(self) -> None:
        """Remove the criterion's hooks (done automatically after the last pruning event)."""
        self.criterion.close()

    def state_dict(self) -> dict:
        return {"criterion": self.criterion.state_dict()}

    def load_state_dict(self, state) -> None:
        self.criterion.load_state_dict(state.get("criterion", {}))


def _uneven_copies(unit: Unit, n: int) -> Optional[Dict[str, List[int]]]:
    """{member: how many of its filters each structure covers} for a unit coupled in part whose
    structures do not all cover the same number of filters; None otherwise."""
    if unit.index is None:
        return None
    copies = {m: [0] * n for m in unit.index}
    for m, positions in unit.index.items():
        for pos in positions:
            if pos < n:
                copies[m][pos] += 1
    totals = {sum(c[i] for c in copies.values()) for i in range(n)}
    return copies if len(totals) > 1 else None


class BernoulliSelect:
    """Drop each structure independently with probability = the target fraction (DropFilter).

    The draw is seeded by (seed, weight, event, minibatch). At least one structure is kept. With
    ``use_double_copies`` (the weights are restored after each step), the weight mask is scaled by
    N / kept to keep the layer's expected output, as Distiller did; otherwise masks stay binary,
    since a scaled mask re-applied after every step would grow the weights without bound.
    """

    def select(self, unit, params, ctx, fraction, n):
        if fraction <= 0:
            return None
        g = seeded_generator(self.seed, "bernoulli", unit.target_name, ctx.event, ctx.minibatch_id)
        u = torch.rand(n, generator=g)
        keep = u >= fraction
        if not keep.any():
            keep[u.argmax()] = True
        return keep

    def member_mask(self, keep, shape, ctx):
        if ctx.options.use_double_copies:
            scaled = keep.float() * (keep.numel() / max(float(keep.sum()), 1.0))   # a member's slice may be all dropped
            return self.granularity.expand(scaled, shape)
        return self.granularity.expand(keep, shape)
