"""CompressionScheduler: ordered policies, the six training-loop events, and their state.

The training loop calls, per epoch and minibatch::

    on_epoch_begin · on_minibatch_begin · forward · before_backward_pass · backward ·
    before_parameter_optimization · optimizer.step() · on_minibatch_end · ... · on_epoch_end

Signatures follow Distiller's so a ported loop changes its imports and little else; each call is
handed to the policies as one ``StepContext`` (``compressor.events``). Policies act in the order
they were added. After every optimizer step all masks are re-applied (one fused multiply),
which keeps pruned weights at exactly zero through momentum, weight decay and Adam.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping as MappingABC
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import CheckpointError
from .masks import MaskStore, normalize_name
from .events import PolicyLoss, ScheduledTrainingPolicy, StepContext


_EVENTS = ("on_epoch_begin", "on_minibatch_begin", "before_backward_pass",
           "before_parameter_optimization", "on_minibatch_end", "on_epoch_end")


def _handles(policy: ScheduledTrainingPolicy, event: str) -> bool:
    """Whether ``policy`` does anything on ``event``: its class or the instance overrides the base's
    no-op (adapted former-signature methods count as overrides)."""
    return event in vars(policy) or \
        getattr(type(policy), event) is not getattr(ScheduledTrainingPolicy, event)


class _MaskerView:
    """Distiller's ``zeros_mask_dict[name].mask`` access, backed by the mask store."""

    def __init__(self, store: MaskStore, name: str):
        self._store, self.param_name = store, name

    @property
    def mask(self) -> Optional[torch.Tensor]:
        return self._store.masks.get(self.param_name)

    @mask.setter
    def mask(self, value: Optional[torch.Tensor]) -> None:
        self._store.set(self.param_name, value, intersect=False)

    def apply_mask(self, param: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Mask ``param`` in place (Distiller's ``ParameterMasker.apply_mask``) and return it.

        Without ``param``, or given the model's own parameter, the stored parameter is masked.
        Any tensor of the parameter's shape may be passed: the mask is applied to that tensor.
        """
        mask = self.mask
        if param is None or param is self._store.params[self.param_name]:
            self._store.apply([self.param_name])
            return self._store.params[self.param_name] if param is None else param
        if mask is None:
            return param
        if tuple(param.shape) != tuple(mask.shape):
            raise ValueError(f"apply_mask: tensor of shape {tuple(param.shape)} does not fit the "
                             f"mask of {self.param_name!r}, shape {tuple(mask.shape)}")
        with torch.no_grad():
            param.mul_(mask.to(device=param.device, dtype=param.dtype))
        return param


class _MaskerDict(MappingABC):
    """``zeros_mask_dict``: a read-only mapping of parameter name -> masker view.

    Keys are the model's parameter names; lookups also accept DataParallel's ``module.``-prefixed
    spelling (as schedules do), so code written against a wrapped Distiller model keeps working.
    """

    def __init__(self, store: MaskStore):
        self._store = store
        self._by_norm = {normalize_name(n): n for n in store.params}

    def _resolve(self, name: str) -> str:
        if name in self._store.params:
            return name
        if isinstance(name, str) and normalize_name(name) in self._by_norm:
            return self._by_norm[normalize_name(name)]
        raise KeyError(name)

    def __getitem__(self, name: str) -> _MaskerView:
        return _MaskerView(self._store, self._resolve(name))

    def __contains__(self, name) -> bool:
        try:
            self._resolve(name)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.params)

    def __len__(self) -> int:
        return len(self._store.params)


def _norm_listener(model: nn.Module):
    from .thinning.norms import norm_listener   # thinning imports the graph package: lazily
    return norm_listener(model)


class CompressionScheduler:
    """Dispatches training-loop events to policies, in order, on the epochs they are scheduled."""

    def __init__(self, model: nn.Module, zeros_mask_dict=None, device=None):
        self.model = model
        self.store = MaskStore(model)
        # LayerNorms over channels are told which channels the masks made zero (thinning.norms)
        self.store.listeners.append(_norm_listener(model))
        self.policies: Dict[int, List[ScheduledTrainingPolicy]] = defaultdict(list)
        self.ordered: List[ScheduledTrainingPolicy] = []
        self.keys: List[str] = []
        self.sched_metadata: Dict[ScheduledTrainingPolicy, dict] = {}
        # event name -> epoch -> the policies of that epoch that override the event, in order: an
        # event no policy handles costs a dict lookup, not a context and a call per policy.
        self._handlers: Dict[str, Dict[int, List[ScheduledTrainingPolicy]]] = {
            event: defaultdict(list) for event in _EVENTS}
        self._ctx: Optional[StepContext] = None   # this minibatch's context, shared by its events

    # -- building ------------------------------------------------------------------------------
    def add_policy(self, policy: ScheduledTrainingPolicy, epochs: Optional[Sequence[int]] = None,
                   starting_epoch: Optional[int] = None, ending_epoch: Optional[int] = None,
                   frequency: int = 1, key: Optional[str] = None) -> None:
        """Schedule ``policy`` on ``epochs`` or on range(starting_epoch, ending_epoch, frequency)."""
        if epochs is None:
            if starting_epoch is None or ending_epoch is None:
                raise ValueError("add_policy needs epochs=[...] or starting_epoch and ending_epoch")
            if not 0 <= starting_epoch < ending_epoch or frequency < 1:
                raise ValueError(f"bad epoch range: starting_epoch={starting_epoch}, "
                                 f"ending_epoch={ending_epoch} (exclusive), frequency={frequency}")
            epochs = range(starting_epoch, ending_epoch, frequency)
        elif starting_epoch is not None or ending_epoch is not None:
            raise ValueError("add_policy takes epochs=[...] or a range, not both")
        policy.epochs = sorted(set(int(e) for e in epochs))
        if not policy.epochs:
            raise ValueError("a policy needs at least one epoch")
        # Distiller's record of when a policy acts; with an epochs list the range is
        # [first, last + 1) and frequency is None, as in Distiller (issue #176).
        if starting_epoch is not None:
            meta = {"starting_epoch": starting_epoch, "ending_epoch": ending_epoch,
                    "frequency": frequency}
        else:
            meta = {"starting_epoch": policy.epochs[0], "ending_epoch": policy.epochs[-1] + 1,
                    "frequency": None}
        self.sched_metadata[policy] = meta
        handled = [event for event in _EVENTS if _handles(policy, event)]
        for epoch in policy.epochs:
            self.policies[epoch].append(policy)
            for event in handled:
                self._handlers[event][epoch].append(policy)
        self.ordered.append(policy)
        self.keys.append(key or f"{len(self.ordered) - 1}:{type(policy).__name__}:{policy.name}")

    @property
    def zeros_mask_dict(self) -> Mapping[str, _MaskerView]:
        """Distiller's ``zeros_mask_dict``: name (with or without ``module.``) -> masker view."""
        return _MaskerDict(self.store)

    @property
    def masks(self) -> Dict[str, torch.Tensor]:
        return dict(self.store.masks)

    # -- events --------------------------------------------------------------------------------
    # Each event hands one StepContext, in order, to the policies of the epoch that handle that
    # event (the minibatch events share one per minibatch); when none does, it costs a dict lookup.
    def _minibatch_context(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                           optimizer) -> StepContext:
        """One context per minibatch, shared by its events (policies treat it as read-only): an
        allocation right after the backward pass costs more than the whole dispatch."""
        ctx = self._ctx
        if ctx is None or ctx.minibatch_id != minibatch_id or ctx.epoch != epoch or \
                ctx.minibatches_per_epoch != minibatches_per_epoch or ctx.optimizer is not optimizer:
            ctx = self._ctx = StepContext(epoch, minibatch_id, minibatches_per_epoch, self.store,
                                          self.model, optimizer)
        return ctx

    def on_epoch_begin(self, epoch: int, optimizer=None, **kwargs) -> None:
        policies = self._handlers["on_epoch_begin"].get(epoch)
        if policies:
            ctx = StepContext(epoch, None, None, self.store, self.model, optimizer)
            for policy in policies:
                policy.on_epoch_begin(ctx)

    def on_minibatch_begin(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                           optimizer=None) -> None:
        policies = self._handlers["on_minibatch_begin"].get(epoch)
        if policies:
            ctx = self._minibatch_context(epoch, minibatch_id, minibatches_per_epoch, optimizer)
            for policy in policies:
                policy.on_minibatch_begin(ctx)

    def before_backward_pass(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                             loss: torch.Tensor, optimizer=None, return_loss_components: bool = False):
        """The loss with every active regularizer's term added (the input tensor is not modified).

        With ``return_loss_components`` returns ``PolicyLoss(overall_loss, [LossComponent(name,
        value), ...])`` so the terms can be logged by name. Each policy sees, as ``ctx.loss``, the
        loss with the terms of the policies before it.
        """
        overall, components = loss, []
        policies = self._handlers["before_backward_pass"].get(epoch)
        if policies:
            ctx = self._minibatch_context(epoch, minibatch_id, minibatches_per_epoch,
                                          optimizer).with_loss(loss)
            for policy in policies:
                out = policy.before_backward_pass(ctx)
                if out is not None:
                    if not isinstance(out, PolicyLoss):
                        raise TypeError(f"{type(policy).__name__}.before_backward_pass must return "
                                        f"PolicyLoss or None; got {type(out).__name__}")
                    overall = out.overall_loss
                    components.extend(out.loss_components)
                    ctx = ctx.with_loss(overall)
        return PolicyLoss(overall, components) if return_loss_components else overall

    def before_parameter_optimization(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                                      optimizer=None) -> None:
        policies = self._handlers["before_parameter_optimization"].get(epoch)
        if policies:
            ctx = self._minibatch_context(epoch, minibatch_id, minibatches_per_epoch, optimizer)
            for policy in policies:
                policy.before_parameter_optimization(ctx)

    def on_minibatch_end(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                         optimizer=None) -> None:
        self.store.apply_after_step()
        policies = self._handlers["on_minibatch_end"].get(epoch)
        if policies:
            ctx = self._minibatch_context(epoch, minibatch_id, minibatches_per_epoch, optimizer)
            for policy in policies:
                policy.on_minibatch_end(ctx)

    def on_epoch_end(self, epoch: int, optimizer=None, metrics: Optional[Mapping] = None,
                     **kwargs) -> None:
        policies = self._handlers["on_epoch_end"].get(epoch)
        if policies:
            ctx = StepContext(epoch, None, None, self.store, self.model, optimizer, None, metrics)
            for policy in policies:
                policy.on_epoch_end(ctx)

    def mask_all_weights(self, is_forward: bool = True) -> None:
        """Apply every mask now (Distiller's name); forward-only masks too when ``is_forward``."""
        if is_forward:
            self.store.apply()
        else:
            self.store.apply_after_step()

    def masks_sparsity(self) -> Dict[str, float]:
        return {name: self.store.sparsity(name) for name in self.store.masks}

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Masks and every policy's state (pruner caches, LR schedulers), as plain data."""
        return {"masks_dict": self.store.state_dict(),
                "policies": {key: policy.state_dict() for key, policy in zip(self.keys, self.ordered)}}

    def load_state_dict(self, state: Mapping, normalize_dataparallel_keys: bool = False) -> None:
        """Restore masks and policy states; masks are applied to the weights at once.

        Policies are matched by their key (position, type and instance name); states of policies
        the current schedule does not have are ignored, so a schedule can be extended on resume.
        """
        if not isinstance(state, Mapping) or "masks_dict" not in state:
            raise CheckpointError("not a compression scheduler state (no 'masks_dict')")
        masks = state["masks_dict"]
        if isinstance(masks, Mapping) and "masks" not in masks:   # Distiller: {name: mask|None}
            masks = {"masks": {k: v for k, v in masks.items() if v is not None}}
        self.store.load_state_dict(masks)
        saved = state.get("policies", {})
        for key, policy in zip(self.keys, self.ordered):
            if key in saved:
                policy.load_state_dict(saved[key])
        for policy in self.ordered:   # re-install forward-only switches, gradient hooks, gates
            attach = getattr(policy, "attach", None)   # a duck-typed policy may not have it
            if attach is not None:
                attach(self.store, self.model)
        self.store.apply_after_step()

    def init_from_masks_dict(self, masks: Mapping[str, Optional[torch.Tensor]]) -> None:
        for name, mask in masks.items():
            if mask is not None:
                self.store.set(name, mask, intersect=False)
        self.store.apply()
