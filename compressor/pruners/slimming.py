"""Network slimming (Liu et al., ICCV 2017): one global threshold on |gamma| across batch norms.

Train with an L1 penalty on the batch-norm scales (``L1Regularizer`` on the BN weights), then prune
the channels with the smallest |gamma| over *all* listed batch norms together: a global percentile,
so layers that need their channels keep them. A pruned channel's gamma and beta are masked, and so
are the filter (and bias) of the convolution that produces it, so thinning can remove the channel
and the masked network already computes what the thinned one will.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import nn

from ..errors import ComponentArgError
from ..graph import conv_bn_pairs
from ..masks import unwrap
from ..registry import PRUNERS
from ..schedules import agp_sparsity
from .base import PruneContext, Pruner, count_to_prune
from .magnitude import check_sparsity


@PRUNERS.register
class NetworkSlimmingPruner(Pruner):
    """Prune ``desired_sparsity`` of all listed BN channels by global |gamma| rank.

    ``weights``: batch-norm weight (gamma) names or patterns, e.g. ``['*bn*.weight']``.
    ``final_sparsity`` with ``initial_sparsity`` spreads the target over the policy's pruning steps
    with AGP's cubic schedule instead. ``min_channels`` channels (the largest |gamma|) of every batch
    norm are always kept.
    """

    def __init__(self, name: str, weights, desired_sparsity: Optional[float] = None,
                 initial_sparsity: Optional[float] = None, final_sparsity: Optional[float] = None,
                 min_channels: int = 1, model: Optional[nn.Module] = None):
        super().__init__(name)
        if isinstance(weights, str):
            weights = [weights]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ComponentArgError("weights", f"must be a non-empty list of batch-norm weight names; got {weights!r}")
        if (desired_sparsity is None) == (final_sparsity is None):
            raise ComponentArgError("desired_sparsity", "give desired_sparsity, or final_sparsity "
                                    "(with initial_sparsity) for a gradual AGP schedule")
        if desired_sparsity is not None:
            self.initial = self.final = check_sparsity("desired_sparsity", desired_sparsity)
        else:
            self.final = check_sparsity("final_sparsity", final_sparsity)
            self.initial = check_sparsity("initial_sparsity", initial_sparsity if initial_sparsity is not None else 0.0)
            if self.final < self.initial:
                raise ComponentArgError("final_sparsity", f"({final_sparsity}) must be >= initial_sparsity ({initial_sparsity})")
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ComponentArgError("min_channels", f"must be an integer >= 1; got {min_channels!r}")
        self.min_channels = min_channels
        self.bn_weights = list(weights)
        # Per BN weight: the other parameters of its channels (BN bias, producing conv's filter and bias).
        self._extra: Dict[str, List[str]] = {w: [] for w in self.bn_weights}
        if model is not None:
            modules = unwrap(model)
            names_by_id = {id(m): n for n, m in modules.named_modules()}
            bn_to_conv = {names_by_id[id(bn)]: conv for conv, bn in conv_bn_pairs(modules).items()}
            params = dict(modules.named_parameters())
            for w in self.bn_weights:
                prefix = w.rsplit(".", 1)[0]
                conv = bn_to_conv.get(prefix)
                candidates = [f"{prefix}.bias"] + ([conv, conv.rsplit(".", 1)[0] + ".bias"] if conv else [])
                self._extra[w] = [n for n in candidates if n in params]

    @property
    def param_names(self) -> List[str]:
        names = list(self.bn_weights)
        for w in self.bn_weights:
            names.extend(n for n in self._extra.get(w, []) if n not in names)
        return names

    def check(self, params) -> None:
        for w in self.bn_weights:
            if params[w].dim() != 1:
                raise ComponentArgError(f"weights.{w}", f"is not a batch-norm scale (shape "
                                        f"{tuple(params[w].shape)}); list BN weights, e.g. '*bn*.weight'")

    def masks(self, params, ctx: PruneContext) -> Dict[str, torch.Tensor]:
        target = agp_sparsity(self.initial, self.final, ctx.event, ctx.n_events)
        scores = []
        for w in self.bn_weights:
            g = params[w].detach().abs().float().clone()
            keep = min(self.min_channels, g.numel())
            g[torch.topk(g, keep).indices] = math.inf          # always kept
            scores.append(g)
        flat = torch.cat(scores)
        k = min(count_to_prune(target, flat.numel()), int(torch.isfinite(flat).sum()))
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k > 0:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        out: Dict[str, torch.Tensor] = {}
        for w, part in zip(self.bn_weights, torch.split(keep, [s.numel() for s in scores])):
            out[w] = part.clone()
            for other in self._extra.get(w, []):
                shape = params[other].shape
                out[other] = part.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
        return out
