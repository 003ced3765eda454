"""The app's knowledge-distillation flags: Distiller's ``--kd-*`` names, aliases and defaults.

``add_distillation_args`` adds the argument group (Distiller's function name); ``KDConfig`` holds
the checked values (``UsageError`` naming the flag: a teacher weight other than 0, a negative or
non-finite weight, a temperature <= 0, a missing teacher checkpoint, an unknown architecture, a
flag without a teacher); ``build_distillation_policy`` builds the teacher and its
``KnowledgeDistillationPolicy``, which ``add_distillation_policy`` appends to the scheduler from
``--kd-start-epoch`` to the last epoch, after the schedule's own policies, as Distiller did. docs/app.md lists the flags.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from compressor import models
from compressor.distillation import (DistillationError, DistillationLossWeights,
                                     KnowledgeDistillationPolicy, load_teacher)
from compressor.errors import ComponentArgError, CompressorError
from compressor.scheduler import CompressionScheduler
from .run_config import UsageError

# Distiller's defaults; the parser's are None so a flag given without a teacher can be named.
DEFAULTS = {"kd_temp": 1.0, "kd_distill_wt": 0.5, "kd_student_wt": 0.5, "kd_teacher_wt": 0.0,
            "kd_start_epoch": 0}
KEY = "kd:KnowledgeDistillationPolicy:kd"   # the policy's key in the scheduler state


def add_distillation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "knowledge distillation (Distiller's flags; docs/methods/knowledge-distillation.md)")
    g.add_argument("--kd-teacher", type=str.lower, default=None, metavar="ARCH",
                   help="distill from a teacher of this architecture (with --kd-resume or "
                        "--kd-pretrained for its weights)")
    g.add_argument("--kd-pretrained", action="store_true",
                   help="the teacher has torchvision's pretrained weights")
    g.add_argument("--kd-resume", default=None, metavar="PATH",
                   help="the teacher's checkpoint (thinned ones too); its arch is used when "
                        "--kd-teacher is not given")
    g.add_argument("--kd-temperature", "--kd-temp", dest="kd_temp", type=float, default=None,
                   metavar="T", help="softmax temperature (default: 1.0)")
    g.add_argument("--kd-distill-wt", "--kd-dw", dest="kd_distill_wt", type=float, default=None,
                   metavar="W", help="weight of the distillation term (default: 0.5)")
    g.add_argument("--kd-student-wt", "--kd-sw", dest="kd_student_wt", type=float, default=None,
                   metavar="W", help="weight of the student's loss on the labels (default: 0.5)")
    g.add_argument("--kd-teacher-wt", "--kd-tw", dest="kd_teacher_wt", type=float, default=None,
                   metavar="W", help="teacher loss weight; must be 0, as in Distiller (default: 0.0)")
    g.add_argument("--kd-start-epoch", type=int, default=None, metavar="EPOCH",
                   help="first epoch with distillation (default: 0)")


@dataclass(frozen=True)
class KDConfig:
    """The checked ``--kd-*`` values; ``enabled`` when a teacher is named."""
    teacher: Optional[str] = None
    pretrained: bool = False
    resume: Optional[str] = None
    temperature: float = 1.0
    distill_wt: float = 0.5
    student_wt: float = 0.5
    teacher_wt: float = 0.0
    start_epoch: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.teacher or self.resume)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "KDConfig":
        given = {k: getattr(args, k, None) for k in DEFAULTS}
        teacher, resume = getattr(args, "kd_teacher", None), getattr(args, "kd_resume", None)
        if not (teacher or resume):
            flags = [k for k, v in given.items() if v is not None]
            if getattr(args, "kd_pretrained", False):
                flags.insert(0, "kd_pretrained")
            if flags:
                raise UsageError(f"--{flags[0].replace('_', '-')} needs a teacher: --kd-teacher "
                                 f"ARCH (or --kd-resume PATH)")
            return cls()
        v = {k: (DEFAULTS[k] if val is None else val) for k, val in given.items()}
        config = cls(teacher=teacher, pretrained=bool(getattr(args, "kd_pretrained", False)),
                     resume=resume, temperature=v["kd_temp"], distill_wt=v["kd_distill_wt"],
                     student_wt=v["kd_student_wt"], teacher_wt=v["kd_teacher_wt"],
                     start_epoch=v["kd_start_epoch"])
        config.check()
        return config

    def check(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"--kd-temperature must be a finite number > 0; got {self.temperature}")
        for flag, value in (("--kd-distill-wt", self.distill_wt), ("--kd-student-wt", self.student_wt),
                            ("--kd-teacher-wt", self.teacher_wt)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{flag} must be a finite number >= 0; got {value}")
        if self.teacher_wt != 0:
            raise UsageError(f"--kd-teacher-wt must be 0: training the teacher is not implemented "
                             f"(as in Distiller); got {self.teacher_wt}")
        if self.distill_wt == 0 and self.student_wt == 0:
            raise UsageError("--kd-distill-wt and --kd-student-wt are both 0: nothing would be trained")
        if self.start_epoch < 0:
            raise UsageError(f"--kd-start-epoch must be >= 0; got {self.start_epoch}")
        if self.resume is not None and not os.path.isfile(self.resume):
            raise UsageError(f"--kd-resume: teacher checkpoint not found: {self.resume}")
        if self.teacher is not None:
            try:
                models.ARCHITECTURES[self.teacher]
            except CompressorError as e:
                raise UsageError(f"--kd-teacher: {e}") from None


def build_distillation_policy(kd: KDConfig, model: nn.Module, model_dataset: str,
                              device: torch.device) -> KnowledgeDistillationPolicy:
    """The teacher, built and checked against the student's classes, in its policy (before the
    app writes anything, so a bad teacher leaves no run folder)."""
    source = f"--kd-teacher {kd.teacher}" if kd.teacher else f"--kd-resume {kd.resume}"
    try:
        teacher = load_teacher(kd.teacher, kd.resume, kd.pretrained, model_dataset, device)
        return KnowledgeDistillationPolicy(
            model, teacher, kd.temperature,
            DistillationLossWeights(kd.distill_wt, kd.student_wt, kd.teacher_wt),
            input_shape=models.input_shape(model_dataset), name="kd")
    except (ComponentArgError, DistillationError) as e:
        raise UsageError(f"{source}: {getattr(e, 'reason', e)}") from None


def add_distillation_policy(kd: KDConfig, policy: KnowledgeDistillationPolicy,
                            scheduler: Optional[CompressionScheduler], model: nn.Module,
                            epochs: int) -> CompressionScheduler:
    """Append ``policy`` for epochs ``kd.start_epoch`` .. ``epochs - 1``, after the schedule's own
    policies; returns the scheduler (a new one if None)."""
    if kd.start_epoch >= epochs:
        raise UsageError(f"--kd-start-epoch {kd.start_epoch} must be below --epochs {epochs}")
    if scheduler is None:
        scheduler = CompressionScheduler(model)
    scheduler.add_policy(policy, starting_epoch=kd.start_epoch, ending_epoch=epochs, key=KEY)
    return scheduler
