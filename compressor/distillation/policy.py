"""``KnowledgeDistillationPolicy``: a teacher's soft targets as a scheduled loss term.

Distiller's semantics (``KnowledgeDistillationPolicy(student, teacher, temperature,
loss_weights)``): on its epochs, the loss the student trains on becomes ``w_s * loss + w_d * T^2 *
KL(softmax(t/T) || softmax(s/T))`` (batch mean), where ``loss`` is the loss as it reaches this
policy (rescaled, not recomputed); the unscaled KL is reported as the loss component
``Distill Loss``. Unlike Distiller, the training loop needs no ``policy.forward``: a forward hook on
the student records each training batch's input and logits between ``on_minibatch_begin`` and
``before_backward_pass``, and the policy runs the frozen teacher on that input under ``no_grad``.
A user's loop that calls the six events (docs/own-training-loop.md) works as it is.

Registered as the YAML extension ``KnowledgeDistillationPolicy`` (alias ``KnowledgeDistillation``)::

    extensions:
      kd:
        class: KnowledgeDistillationPolicy
        teacher: lenet5                          # a zoo architecture, and/or
        teacher_checkpoint: dense/checkpoint.pth.tar
        temperature: 4.0
        distill_weight: 0.7
        student_weight: 0.3
    policies:
      - extension: {instance_name: kd}
        starting_epoch: 0
        ending_epoch: 14
        frequency: 1

Optionally ``features: {student_layer: teacher_layer}`` adds ``feature_weight * MSE(P(s), t)`` per
pair (``Feature Loss``), with ``P`` a learned 1x1 projection when the widths differ (see
``features.py``).
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ComponentArgError
from ..events import LossComponent, PolicyLoss, ScheduledTrainingPolicy, StepContext
from ..graph.example_input import example_input_of
from ..masks import unwrap
from ..registry import EXTENSIONS
from .features import FeatureDistillation
from .loss import combine, distillation_kl
from .teacher import DistillationError, check_classes, freeze, load_teacher

# Distiller's name and field order: DistillationLossWeights(distill, student, teacher).
DistillationLossWeights = namedtuple("DistillationLossWeights", ["distill", "student", "teacher"])
DistillationLossWeights.__new__.__defaults__ = (0.5, 0.5, 0.0)

DISTILL_LOSS = "Distill Loss"   # Distiller's log name for the unscaled KL


def _number(key: str, value: Any, *, positive: bool = False) -> float:
    """A finite float >= 0 (> 0 with ``positive``), or ``ComponentArgError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        rule = "a finite number > 0" if positive else "a finite number >= 0"
        raise ComponentArgError(key, f"must be {rule}; got {value!r}")
    return float(value)


def _weights(loss_weights, distill_weight, student_weight, teacher_weight) -> DistillationLossWeights:
    """Distiller's ``loss_weights`` (tuple or mapping) or the flat keys, checked."""
    base = DistillationLossWeights()
    if loss_weights is not None:
        if isinstance(loss_weights, Mapping):
            unknown = [k for k in loss_weights if k not in DistillationLossWeights._fields]
            if unknown:
                raise ComponentArgError(f"loss_weights.{unknown[0]}", "unknown weight; valid: "
                                        "distill, student, teacher")
            base = base._replace(**dict(loss_weights))
        elif isinstance(loss_weights, (tuple, list)) and len(loss_weights) == 3:
            base = DistillationLossWeights(*loss_weights)
        else:
            raise ComponentArgError("loss_weights", f"must be DistillationLossWeights(distill, "
                                    f"student, teacher) or a mapping of them; got {loss_weights!r}")
    given = {"distill": distill_weight, "student": student_weight, "teacher": teacher_weight}
    base = base._replace(**{k: v for k, v in given.items() if v is not None})
    w = DistillationLossWeights(*(_number(f"{k}_weight", getattr(base, k))
                                  for k in DistillationLossWeights._fields))
    if w.teacher != 0:
        raise ComponentArgError("teacher_weight", f"must be 0: training the teacher is not "
                                f"implemented (as in Distiller); got {w.teacher}")
    if w.distill == 0 and w.student == 0:
        raise ComponentArgError("distill_weight", "distill_weight and student_weight are both 0: "
                                "nothing would be trained")
    return w


