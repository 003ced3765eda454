"""Intermediate-feature distillation: a student layer's output matched to a teacher layer's.

For each pair ``student_layer -> teacher_layer`` the term is ``MSE(P(s), t)``, with ``s`` and ``t``
the two layers' outputs for the same batch and ``P`` a learned projection (a 1x1 convolution for
feature maps, a linear map for vectors, no bias) when the widths differ, the identity when they
agree. Thinned students differ from their teachers exactly in width, which is why ``P`` exists.

The projections are not the model's and not in the user's optimizer (adding a parameter group
would change the optimizer's checkpoint layout): they have their own SGD, stepped after the
user's step with the learning rate of the user's first parameter group (or a fixed
``feature_lr``), averaged over ranks under torchrun, and saved in the policy's state. When
thinning removes output channels of a student layer, the projection's matching input columns are
removed too (read from the thinning recipe of the layer's weight), and its momentum restarts.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ComponentArgError
from ..thinning.record import recipes_of
from .teacher import DistillationError


def _projection(s: torch.Tensor, t: torch.Tensor) -> Optional[nn.Module]:
    """A bias-free 1x1 conv (maps) or linear map (vectors) from s's width to t's, or None."""
    if s.shape[1] == t.shape[1]:
        return None
    if s.dim() == 4:
        p = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
    elif s.dim() == 2:
        p = nn.Linear(s.shape[1], t.shape[1], bias=False)
    else:
        raise DistillationError(f"feature distillation projects 2-D (N, C) or 4-D (N, C, H, W) "
                                f"outputs; got {s.dim()}-D")
    return p.to(device=s.device, dtype=s.dtype)


class FeatureDistillation:
    """The ``features:`` option of ``KnowledgeDistillationPolicy``; see the module docstring."""

    def __init__(self, pairs: Mapping[str, str], weight: float, lr: Optional[float] = None,
                 momentum: float = 0.9):
        if not isinstance(pairs, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in pairs.items()):
            raise ComponentArgError("features", f"must map student layer names to teacher layer "
                                    f"names, e.g. {{conv2: conv2}}; got {pairs!r}")
        self.pairs = dict(pairs)
        self.weight, self.lr, self.momentum = weight, lr, momentum
        self.projections = nn.ModuleDict()     # keyed by the student layer (dots replaced)
        self.optimizer: Optional[torch.optim.SGD] = None
        self._saved_opt = None                 # optimizer state loaded before the projections exist
        self._student: Dict[str, torch.Tensor] = {}
        self._teacher: Dict[str, torch.Tensor] = {}
        self._hooks = []
        self._armed = False
        self._widths: Dict[str, int] = {}      # the student width each projection was made for

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        self._owner = student   # whose thinning recipes say which channels a layer kept
        if self._hooks:
            return
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        for s_name, t_name in self.pairs.items():
            if s_name not in s_mods:
                raise ComponentArgError(f"features.{s_name}", f"the student has no layer "
                                        f"'{s_name}'; layers: {', '.join(n for n in s_mods if n)}")
            if t_name not in t_mods:
                raise ComponentArgError(f"features.{s_name}", f"the teacher has no layer "
                                        f"'{t_name}'; layers: {', '.join(n for n in t_mods if n)}")
            self._hooks.append(s_mods[s_name].register_forward_hook(self._keeper(self._student, s_name)))
            self._hooks.append(t_mods[t_name].register_forward_hook(self._keeper(self._teacher, s_name)))

    def _keeper(self, into: Dict[str, torch.Tensor], key: str):
        def hook(module, args, output):
            if self._armed:
                into[key] = output
        return hook

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def arm(self) -> None:
        self._armed = True
        self._student.clear()
        self._teacher.clear()

    def loss(self) -> torch.Tensor:
        """Sum over pairs of MSE(P(student feature), teacher feature); call after the teacher ran."""
        self._armed = False
        total = None
        for s_name, t_name in self.pairs.items():
            s, t = self._student.get(s_name), self._teacher.get(s_name)
            if s is None or t is None:
                raise DistillationError(f"feature distillation saw no output of "
                                        f"{'student' if s is None else 'teacher'} layer "
                                        f"'{s_name if s is None else t_name}' in this minibatch")
            p = self._projection_for(s_name, s, t)
            s_proj = p(s) if p is not None else s
            if s_proj.shape != t.shape:
                raise DistillationError(f"student layer '{s_name}' gives {list(s.shape[1:])}, "
                                        f"teacher layer '{t_name}' {list(t.shape[1:])}: only the "
                                        f"width (dimension 1) may differ")
            term = F.mse_loss(s_proj, t.detach())
            total = term if total is None else total + term
        self._student.clear()
        self._teacher.clear()
        return total

    def _projection_for(self, s_name: str, s: torch.Tensor, t: torch.Tensor) -> Optional[nn.Module]:
        key = self._key(s_name)
        if key not in self.projections:
            p = _projection(s, t)
            if p is None:
                return None
            self.projections[key] = p
            self._widths[key] = s.shape[1]
            self._new_optimizer()
        p = self.projections[key]
        if p.weight.shape[1] != s.shape[1]:
            self._follow_thinning(s_name, p, s.shape[1])
        return p

    def _follow_thinning(self, s_name: str, p: nn.Module, width: int) -> None:
        """Keep the projection's input columns of the channels thinning kept in ``s_name``."""
        kept = None
        for recipe in reversed(recipes_of(self._owner)) if self._owner is not None else ():
            change = recipe.tensors.get(f"{s_name}.weight")
            if change is not None:
                ops = [o for o in change.ops if o.dim == 0 and o.groups is None]
                if ops:
                    kept = list(ops[-1].index)
                    break
        if kept is None or len(kept) != width:
            raise DistillationError(f"student layer '{s_name}' changed width from "
                                    f"{p.weight.shape[1]} to {width}, and no thinning recipe of "
                                    f"'{s_name}.weight' says which channels stayed; distill a "
                                    f"convolution or linear layer")
        with torch.no_grad():
            idx = torch.tensor(kept, device=p.weight.device)
            p.weight = nn.Parameter(p.weight.index_select(1, idx).clone())
        if isinstance(p, nn.Conv2d):
            p.in_channels = width
        else:
            p.in_features = width
        self._widths[self._key(s_name)] = width
        self._new_optimizer()   # momentum of the removed columns has no meaning any more

    _owner: Optional[nn.Module] = None

    def _new_optimizer(self) -> None:
        self.optimizer = torch.optim.SGD(self.projections.parameters(), lr=self.lr or 0.01,
                                         momentum=self.momentum)
        if self._saved_opt is not None:
            try:
                self.optimizer.load_state_dict(self._saved_opt)
            except (ValueError, KeyError):
                pass   # a projection was added since: its state starts fresh
            self._saved_opt = None

    def step(self, user_optimizer, student: nn.Module) -> None:
        """One SGD step of the projections (after the user's), then clear their gradients."""
        if self.optimizer is None:
            return
        params = [p for p in self.projections.parameters() if p.grad is not None]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in params:   # each rank's projection sees its own data: keep them equal
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        lr = self.lr
        if lr is None and user_optimizer is not None:
            lr = user_optimizer.param_groups[0]["lr"]
        for g in self.optimizer.param_groups:
            g["lr"] = lr if lr is not None else g["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"projections": {k: p.weight.detach().clone() for k, p in self.projections.items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def load_state_dict(self, state: Mapping) -> None:
        for key, weight in (state.get("projections") or {}).items():
            if weight.dim() == 4:
                p = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False)
            else:
                p = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            p = p.to(device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                p.weight.copy_(weight)
            self.projections[key] = p
            self._widths[key] = weight.shape[1]
        self._saved_opt = state.get("optimizer")
        if len(self.projections):
            self._new_optimizer()
