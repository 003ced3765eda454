"""Criteria: how important each structure of a weight is (higher = more important).

A criterion is a small object that scores the structures (filters, channels, blocks ...) of one
weight tensor; ranked pruners prune the lowest scores. It knows nothing about targets, schedules or
coupling, so any criterion combines with any granularity and any target.

==================  ======================================================  =============
name                score of a structure                                    needs
==================  ======================================================  =============
``L1``              mean |w| (Distiller's length-normalized L1)             weights
``L2``              ||w||_2 / size (Distiller's length-normalized L2)       weights
``BNGamma``         |gamma| of the batch norm after the conv (slimming)     model graph
``APoZ``            1 - APoZ of the following activation's channel          forward hooks
``MeanActivation``  mean of the following activation's channel              forward hooks
``Taylor``          mean over minibatches of |sum(w * dL/dw)|               gradients
``Random``          uniform in [0, 1), seeded                               --
==================  ======================================================  =============

Activation statistics are gathered by forward hooks over the *training* forward passes since the
previous pruning step (modules in eval mode are ignored), on the activation module that first sees
each convolution's channels, found in the traced graph (``graph.following_activations``), not by a
naming convention. APoZ prunes the channels that are most often zero, mean activation the ones with
the *lowest* mean (Distiller pruned the highest). ``Taylor`` uses the absolute first-order estimate
of the loss change when a filter is removed (Molchanov et al.), so it prunes the filters with the
smallest |sum(w * grad)|; Distiller kept the highest *signed* sum, which prunes the filters whose
removal would raise the loss the most.

The names are registered in ``registry.CRITERIA`` (looked up in any letter case; ``gradient``,
``bn_gamma``, ``mean`` and ``mean_activation`` are accepted spellings). To add a criterion,
subclass ``Criterion`` and register it with ``@CRITERIA.register(name="...")``.
"""
from __future__ import annotations

import zlib
from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from ..activations import ACTIVATIONS, ActivationStatsCollector
from ..errors import ComponentArgError, listing, suggest
from ..graph import conv_bn_pairs, following_activations
from ..masks import unwrap
from ..registry import CRITERIA
from .granularity import FILTER_GROUP_TYPES


def seeded_generator(seed: int, *parts) -> torch.Generator:
    """A CPU generator that depends only on ``seed`` and ``parts`` (strings hashed stably)."""
    value = int(seed) & 0xFFFFFFFF
    for p in parts:
        value = zlib.crc32(str(p).encode(), value)
    return torch.Generator().manual_seed(value)


class Criterion:
    """Scores structures; subclasses implement ``scores``.

    Life cycle, driven by the pruner: ``prepare`` (graph lookups, no side effects) -> ``attach``
    (hooks, after the pruner's arguments were validated) -> ``scores`` at each pruning step ->
    ``step_done`` (forget the statistics of the finished interval) -> ``close`` (remove hooks).
    """

    name = "criterion"
    #: Group types the criterion can score (None: every rankable type).
    group_types: Optional[Sequence[str]] = None
    #: Whether the criterion needs the model (graph, hooks).
    needs_model = False

    def prepare(self, model: Optional[nn.Module], names: Sequence[str], granularity) -> Dict[str, str]:
        """Get ready to score ``names``; return {name: why it cannot be scored} for the others."""
        return {}

    def attach(self) -> None:
        """Install hooks, if the criterion has any."""

    def scores(self, name: str, weight: torch.Tensor, granularity, ctx) -> Optional[torch.Tensor]:
        """One score per structure of ``weight`` (1D, group order), or None when there is no data."""
        raise NotImplementedError

    def step_done(self, ctx) -> None:
        """A pruning step used the statistics gathered so far."""

    def close(self) -> None:
        """Remove hooks; the criterion gathers nothing afterwards."""

    def reattach(self) -> None:
        """Hook again after ``prepare`` was called with more names (statistics start afresh)."""
        self.close()
        self.attach()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


class Magnitude(Criterion):
    """A length-normalized norm of the structure's weights (``mean_abs`` for L1, ``mean_l2`` for L2)."""

    def __init__(self, norm: str = "mean_abs"):
        self.norm = norm
        self.name = {"mean_abs": "L1", "mean_l2": "L2"}.get(norm, norm)

    def scores(self, name, weight, granularity, ctx):
        return granularity.norms(weight, self.norm).float()


@CRITERIA.register(name="L1")
class L1Magnitude(Magnitude):
    def __init__(self):
        super().__init__("mean_abs")