@EXTENSIONS.register(name="KnowledgeDistillationPolicy", aliases=("KnowledgeDistillation",))
class KnowledgeDistillationPolicy(ScheduledTrainingPolicy):
    """Distill a frozen teacher into the model the scheduler trains; see the module docstring.

    ``teacher``: an ``nn.Module`` (library API) or a zoo architecture name; ``teacher_checkpoint``:
    a checkpoint of this project (its ``arch`` is used when ``teacher`` is not given; thinning
    recipes are replayed). ``loss_weights`` (Distiller's) or ``distill_weight`` /
    ``student_weight`` / ``teacher_weight`` (must be 0). ``input_shape`` or ``dataset`` (else the
    model's example input) lets the teacher's classes be checked when the policy is built; it is
    checked at the first batch in any case.
    """

    def __init__(self, model: Optional[nn.Module] = None, teacher: Any = None,
                 temperature: float = 1.0, loss_weights: Any = None, *,
                 distill_weight: Optional[float] = None, student_weight: Optional[float] = None,
                 teacher_weight: Optional[float] = None, teacher_checkpoint: Optional[str] = None,
                 teacher_pretrained: bool = False, teacher_dataset: Optional[str] = None,
                 features: Optional[Mapping[str, str]] = None, feature_weight: float = 1.0,
                 feature_lr: Optional[float] = None, feature_momentum: float = 0.9,
                 input_shape: Optional[Sequence[int]] = None, dataset: Optional[str] = None,
                 name: str = "knowledge_distillation"):
        super().__init__()
        if model is None:
            raise ComponentArgError("model", "the student model is needed")
        self.name = name
        self.temperature = _number("temperature", temperature, positive=True)
        self.loss_weights = _weights(loss_weights, distill_weight, student_weight, teacher_weight)
        self.teacher = self._teacher(teacher, teacher_checkpoint, teacher_pretrained,
                                     teacher_dataset)
        self.student = unwrap(model)
        shape = self._sample_shape(input_shape, dataset) or example_input_of(self.student)
        if shape is not None:
            try:
                check_classes(self.student, self.teacher, shape)
            except DistillationError as e:
                raise ComponentArgError("teacher", str(e)) from None
        self.features = None
        if features:
            self.features = FeatureDistillation(
                features, _number("feature_weight", feature_weight),
                None if feature_lr is None else _number("feature_lr", feature_lr, positive=True),
                _number("feature_momentum", feature_momentum))
        self._armed = False        # set by on_minibatch_begin; the hook records only then
        self._inputs = None        # this minibatch's student input and logits
        self._logits = None
        self._hook = None
        self.attach(None, model)

    # -- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _teacher(teacher, checkpoint, pretrained, dataset) -> nn.Module:
        if isinstance(teacher, nn.Module):
            if checkpoint is not None:
                raise ComponentArgError("teacher_checkpoint", "give a teacher module or a "
                                        "checkpoint to build one from, not both")
            return freeze(unwrap(teacher))
        if teacher is not None and not isinstance(teacher, str):
            raise ComponentArgError("teacher", f"must be an architecture name (or, in Python, a "
                                    f"module); got {teacher!r}")
        if teacher is None and checkpoint is None:
            raise ComponentArgError("teacher", "needs a teacher: an architecture name "
                                    "(teacher: lenet5) and/or teacher_checkpoint: PATH")
        if checkpoint is not None:
            import os
            if not os.path.isfile(str(checkpoint)):
                raise ComponentArgError("teacher_checkpoint",
                                        f"teacher checkpoint not found: {checkpoint}")
        try:
            return load_teacher(teacher, checkpoint, bool(pretrained), dataset)
        except DistillationError as e:
            raise ComponentArgError("teacher", str(e)) from None

    @staticmethod
    def _sample_shape(input_shape, dataset):
        if input_shape is not None:
            if not isinstance(input_shape, (list, tuple)) or not input_shape or not all(
                    isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape):
                raise ComponentArgError("input_shape", f"must be the shape of one input sample, "
                                        f"e.g. [1, 28, 28]; got {input_shape!r}")
            return tuple(input_shape)
        if dataset is not None:
            from .. import models
            try:
                return tuple(models.input_shape(str(dataset).lower()))
            except Exception as e:   # the zoo's own error names the valid datasets
                raise ComponentArgError("dataset", str(e)) from None
        return None

    # -- the hook ------------------------------------------------------------------------------
    def _record(self, module, args, output) -> None:
        if self._armed and module.training:
            self._inputs, self._logits = args, output

    def attach(self, store, model) -> None:
        """Install the forward hook on the student (idempotent)."""
        if self._hook is None:
            self._hook = self.student.register_forward_hook(self._record)
        if self.features is not None:
            self.features.attach(self.student, self.teacher)

    def detach(self) -> None:
        """Remove the hooks from the student and the teacher (the policy is then inert)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.features is not None:
            self.features.detach()

    # -- events --------------------------------------------------------------------------------
    def on_minibatch_begin(self, ctx: StepContext) -> None:
        self._armed = True
        self._inputs = self._logits = None
        if self.features is not None:
            self.features.arm()

    def before_backward_pass(self, ctx: StepContext) -> Optional[PolicyLoss]:
        student, inputs = self._logits, self._inputs
        self._armed, self._inputs, self._logits = False, None, None
        if student is None:
            raise DistillationError(
                "knowledge distillation saw no training forward pass of the student in this "
                "minibatch: call scheduler.on_minibatch_begin before model(inputs), with the model "
                "in train mode (docs/own-training-loop.md)")
        if not isinstance(student, torch.Tensor):
            raise DistillationError(f"the student returns {type(student).__name__}, not a tensor "
                                    f"of logits")
        teacher_out = self.teacher_logits(inputs, student)
        if teacher_out.shape != student.shape:
            raise DistillationError(f"the teacher's logits have shape {list(teacher_out.shape)}, "
                                    f"the student's {list(student.shape)}; both must predict the "
                                    f"same classes")
        kl = distillation_kl(student, teacher_out, self.temperature)
        w = self.loss_weights
        overall = combine(ctx.loss, kl, self.temperature, w.student, w.distill)
        components = [LossComponent(DISTILL_LOSS, kl)]
        if self.features is not None:
            term = self.features.loss()
            overall = overall + self.features.weight * term
            components.append(LossComponent("Feature Loss", term))
        return PolicyLoss(overall, components)

    def on_minibatch_end(self, ctx: StepContext) -> None:
        if self.features is not None:
            self.features.step(ctx.optimizer, self.student)

    def on_epoch_end(self, ctx: StepContext) -> None:
        self._armed, self._inputs, self._logits = False, None, None

    def teacher_logits(self, inputs, student: torch.Tensor) -> torch.Tensor:
        """The teacher's output for the student's input, on the student's device, no gradient."""
        teacher = self.teacher
        ref = next(iter(teacher.parameters()), None)
        if ref is not None and ref.device != student.device:
            teacher.to(student.device)   # first use, or the student moved
        if teacher.training:   # someone called .train() on it: a teacher stays in eval mode
            teacher.eval()
        with torch.no_grad():
            return teacher(*inputs)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The feature projections and their optimizer (the teacher is not state: it is rebuilt
        from its source, and never saved with the student)."""
        return {"features": self.features.state_dict() if self.features is not None else None}

    def load_state_dict(self, state: Mapping) -> None:
        if self.features is not None and state.get("features"):
            self.features.load_state_dict(state["features"])
