"""The event protocol between the scheduler and its policies: ``StepContext`` and the policy base.

The scheduler keeps Distiller's six public methods (``on_epoch_begin(epoch, optimizer)``, ...), and
hands every policy one ``StepContext`` per event: ``policy.on_minibatch_end(ctx)``. A policy reads
what it needs from the context (epoch, minibatch position, mask store, model, optimizer, the loss
so far, the validation metrics) and never receives a different argument list per event. Policies
that add to the loss (regularizers, gates, knowledge distillation) return a ``PolicyLoss`` from
``before_backward_pass``. Custom policies written for the former positional signatures still run:
subclassing adapts them, with a ``DeprecationWarning`` naming the method.
"""
from __future__ import annotations

import inspect
import warnings
from collections import namedtuple
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

PolicyLoss = namedtuple("PolicyLoss", ["overall_loss", "loss_components"])
LossComponent = namedtuple("LossComponent", ["name", "value"])


class StepContext:
    """Where the training loop is, and what a policy may act on, for one event.

    ``minibatch_id`` and ``minibatches_per_epoch`` are None in the epoch events; ``loss`` is set
    only in ``before_backward_pass`` (the loss with the terms of the policies before this one);
    ``metrics`` only in ``on_epoch_end`` (what the loop passed, e.g. ``{'min': val_loss}``).
    Policies treat it as read-only; ``with_loss`` gives a copy with another loss.
    """

    # Slots and a plain __init__: one is built per scheduler event, on the training hot path.
    __slots__ = ("epoch", "minibatch_id", "minibatches_per_epoch", "store", "model", "optimizer",
                 "loss", "metrics")

    def __init__(self, epoch: int, minibatch_id: Optional[int], minibatches_per_epoch: Optional[int],
                 store: Any, model: Any, optimizer: Any = None, loss: Any = None,
                 metrics: Optional[Mapping] = None):
        self.epoch = epoch
        self.minibatch_id = minibatch_id
        self.minibatches_per_epoch = minibatches_per_epoch
        self.store = store            # the scheduler's MaskStore
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = metrics

    def with_loss(self, loss: Any) -> "StepContext":
        return StepContext(self.epoch, self.minibatch_id, self.minibatches_per_epoch, self.store,
                           self.model, self.optimizer, loss, self.metrics)

    def __repr__(self) -> str:
        return (f"StepContext(epoch={self.epoch}, minibatch_id={self.minibatch_id}, "
                f"minibatches_per_epoch={self.minibatches_per_epoch})")


class ScheduledTrainingPolicy:
    """Base class: every event is a no-op. ``epochs`` is set when the policy is added.

    Subclasses override any of the six events, each taking one ``StepContext``, and ``attach``
    when they install something on the model or the mask store that a resumed run must get back.
    """

    name = "policy"

    def __init__(self):
        self.epochs: List[int] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for event, old_args in _LEGACY_ARGS.items():
            method = cls.__dict__.get(event)
            if inspect.isfunction(method) and _is_legacy(method):
                warnings.warn(f"{cls.__qualname__}.{event} takes the former positional event "
                              f"arguments; take one StepContext instead: "
                              f"def {event}(self, ctx) (see docs/own-training-loop.md)",
                              DeprecationWarning, stacklevel=2)
                setattr(cls, event, _adapt(method, old_args))

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

    def attach(self, store, model) -> None:
        """Install what this policy keeps on the mask store or the model (forward-only switches,
        gradient hooks, gates). Idempotent; the scheduler calls it after ``load_state_dict``, so
        a resumed run has them again before its first event."""

    def on_epoch_begin(self, ctx: StepContext) -> None:
        pass

    def on_minibatch_begin(self, ctx: StepContext) -> None:
        pass

    def before_backward_pass(self, ctx: StepContext) -> Optional[PolicyLoss]:
        """``PolicyLoss(ctx.loss + term, [LossComponent(name, term)])`` to add a term, or None."""
        return None

    def before_parameter_optimization(self, ctx: StepContext) -> None:
        pass

    def on_minibatch_end(self, ctx: StepContext) -> None:
        pass

    def on_epoch_end(self, ctx: StepContext) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


# The former positional arguments of each event, built from a context (for adapted policies).
_LEGACY_ARGS: Dict[str, Callable[[StepContext], Tuple]] = {
    "on_epoch_begin": lambda c: (c.epoch, c.store, c.model, c.optimizer),
    "on_minibatch_begin": lambda c: (c.epoch, c.minibatch_id, c.minibatches_per_epoch, c.store,
                                     c.model, c.optimizer),
    "before_backward_pass": lambda c: (c.epoch, c.minibatch_id, c.minibatches_per_epoch, c.loss,
                                       c.store, c.model, c.optimizer),
    "before_parameter_optimization": lambda c: (c.epoch, c.minibatch_id, c.minibatches_per_epoch,
                                                c.store, c.model, c.optimizer),
    "on_minibatch_end": lambda c: (c.epoch, c.minibatch_id, c.minibatches_per_epoch, c.store,
                                   c.model, c.optimizer),
    "on_epoch_end": lambda c: (c.epoch, c.store, c.model, c.optimizer, c.metrics),
}


def _is_legacy(method: Callable) -> bool:
    """True for the former signatures: they start with ``epoch`` and take 3 to 7 positionals.

    A new-style event takes one context after ``self``; the former ones took at least three.
    """
    params = [p for p in inspect.signature(method).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    return bool(params) and (params[0].name == "epoch" or len(params) >= 3)


def _adapt(method: Callable, old_args: Callable[[StepContext], Tuple]) -> Callable:
    """``method`` callable with a StepContext (the scheduler) and with its own arguments (a
    caller of the former API, e.g. a former-style subclass's ``super()`` call). A former-style
    ``super()`` call into a built-in policy's ``(self, ctx)`` method is not adapted (it would put a
    wrapper on every built-in event); docs/own-training-loop.md says so."""
    def adapted(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], StepContext):
            return method(self, *old_args(args[0]))
        return method(self, *args, **kwargs)

    adapted.__name__, adapted.__qualname__ = method.__name__, method.__qualname__
    adapted.__doc__, adapted.__wrapped__ = method.__doc__, method
    return adapted
