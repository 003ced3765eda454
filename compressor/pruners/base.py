"""What every pruner is: an object that turns weights (and their current masks) into new masks.

A pruner never touches the model; the pruning policy gives it the parameters it asked for and
installs the masks it returns. Names are resolved by the builder before construction, so a pruner
only sees the model's real parameter names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..policy_options import DEFAULT_OPTIONS, PolicyOptions


@dataclass(init=False)
class PruneContext:
    """When a pruning step happens: the epoch, which of the policy's pruning events it is, and the
    policy's options (``options.levels``, ``options.use_double_copies``, ...)."""
    epoch: int
    event: int = 0                   # 0 for the policy's first firing epoch
    n_events: int = 1                # how many firing epochs the policy has
    minibatch_id: Optional[int] = None
    minibatches_per_epoch: Optional[int] = None
    model: Any = None                # for pruners that need activations or the graph
    current: Mapping[str, torch.Tensor] = field(default_factory=dict)  # masks now in force
    starting_epoch: int = 0          # the policy's first firing epoch
    options: PolicyOptions = DEFAULT_OPTIONS

    def __init__(self, epoch: int, event: int = 0, n_events: int = 1,
                 minibatch_id: Optional[int] = None, minibatches_per_epoch: Optional[int] = None,
                 model: Any = None, args: Optional[Mapping[str, Any]] = None,
                 current: Optional[Mapping[str, torch.Tensor]] = None, starting_epoch: int = 0,
                 options: Optional[PolicyOptions] = None):
        self.epoch, self.event, self.n_events = epoch, event, n_events
        self.minibatch_id, self.minibatches_per_epoch = minibatch_id, minibatches_per_epoch
        self.model = model
        self.current = {} if current is None else current
        self.starting_epoch = starting_epoch
        if options is not None and args:
            raise TypeError("PruneContext takes options or args (a mapping of the same), not both")
        # ``args``: the policy options as a plain mapping, as before they were typed (validated)
        self.options = options if options is not None else (
            PolicyOptions.from_args(args) if args else DEFAULT_OPTIONS)

    @property
    def args(self) -> Dict[str, Any]:
        """The options as a plain dict (the former field; read ``options`` instead)."""
        return self.options.as_args()


class Pruner:
    """Base class: subclasses implement ``masks`` (or ``tensor_mask`` for one tensor at a time)."""

    #: True when the pruner may give back weights it pruned (splicing); otherwise the policy
    #: intersects new masks with the old ones so masks only ever add zeros.
    can_regrow = False

    def __init__(self, name: str):
        self.name = name

    @property
    def param_names(self) -> List[str]:
        """The parameters this pruner acts on."""
        raise NotImplementedError

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ComponentArgError`` when the pruner cannot act on these parameters."""

    def masks(self, params: Mapping[str, torch.Tensor], ctx: PruneContext) -> Dict[str, torch.Tensor]:
        """New masks (bool, True = keep) for some of ``params``; names missing are left alone."""
        out = {}
        for name in self.param_names:
            mask = self.tensor_mask(name, params[name].detach(), ctx)
            if mask is not None:
                out[name] = mask
        return out

    def tensor_mask(self, name: str, weight: torch.Tensor, ctx: PruneContext) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


def count_to_prune(fraction: float, n: int) -> int:
    """floor(fraction * n), immune to float noise (0.7 + (0.1 - 0.7) is 0.0999..., not 0.1)."""
    return int(math.floor(fraction * n + 1e-6))


def level_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``floor(sparsity * numel)`` smallest-magnitude elements.

    Exactly that many are pruned, ties broken by position (Distiller's threshold version over-prunes
    on ties). Already-zero weights are the smallest, so they stay pruned.
    """
    flat = weight.abs().flatten()
    k = count_to_prune(sparsity, flat.numel())
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=weight.device)
    if k > 0:
        mask[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return mask.view_as(weight)


def threshold_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep elements with ``|w| > threshold``."""
    return weight.abs() > threshold
