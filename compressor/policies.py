"""When and where components act: pruning, regularization and learning-rate policies.

A policy wraps one component and receives the scheduler's events for the epochs it is scheduled on.
Policies hold no training-loop state of their own beyond what ``state_dict`` returns, so a resumed
run continues exactly.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Union

import torch

from .events import LossComponent, PolicyLoss, ScheduledTrainingPolicy, StepContext
from .graph import conv_bn_pairs
from .lr_schedulers import load_scheduler_state
from .masks import MaskStore
from .policy_options import PolicyOptions
from .pruners.base import PruneContext, Pruner
from .pruners.coupling import dependents
from .regularizers.base import Regularizer

__all__ = ["GatePolicy", "LRPolicy", "LossComponent", "PolicyLoss", "PruningPolicy",
           "RegularizationPolicy", "ScheduledTrainingPolicy", "StepContext",
           "filter_companion_masks"]


class PruningPolicy(ScheduledTrainingPolicy):
    """Runs a pruner at its epochs, with Distiller's pruning-policy args (see docs/schedule.md).

    ``options`` is a ``PolicyOptions`` or a plain mapping of the same names (validated here:
    ``ValueError`` naming the key for a bad one).
    """

    def __init__(self, pruner: Pruner, pruner_args: Union[PolicyOptions, Mapping, None] = None):
        super().__init__()
        self.pruner = pruner
        self.name = pruner.name
        self.options = (pruner_args if isinstance(pruner_args, PolicyOptions)
                        else PolicyOptions.from_args(pruner_args or {}))
        # forward_only and double_copies change at the end (keep_mask) and are saved in the state
        self.forward_only = self.options.mask_on_forward_only
        self.double_copies = self.options.use_double_copies
        self.mb_frequency = self.options.mini_batch_pruning_frequency
        self._attached = False
        self._copies: Dict[str, torch.Tensor] = {}
        self._fold = None   # conv weight name -> (bn module) when fold_batchnorm

    @property
    def args(self) -> Dict[str, object]:
        """The options as a plain dict (the former attribute; read ``options`` instead)."""
        return self.options.as_args()

    def attach(self, store: MaskStore, model) -> None:
        """Forward-only switches, gradient hooks and batch-norm pairs for the pruner's parameters.

        Runs once (the policy's first epoch, or after the scheduler loads a state); see
        ``run_owed_step`` for the one time it runs again.
        """
        if self._attached:
            return
        self._attached = True
        bind = getattr(self.pruner, "bind", None)   # a directly built pruner's '*' default
        if bind is not None:
            bind(store.params)
        for name in self.pruner.param_names:
            if self.forward_only:
                store.set_forward_only(name, True)
            if self.options.mask_gradients:
                store.mask_gradients(name, True)
        if self.options.fold_batchnorm:
            self._fold = conv_bn_pairs(model)

    def run_owed_step(self, store: MaskStore, model) -> bool:
        """Run the pruning step the pruner put off for want of an example input, if it owes one.

        A structured pruner whose filters couple across layers needs the input's shape; when it
        first fires before any batch, it records ``owed_epoch`` and prunes nothing. Once the input
        is known (the builder's first-input hook), this resolves the coupling, attaches the
        coupled weights it added, and prunes for that epoch. Returns whether a step ran.
        """
        epoch = getattr(self.pruner, "owed_epoch", None)
        if epoch is None:
            return False
        self.pruner.resolve_coupling()
        self._attached = False   # its parameter list grew by the coupled weights
        self.attach(store, model)
        self.prune(StepContext(epoch, None, None, store, model))
        return True

    def _params(self, store: MaskStore) -> Dict[str, torch.Tensor]:
        params = {n: store.params[n] for n in self.pruner.param_names}
        if self._fold:
            params = dict(params)
            for name, bn in self._fold.items():
                if name in params:
                    w = params[name].detach()
                    scale = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)) \
                        if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
                    params[name] = w * scale.view(-1, *([1] * (w.dim() - 1)))
        return params

    def prune(self, ctx: StepContext) -> None:
        """Compute this policy's masks for ``ctx.epoch`` (and minibatch) and install them."""
        store = ctx.store
        pctx = PruneContext(epoch=ctx.epoch, event=self.event_index(ctx.epoch),
                            n_events=len(self.epochs), minibatch_id=ctx.minibatch_id,
                            minibatches_per_epoch=ctx.minibatches_per_epoch, model=ctx.model,
                            options=self.options, starting_epoch=self.epochs[0],
                            current={n: store.masks[n] for n in self.pruner.param_names
                                     if n in store.masks})
        regrow = self.pruner.can_regrow or self.forward_only or self.double_copies
        masks = self.pruner.masks(self._params(store), pctx)
        for name, mask in masks.items():   # may include coupled biases / batch-norm parameters
            store.set(name, mask, intersect=not regrow)
        if not self.forward_only:
            store.apply(list(masks))

    def on_epoch_begin(self, ctx: StepContext) -> None:
        self.attach(ctx.store, ctx.model)
        self.prune(ctx)

    def on_minibatch_begin(self, ctx: StepContext) -> None:
        store = ctx.store
        if self.mb_frequency:
            step = ctx.epoch * ctx.minibatches_per_epoch + ctx.minibatch_id
            skip = self.options.skip_first_minibatch and ctx.minibatch_id == 0
            if step % self.mb_frequency == 0 and not skip:
                self.prune(ctx)
        if self.forward_only or self.double_copies:
            names = [n for n in self.pruner.param_names if n in store.masks]
            if self.double_copies:
                self._copies = {n: store.params[n].detach().clone() for n in names}
            store.apply(names)

    def before_parameter_optimization(self, ctx: StepContext) -> None:
        if self._copies:
            with torch.no_grad():
                for name, copy in self._copies.items():
                    ctx.store.params[name].copy_(copy)
            self._copies = {}

    def on_minibatch_end(self, ctx: StepContext) -> None:
        if self.options.discard_masks_at_minibatch_end:
            for name in self.pruner.param_names:
                ctx.store.remove(name)

    def on_epoch_end(self, ctx: StepContext) -> None:
        if ctx.epoch != self.epochs[-1]:
            return
        store = ctx.store
        for name in self.pruner.param_names:    # gradient masking ends with the policy
            store.mask_gradients(name, False)
        if self.options.keep_mask:
            for name in self.pruner.param_names:
                store.set_forward_only(name, False)
            self.forward_only = self.double_copies = False
            store.apply(self.pruner.param_names)

    def state_dict(self):
        return {"pruner": self.pruner.state_dict(), "forward_only": self.forward_only,
                "double_copies": self.double_copies}

    def load_state_dict(self, state):
        self.pruner.load_state_dict(state.get("pruner", {}))
        self.forward_only = bool(state.get("forward_only", self.forward_only))
        self.double_copies = bool(state.get("double_copies", self.double_copies))


class RegularizationPolicy(ScheduledTrainingPolicy):
    """Adds a regularizer's penalty to the loss; optionally zeroes groups under its threshold."""

    def __init__(self, regularizer: Regularizer, keep_mask: bool = False):
        super().__init__()
        self.regularizer = regularizer
        self.name = regularizer.name
        self.keep_mask = keep_mask
        self.loss_name = f"{regularizer.name}_loss"

    def before_backward_pass(self, ctx: StepContext) -> PolicyLoss:
        params = {n: ctx.store.params[n] for n in self.regularizer.param_names}
        term = self.regularizer.loss(params)
        return PolicyLoss(ctx.loss + term, [LossComponent(self.loss_name, term)])

    def on_minibatch_end(self, ctx: StepContext) -> None:
        if self.regularizer.threshold_criteria is None:
            return
        store = ctx.store
        params = {n: store.params[n] for n in self.regularizer.param_names}
        masks = self.regularizer.threshold_masks(params)
        last = ctx.epoch == self.epochs[-1] and ctx.minibatch_id == ctx.minibatches_per_epoch - 1
        with torch.no_grad():
            for name, mask in masks.items():
                if self.keep_mask and last:
                    store.set(name, mask)          # becomes a permanent pruning mask
                else:
                    params[name].mul_(mask.to(params[name].dtype))   # one-shot zeroing
        if self.keep_mask and last:
            companions = filter_companion_masks(ctx.model, masks)
            for name, mask in companions.items():
                store.set(name, mask)
            store.apply(list(masks) + list(companions))

    def state_dict(self):
        return {"regularizer": self.regularizer.state_dict()}

    def load_state_dict(self, state):
        self.regularizer.load_state_dict(state.get("regularizer", {}))


def filter_companion_masks(model, masks: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Masks for the bias and batch norm of every filter (output unit) that ``masks`` zero entirely.

    A filter with zero weights still outputs its bias (or its batch norm's beta); masking those too
    makes the zeroed filter output exactly zero, so thinning it away leaves the function unchanged.
    """
    layers = {n: m for n, m in masks.items() if m.dim() >= 2}
    out: Dict[str, torch.Tensor] = {}
    for name, deps in dependents(model, list(layers)).items():
        keep = layers[name].flatten(1).any(dim=1)
        if not keep.all():
            for dep in deps:
                out[dep] = keep.clone()
    return out


class LRPolicy(ScheduledTrainingPolicy):
    """Steps a learning-rate scheduler at the end of each of its epochs (one step per firing).

    ``ReduceLROnPlateau`` gets ``metrics[mode]`` from ``on_epoch_end(..., metrics={'min': val_loss,
    'max': top1})``, as in Distiller.
    """

    def __init__(self, lr_scheduler, name: str = "lr_scheduler"):
        super().__init__()
        self.lr_scheduler = lr_scheduler
        self.name = name

    def on_epoch_end(self, ctx: StepContext) -> None:
        sched, metrics = self.lr_scheduler, ctx.metrics
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if not metrics or sched.mode not in metrics:
                raise ValueError(f"{self.name}: ReduceLROnPlateau needs on_epoch_end(..., metrics="
                                 f"{{'{sched.mode}': value}}) with the validation result")
            sched.step(metrics[sched.mode])
        else:
            sched.step()

    def state_dict(self):
        return {"lr_scheduler": self.lr_scheduler.state_dict()}

    def load_state_dict(self, state):
        if "lr_scheduler" in state:
            load_scheduler_state(self.lr_scheduler, state["lr_scheduler"])


class GatePolicy(ScheduledTrainingPolicy):
    """Trains an ``AutoPruner``'s gates over the policy's epochs, then turns them into filter masks.

    First epoch: the gates are hooked onto the model. Every minibatch: ``alpha`` follows the
    policy's progress, the gates' loss term is added, and the gates take an SGD step after the
    model's. End of the last epoch: the gates are folded in and removed, and the filter masks are
    installed (so thinning can follow). The policy should fire on every epoch of its range.
    """

    def __init__(self, pruner, pruner_args: Optional[Mapping] = None):
        super().__init__()
        if pruner_args:
            raise ValueError(f"the AutoPruner policy takes no args (got {', '.join(pruner_args)})")
        self.pruner = pruner
        self.name = pruner.name
        self.loss_name = f"{pruner.name}_loss"

    def attach(self, store: MaskStore, model) -> None:
        """Re-hook saved gates after a resume (the scheduler calls this after load_state_dict)."""
        self.pruner.restore_gates(model)

    def on_epoch_begin(self, ctx: StepContext) -> None:
        self.pruner.install(ctx.model)
        self.pruner.reset_epoch_means()

    def on_minibatch_begin(self, ctx: StepContext) -> None:
        if self.pruner.total_steps is None:
            self.pruner.total_steps = len(self.epochs) * ctx.minibatches_per_epoch

    def before_backward_pass(self, ctx: StepContext) -> Optional[PolicyLoss]:
        if self.pruner.finished:
            return None
        term = self.pruner.loss(ctx.loss)
        return PolicyLoss(ctx.loss + term, [LossComponent(self.loss_name, term)])

    def on_minibatch_end(self, ctx: StepContext) -> None:
        self.pruner.step_gates()

    def on_epoch_end(self, ctx: StepContext) -> None:
        if ctx.epoch != self.epochs[-1] or self.pruner.finished:
            return
        masks = self.pruner.finalize(ctx.model)
        for name, mask in masks.items():
            ctx.store.set(name, mask)
        ctx.store.apply(list(masks))

    def state_dict(self):
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state):
        self.pruner.load_state_dict(state.get("pruner", {}))
