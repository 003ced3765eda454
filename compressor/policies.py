"""When and where components act: pruning, regularization and learning-rate policies.

A policy wraps one component and receives the scheduler's events for the epochs it is scheduled on.
Policies hold no training-loop state of their own beyond what ``state_dict`` returns, so a resumed
run continues exactly.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Dict, List, Mapping, Optional

import torch

from .masks import MaskStore
from .pruners.base import PruneContext, Pruner
from .regularizers.base import Regularizer

PolicyLoss = namedtuple("PolicyLoss", ["overall_loss", "loss_components"])
LossComponent = namedtuple("LossComponent", ["name", "value"])


class ScheduledTrainingPolicy:
    """Base class: every event is a no-op. ``epochs`` is set when the policy is added."""

    name = "policy"

    def __init__(self):
        self.epochs: List[int] = []

    @property
    def ending_epoch(self) -> int:
        return self.epochs[-1] + 1 if self.epochs else 0

    def event_index(self, epoch: int) -> int:
        """Which of this policy's firing epochs ``epoch`` is (the last one at or before it)."""
        idx = 0
        for i, e in enumerate(self.epochs):
            if e <= epoch:
                idx = i
        return idx

    def on_epoch_begin(self, epoch, store: MaskStore, model, optimizer=None):
        pass

    def on_minibatch_begin(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        pass

    def before_backward_pass(self, epoch, minibatch_id, minibatches_per_epoch, loss, store, model,
                             optimizer=None) -> Optional[PolicyLoss]:
        return None

    def before_parameter_optimization(self, epoch, minibatch_id, minibatches_per_epoch, store,
                                      model, optimizer=None):
        pass

    def on_minibatch_end(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        pass

    def on_epoch_end(self, epoch, store, model, optimizer=None, metrics=None):
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


class PruningPolicy(ScheduledTrainingPolicy):
    """Runs a pruner at its epochs, with Distiller's pruning-policy args (see docs/schedule.md)."""

    def __init__(self, pruner: Pruner, pruner_args: Optional[Mapping] = None):
        super().__init__()
        self.pruner = pruner
        self.name = pruner.name
        self.args = dict(pruner_args or {})
        self.forward_only = bool(self.args.get("mask_on_forward_only"))
        self.double_copies = bool(self.args.get("use_double_copies"))
        self.mb_frequency = int(self.args.get("mini_batch_pruning_frequency") or 0)
        self._configured = False
        self._copies: Dict[str, torch.Tensor] = {}
        self._fold = None   # conv weight name -> (bn module) when fold_batchnorm

    def _configure(self, store: MaskStore, model):
        if self._configured:
            return
        self._configured = True
        bind = getattr(self.pruner, "bind", None)   # a directly built pruner's '*' default
        if bind is not None:
            bind(store.params)
        for name in self.pruner.param_names:
            if self.forward_only:
                store.set_forward_only(name, True)
            if self.args.get("mask_gradients"):
                store.mask_gradients(name, True)
        if self.args.get("fold_batchnorm"):
            from .graph import conv_bn_pairs
            self._fold = conv_bn_pairs(model)

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

    def prune(self, epoch, store: MaskStore, model, minibatch_id=None, minibatches_per_epoch=None):
        """Compute this policy's masks for ``epoch`` and install them."""
        ctx = PruneContext(epoch=epoch, event=self.event_index(epoch), n_events=len(self.epochs),
                           minibatch_id=minibatch_id, minibatches_per_epoch=minibatches_per_epoch,
                           model=model, args=self.args, starting_epoch=self.epochs[0],
                           current={n: store.masks[n] for n in self.pruner.param_names
                                    if n in store.masks})
        regrow = self.pruner.can_regrow or self.forward_only or self.double_copies
        masks = self.pruner.masks(self._params(store), ctx)
        for name, mask in masks.items():   # may include coupled biases / batch-norm parameters
            store.set(name, mask, intersect=not regrow)
        if not self.forward_only:
            store.apply(list(masks))

    def on_epoch_begin(self, epoch, store, model, optimizer=None):
        self._configure(store, model)
        self.prune(epoch, store, model)

    def on_minibatch_begin(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        if self.mb_frequency:
            step = epoch * minibatches_per_epoch + minibatch_id
            skip = self.args.get("skip_first_minibatch") and minibatch_id == 0
            if step % self.mb_frequency == 0 and not skip:
                self.prune(epoch, store, model, minibatch_id, minibatches_per_epoch)
        if self.forward_only or self.double_copies:
            names = [n for n in self.pruner.param_names if n in store.masks]
            if self.double_copies:
                self._copies = {n: store.params[n].detach().clone() for n in names}
            store.apply(names)

    def before_parameter_optimization(self, epoch, minibatch_id, minibatches_per_epoch, store, model,
                                      optimizer=None):
        if self._copies:
            with torch.no_grad():
                for name, copy in self._copies.items():
                    store.params[name].copy_(copy)
            self._copies = {}

    def on_minibatch_end(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        if self.args.get("discard_masks_at_minibatch_end"):
            for name in self.pruner.param_names:
                store.remove(name)

    def on_epoch_end(self, epoch, store, model, optimizer=None, metrics=None):
        if epoch != self.epochs[-1]:
            return
        for name in self.pruner.param_names:    # gradient masking ends with the policy
            store.mask_gradients(name, False)
        if self.args.get("keep_mask"):
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

    def before_backward_pass(self, epoch, minibatch_id, minibatches_per_epoch, loss, store, model,
                             optimizer=None):
        params = {n: store.params[n] for n in self.regularizer.param_names}
        term = self.regularizer.loss(params)
        return PolicyLoss(loss + term, [LossComponent(self.loss_name, term)])

    def on_minibatch_end(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        if self.regularizer.threshold_criteria is None:
            return
        params = {n: store.params[n] for n in self.regularizer.param_names}
        masks = self.regularizer.threshold_masks(params)
        last = epoch == self.epochs[-1] and minibatch_id == minibatches_per_epoch - 1
        with torch.no_grad():
            for name, mask in masks.items():
                if self.keep_mask and last:
                    store.set(name, mask)          # becomes a permanent pruning mask
                else:
                    params[name].mul_(mask.to(params[name].dtype))   # one-shot zeroing
        if self.keep_mask and last:
            companions = filter_companion_masks(model, masks)
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
    from .pruners.coupling import dependents
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

    def on_epoch_end(self, epoch, store, model, optimizer=None, metrics=None):
        sched = self.lr_scheduler
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
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            opt = getattr(self.lr_scheduler, "optimizer", None)
            last = getattr(self.lr_scheduler, "_last_lr", None)
            if opt is not None and last is not None:   # the lr the schedule had reached
                for group, lr in zip(opt.param_groups, last):
                    group["lr"] = lr


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

    def _configure(self, store: MaskStore, model):
        """Re-hook saved gates after a resume (the scheduler calls this after load_state_dict)."""
        self.pruner.restore_gates(model)

    def on_epoch_begin(self, epoch, store, model, optimizer=None):
        self.pruner.install(model)
        self.pruner.reset_epoch_means()

    def on_minibatch_begin(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        if self.pruner.total_steps is None:
            self.pruner.total_steps = len(self.epochs) * minibatches_per_epoch

    def before_backward_pass(self, epoch, minibatch_id, minibatches_per_epoch, loss, store, model,
                             optimizer=None):
        if self.pruner.finished:
            return None
        term = self.pruner.loss(loss)
        return PolicyLoss(loss + term, [LossComponent(self.loss_name, term)])

    def on_minibatch_end(self, epoch, minibatch_id, minibatches_per_epoch, store, model, optimizer=None):
        self.pruner.step_gates()

    def on_epoch_end(self, epoch, store, model, optimizer=None, metrics=None):
        if epoch != self.epochs[-1] or self.pruner.finished:
            return
        masks = self.pruner.finalize(model)
        for name, mask in masks.items():
            store.set(name, mask)
        store.apply(list(masks))

    def state_dict(self):
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state):
        self.pruner.load_state_dict(state.get("pruner", {}))