@CRITERIA.register(name="L2")
class L2Magnitude(Magnitude):
    def __init__(self):
        super().__init__("mean_l2")


@CRITERIA.register(name="BNGamma", spellings=("bn_gamma",))
class BatchNormGamma(Criterion):
    """|gamma| of the batch norm that directly follows the conv (Liu et al., network slimming).

    Pair it with an L1 penalty on the gammas (``L1Regularizer`` on the ``bn*.weight`` parameters)
    so that unimportant channels are driven towards zero first.
    """

    name = "BNGamma"
    group_types = FILTER_GROUP_TYPES
    needs_model = True

    def __init__(self):
        self.bn: Dict[str, str] = {}      # conv weight name -> batch-norm module name
        self._model = None

    def prepare(self, model, names, granularity):
        self._model = unwrap(model)
        pairs = conv_bn_pairs(model)
        module_name = {id(m): n for n, m in self._model.named_modules()}
        problems = {}
        for n in names:
            bn = pairs.get(n)
            if bn is None:
                problems[n] = "no BatchNorm directly consumes this convolution's output"
            elif not bn.affine:
                problems[n] = "the BatchNorm after this convolution has no gamma (affine=False)"
            else:
                self.bn[n] = module_name[id(bn)]
        return problems

    def scores(self, name, weight, granularity, ctx):
        if name not in self.bn:
            return None
        # looked up by name each time: thinning may have replaced the module
        bn = self._model.get_submodule(self.bn[name])
        return bn.weight.detach().abs().float()


class _TrainingStats(ActivationStatsCollector):
    """The activation statistics collector, on chosen modules and training forwards only."""

    def __init__(self, model: nn.Module, module_names: Sequence[str]):
        super().__init__(model)
        self.module_names = list(dict.fromkeys(module_names))

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for name in self.module_names:
            inner = self._hook(name)

            def hook(module, inputs, output, inner=inner, name=name):
                if not module.training:
                    return
                entry = self.stats.get(name)
                if entry is not None and output.dim() > 1 and entry["zeros"].numel() != output.shape[1]:
                    del self.stats[name]     # the layer was thinned: start over at its new width
                inner(module, inputs, output)
            self._handles.append(modules[name].register_forward_hook(hook))
        return self


class _ActivationCriterion(Criterion):
    group_types = FILTER_GROUP_TYPES
    needs_model = True

    def __init__(self):
        self.module_of: Dict[str, str] = {}
        self.collector: Optional[_TrainingStats] = None
        self._model = None

    def prepare(self, model, names, granularity):
        found = following_activations(model)
        kinds = ", ".join(c.__name__ for c in ACTIVATIONS)
        problems = {}
        for n in names:
            if n in found:
                self.module_of[n] = found[n]
            else:
                problems[n] = (f"no activation module ({kinds}) follows this convolution in the traced "
                               f"graph (through batch norms and additions), or it is called more than "
                               f"once in forward; give each use of an activation its own module")
        self._model = unwrap(model)
        return problems

    def attach(self):
        if self.collector is None and self.module_of:
            self.collector = _TrainingStats(self._model, self.module_of.values()).__enter__()

    @property
    def hooked(self) -> bool:
        return bool(self.collector is not None and self.collector._handles)

    def scores(self, name, weight, granularity, ctx):
        module = self.module_of.get(name)
        if module is None or self.collector is None:
            return None
        entry = self.collector.stats.get(module)
        if not entry or entry["count"] == 0:
            return None
        stat = self._stat(entry)
        if stat.numel() != weight.shape[0]:
            return None
        return stat.float().to(weight.device)

    def _stat(self, entry) -> torch.Tensor:
        raise NotImplementedError

    def step_done(self, ctx):
        if self.collector is not None:
            self.collector.stats = {}

    def close(self):
        if self.collector is not None:
            self.collector.__exit__(None, None, None)

    def reattach(self):
        self.close()
        self.collector = None
        self.attach()

    def state_dict(self):
        if self.collector is None:
            return {}
        return {"stats": {m: {"zeros": e["zeros"].clone(), "sum": e["sum"].clone(), "count": int(e["count"])}
                          for m, e in self.collector.stats.items()}}

    def load_state_dict(self, state):
        if self.collector is not None and "stats" in state:
            self.collector.stats = {m: {"zeros": e["zeros"].clone(), "sum": e["sum"].clone(),
                                        "count": int(e["count"])} for m, e in state["stats"].items()}


