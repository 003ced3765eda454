"""The teacher network: built, loaded, frozen, and checked against the student.

A teacher comes from a checkpoint of this project (``checkpoint=``: the architecture is the
checkpoint's ``arch`` unless one is named, and its thinning recipes are replayed, so a thinned
network teaches too), from the model zoo by name (``arch=``, optionally ``pretrained``), or is the
user's own module (``module=``, library API). ``freeze`` puts it in eval mode and turns its
gradients off: it never trains, never enters the student's state_dict (it is held by the policy,
which is not a module) and, under DDP, is never wrapped (each rank builds its own).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import CompressorError
from ..masks import unwrap


class DistillationError(CompressorError, ValueError):
    """A knowledge-distillation setting is wrong: the teacher, its classes, a weight, a layer."""


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode and no gradients, in place; returns the teacher."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def load_teacher(arch: Optional[str] = None, checkpoint: Optional[str] = None,
                 pretrained: bool = False, dataset: Optional[str] = None,
                 device: Optional[torch.device] = None) -> nn.Module:
    """A frozen teacher from the model zoo (``arch``) and/or a checkpoint of this project.

    A missing checkpoint raises ``CheckpointNotFoundError``; a checkpoint for another
    architecture than ``arch``, ``CheckpointError``. ``dataset`` is the dataset the zoo model is
    built for (default: the architecture's own).
    """
    from .. import checkpoint as ckpt_io   # the checkpoint module imports much; only when needed
    from .. import models
    ckpt = None
    if checkpoint is not None:
        ckpt = ckpt_io.read_checkpoint(checkpoint)
        if arch is None:
            arch = ckpt.get("arch")
            if not arch:
                raise DistillationError(f"{checkpoint}: the checkpoint names no architecture; "
                                        f"name the teacher's architecture too")
    if arch is None:
        raise DistillationError("a teacher needs an architecture name or a checkpoint")
    teacher = models.create_model(arch, dataset, pretrained=pretrained and ckpt is None)
    if ckpt is not None:
        _check_classifier(teacher, ckpt, checkpoint, str(arch))
        ckpt_io.restore(ckpt, teacher, arch=str(arch).lower() if ckpt.get("arch") else None,
                        path=checkpoint)
    if device is not None:
        teacher.to(device)
    return freeze(teacher)


def _check_classifier(teacher: nn.Module, ckpt, path: str, arch: str) -> None:
    """``DistillationError`` when the checkpoint's last weight (the classifier) has another number
    of outputs than the zoo network it is loaded into: a teacher trained for other classes."""
    weights = [(k, v) for k, v in teacher.state_dict().items() if k.endswith("weight") and v.dim() >= 2]
    if not weights:
        return
    key, own = weights[-1]
    saved = ckpt["state_dict"].get(key, ckpt["state_dict"].get(f"module.{key}"))
    if isinstance(saved, torch.Tensor) and saved.dim() == own.dim() and saved.shape[0] != own.shape[0]:
        raise DistillationError(f"{path}: the teacher's classifier {key} has {saved.shape[0]} "
                                f"outputs, where {arch} predicts {own.shape[0]} classes; the "
                                f"teacher must predict the student's classes")


def output_width(model: nn.Module, sample_shape: Sequence[int]) -> Tuple[int, ...]:
    """The shape of ``model``'s output for one sample of ``sample_shape`` (eval, no_grad, flags
    restored), without the batch dimension."""
    inner = unwrap(model)
    ref = next(iter(inner.parameters()), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    flags = [(m, m.training) for m in inner.modules()]
    inner.eval()   # no batch-norm statistics change
    try:
        with torch.no_grad():
            out = inner(torch.zeros((2,) + tuple(sample_shape), **kw))
    finally:
        for m, t in flags:
            m.training = t
    if not isinstance(out, torch.Tensor):
        raise DistillationError(f"{type(inner).__name__} returns {type(out).__name__}, not a "
                                f"tensor of logits")
    return tuple(out.shape[1:])


def check_classes(student: nn.Module, teacher: nn.Module, sample_shape: Sequence[int]) -> None:
    """``DistillationError`` when the teacher's output shape (its classes) differs from the
    student's for one input of ``sample_shape``."""
    s, t = output_width(student, sample_shape), output_width(teacher, sample_shape)
    if s != t:
        raise DistillationError(f"the teacher ({type(unwrap(teacher)).__name__}) outputs "
                                f"{_classes(t)}, the student ({type(unwrap(student)).__name__}) "
                                f"{_classes(s)}; both must predict the same classes")


def _classes(shape: Tuple[int, ...]) -> str:
    return f"{shape[0]} classes" if len(shape) == 1 else f"shape {list(shape)}"
