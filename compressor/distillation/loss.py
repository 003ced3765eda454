"""The knowledge-distillation loss on logits (Hinton et al., 2015), as Distiller computed it.

``distillation_kl`` is the soft-target term KL(softmax(t/T) || softmax(s/T)) averaged over the
batch (``batchmean``: the sum over classes, divided by the number of samples; the plain ``mean``
would also divide by the number of classes). ``combine`` is the loss the student trains on:
``w_s * loss + w_d * T^2 * KL``, where ``loss`` is the loss the policy receives (the hard-label
loss, plus the terms of policies listed before it), rescaled rather than recomputed, as
Distiller's policy did. T^2 keeps the soft term's gradient scale independent of T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, mean over samples."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")


def combine(loss: torch.Tensor, kl: torch.Tensor, temperature: float, student_weight: float,
            distill_weight: float) -> torch.Tensor:
    """``student_weight * loss + distill_weight * T^2 * kl``."""
    return student_weight * loss + distill_weight * (temperature ** 2) * kl