@CRITERIA.register(name="APoZ")
class APoZ(_ActivationCriterion):
    """Network trimming (Hu et al.): a channel that is zero more often is less important.

    Score = 1 - APoZ, the fraction of non-zero outputs of the channel.
    """

    name = "APoZ"

    def _stat(self, entry):
        return 1.0 - entry["zeros"] / entry["count"]


@CRITERIA.register(name="MeanActivation", spellings=("mean", "mean_activation"))
class MeanActivation(_ActivationCriterion):
    """Mean activation of the channel (Molchanov et al.): the lowest means are pruned."""

    name = "MeanActivation"

    def _stat(self, entry):
        return entry["sum"] / entry["count"]


@CRITERIA.register(name="Taylor", spellings=("gradient",))
class Taylor(Criterion):
    """First-order Taylor importance of a structure: |sum over the structure of w * dL/dw|.

    Accumulated after every backward pass since the previous pruning step (a post-accumulate-grad
    hook on each weight; the mean over those minibatches is the score). When nothing was
    accumulated, the current ``.grad`` is used; without a gradient there is no score and the
    pruner skips the tensor at that step, as Distiller did.
    """

    name = "Taylor"
    needs_model = True

    def __init__(self):
        self.names: list = []
        self.acc: Dict[str, torch.Tensor] = {}
        self.count: Dict[str, int] = {}
        self._model = None
        self._granularity = None
        self._hooked: Dict[str, tuple] = {}     # name -> (parameter, hook handle)
        self._open = False

    def prepare(self, model, names, granularity):
        self._model = unwrap(model)
        self.names = list(names)
        self._granularity = granularity
        return {}

    def _param(self, name: str) -> Optional[nn.Parameter]:
        return dict(self._model.named_parameters()).get(name) if self._model is not None else None

    def _hook(self, name: str, param: nn.Parameter) -> None:
        def hook(p):
            if p.grad is None:
                return
            with torch.no_grad():
                s = self._granularity.sums(p.detach() * p.grad).abs().float()
            if name in self.acc and self.acc[name].shape == s.shape:
                self.acc[name] += s
                self.count[name] += 1
            else:
                self.acc[name], self.count[name] = s, 1
        self._hooked[name] = (param, param.register_post_accumulate_grad_hook(hook))

    def attach(self):
        self._open = True
        params = dict(self._model.named_parameters()) if self._model is not None else {}
        for name in self.names:
            if name in params and name not in self._hooked:
                self._hook(name, params[name])

    def scores(self, name, weight, granularity, ctx):
        p = self._param(name)
        if p is None:
            return None
        hooked = self._hooked.get(name)
        if self._open and hooked is not None and hooked[0] is not p:   # replaced (thinned): re-hook
            hooked[1].remove()
            self.acc.pop(name, None)
            self.count.pop(name, None)
            self._hook(name, p)
        if self.count.get(name):
            return self.acc[name] / self.count[name]
        if p.grad is None:
            return None
        with torch.no_grad():
            return granularity.sums(p.detach() * p.grad).abs().float()

    def step_done(self, ctx):
        self.acc, self.count = {}, {}

    def close(self):
        for _, handle in self._hooked.values():
            handle.remove()
        self._hooked = {}
        self._open = False

    def state_dict(self):
        return {"acc": {k: v.clone() for k, v in self.acc.items()}, "count": dict(self.count)}

    def load_state_dict(self, state):
        self.acc = {k: v.clone() for k, v in state.get("acc", {}).items()}
        self.count = {k: int(v) for k, v in state.get("count", {}).items()}


@CRITERIA.register(name="Random")
class RandomScore(Criterion):
    """Uniform random scores, a baseline. Seeded by (seed, weight name, event, minibatch), so a
    step gives the same choice every time it is computed, including after a resume."""

    name = "Random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def scores(self, name, weight, granularity, ctx):
        g = seeded_generator(self.seed, "score", name, ctx.event, ctx.minibatch_id)
        return torch.rand(granularity.n_groups(weight.shape), generator=g).to(weight.device)


def make_criterion(name, seed: int = 0, key: str = "criterion") -> Criterion:
    """The criterion registered as ``name`` in ``registry.CRITERIA`` (any letter case)."""
    if isinstance(name, Criterion):
        return name
    cls = CRITERIA.find(name) if isinstance(name, str) else None
    if cls is None:
        valid = CRITERIA.names()
        raise ComponentArgError(key, f"unknown criterion {name!r}{suggest(str(name), valid)}; "
                                     f"valid: {listing(valid)}")
    return cls(seed) if cls is RandomScore else cls()
