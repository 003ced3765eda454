"""AutoPruner (Luo & Wu, 2018): trainable channel gates that learn which filters to remove.

Each listed convolution gets a gate: its output feature map is pooled over the batch and the
spatial positions (of the rectified map), a fully connected layer maps the C pooled values to C
scores, and a scaled sigmoid ``v = sigmoid(alpha * score)`` multiplies channel c by ``v[c]``. The
gate's fully connected layer starts from N(0, (10 * sqrt(2 / C))^2), so the gates start spread out.
The loss gets, per gate, ``lambda * (mean(v) - r)^2`` for the target keep ratio ``r``, with
``lambda = 100 * |mean(v) - r|`` (large while far from the target, vanishing near it), and
``alpha`` grows from ``alpha_start`` to ``alpha_end`` over the policy's minibatches, so the gates
end (nearly) binary. At the end of the policy, channels whose mean gate over the last epoch is
above ``threshold`` stay; the others get filter masks (their conv weight and bias, and the
following batch norm's gamma and beta), so thinning can remove them; the kept channels' gate
values are folded into the batch norm's (or the conv's) scale and the gates are removed.

The gates live outside the model, with their own SGD optimizer stepped after the user's, so the
user's optimizer, its param groups and checkpoints are untouched; the gate weights and their
optimizer state are part of the policy state in the compression scheduler's checkpoint, so a
resumed run continues exactly.

Gating the batch norm's output before the ReLU equals gating after it, since ``v > 0`` and
``relu(v * y) = v * relu(y)``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ComponentArgError, CompressorError
from ..graph import conv_bn_pairs
from ..masks import unwrap
from ..registry import PRUNERS
from .base import Pruner
from .coupling import dependents
from .magnitude import check_number

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ChannelGate(nn.Module):
    """pool over batch and space -> Linear(C, C) -> sigmoid(alpha * x): one value per channel."""

    def __init__(self, channels: int, init_std_scale: float = 10.0):
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        nn.init.normal_(self.fc.weight, 0.0, init_std_scale * math.sqrt(2.0 / channels))
        nn.init.zeros_(self.fc.bias)

    def forward(self, feature_map: torch.Tensor, alpha: float) -> torch.Tensor:
        dims = [0] + list(range(2, feature_map.dim()))
        pooled = torch.relu(feature_map).mean(dim=dims)
        return torch.sigmoid(alpha * self.fc(pooled))


@PRUNERS.register
class AutoPruner(Pruner):
    """Learn filter masks with trainable gates; see the module docstring and docs/methods/autopruner.md.

    ``weights``: the convolution weights whose output channels are gated (e.g. ``[conv1.weight,
    conv2.weight]``). ``keep_ratio``: the fraction r of each layer's channels to keep.
    """

    def __init__(self, name: str, weights, keep_ratio: float, alpha_start: float = 1.0,
                 alpha_end: float = 100.0, lambda_scale: float = 100.0, init_std_scale: float = 10.0,
                 gate_lr: float = 0.1, gate_momentum: float = 0.9, threshold: float = 0.5,
                 model: Optional[nn.Module] = None):
        super().__init__(name)
        if isinstance(weights, str):
            weights = [weights]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ComponentArgError("weights", f"must be a non-empty list of convolution weight names; got {weights!r}")
        self.keep_ratio = check_number("keep_ratio", keep_ratio, 0.0, 1.0, high_open=False, low_open=True)
        self.alpha_start = check_number("alpha_start", alpha_start, 0.0, low_open=True)
        self.alpha_end = check_number("alpha_end", alpha_end, 0.0, low_open=True)
        if self.alpha_end < self.alpha_start:
            raise ComponentArgError("alpha_end", f"({alpha_end}) must be >= alpha_start ({alpha_start})")
        self.lambda_scale = check_number("lambda_scale", lambda_scale)
        self.init_std_scale = check_number("init_std_scale", init_std_scale, 0.0, low_open=True)
        self.gate_lr = check_number("gate_lr", gate_lr, 0.0, low_open=True)
        self.gate_momentum = check_number("gate_momentum", gate_momentum)
        self.threshold = check_number("threshold", threshold, 0.0, 1.0, low_open=True)
        if model is None:
            raise ComponentArgError("weights", "AutoPruner needs the model to place its gates")
        self.conv_weights = list(weights)
        self._layers = self._find_layers(unwrap(model))
        self.gates: Dict[str, ChannelGate] = {}
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.step = 0                    # minibatches trained with the gates so far
        self.total_steps: Optional[int] = None
        self.started = self.finished = False
        self._hooks: list = []
        self._v: Dict[str, torch.Tensor] = {}            # this minibatch's gates (with grad)
        self._v_sum: Dict[str, torch.Tensor] = {}        # sum of this epoch's training gates
        self._v_count: Dict[str, int] = {}               # ... over this many minibatches
        self._saved_gates = self._saved_optimizer = None  # from load_state_dict, until restored

    # -- where the gates go ---------------------------------------------------------------------
    def _find_layers(self, model: nn.Module) -> Dict[str, dict]:
        modules = dict(model.named_modules())
        names_by_id = {id(m): n for n, m in modules.items()}
        bn_of = {w: names_by_id[id(bn)] for w, bn in conv_bn_pairs(model).items()}
        extras = dependents(model, self.conv_weights)   # each filter's bias, BN gamma and beta
        layers = {}
        for w in self.conv_weights:
            owner = w.rsplit(".", 1)[0]
            module = modules.get(owner)
            if not isinstance(module, _CONVS) or not w.endswith(".weight"):
                kind = type(module).__name__ if module is not None else "not a layer's weight"
                raise ComponentArgError(f"weights.{w}", f"AutoPruner gates the output channels of "
                                        f"convolutions; '{owner}' is {kind}. List conv weights, e.g. "
                                        f"'conv1.weight'")
            layers[w] = {"gated": bn_of.get(w, owner), "channels": module.out_channels,
                         "extras": extras.get(w, [])}
        return layers

    @property
    def param_names(self) -> List[str]:
        names = list(self.conv_weights)
        for w in self.conv_weights:
            names.extend(n for n in self._layers[w]["extras"] if n not in names)
        return names

    def masks(self, params, ctx) -> Dict[str, torch.Tensor]:
        return {}   # AutoPruner's masks come from its policy's last epoch (``finalize``)

    # -- gates ----------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        if not self.total_steps or self.total_steps <= 1:
            return self.alpha_end
        t = min(1.0, self.step / (self.total_steps - 1))
        return self.alpha_start + (self.alpha_end - self.alpha_start) * t

    def _make_gates(self, model: nn.Module) -> None:
        if self.gates:
            return
        params = dict(unwrap(model).named_parameters())
        for w, layer in self._layers.items():
            self.gates[w] = ChannelGate(layer["channels"], self.init_std_scale).to(params[w].device)
        gate_params = [p for g in self.gates.values() for p in g.parameters()]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in gate_params:            # every rank starts from rank 0's gates
                dist.broadcast(p.data, src=0)
        self.optimizer = torch.optim.SGD(gate_params, lr=self.gate_lr, momentum=self.gate_momentum)

    def install(self, model: nn.Module) -> None:
        """Create the gates (once) and hook them onto the gated layers' outputs."""
        if self._hooks or self.finished:
            return
        self._make_gates(model)
        modules = dict(unwrap(model).named_modules())
        for w, layer in self._layers.items():
            self._hooks.append(modules[layer["gated"]].register_forward_hook(self._hook(w)))
        self.started = True

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._v = [], {}

    def _hook(self, w: str):
        gate, layer = self.gates[w], self._layers[w]

        def gate_output(module, inputs, output):
            if output.shape[1] != layer["channels"]:
                raise CompressorError(f"AutoPruner '{self.name}': {layer['gated']} has {output.shape[1]} "
                                      f"channels but its gate was built for {layer['channels']}; thin "
                                      f"the model only after the AutoPruner policy has ended")
            v = gate(output, self.alpha)
            if module.training:
                self._v[w] = v
                self._v_sum[w] = self._v_sum.get(w, 0) + v.detach()
                self._v_count[w] = self._v_count.get(w, 0) + 1
            return output * v.view(1, -1, *([1] * (output.dim() - 2)))
        return gate_output

    def loss(self, reference: torch.Tensor) -> torch.Tensor:
        """sum over gates of lambda * (mean(v) - r)^2 with lambda = lambda_scale * |mean(v) - r|."""
        total = reference.new_zeros(())
        for v in self._v.values():
            gap = v.mean() - self.keep_ratio
            total = total + self.lambda_scale * gap.detach().abs() * gap.pow(2)
        return total

    def step_gates(self) -> None:
        """One SGD step of the gates (gradients averaged across ranks), after the model's step."""
        if self.optimizer is None:
            return
        params = [p for g in self.gates.values() for p in g.parameters() if p.grad is not None]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad.div_(dist.get_world_size())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._v = {}
        self.step += 1

    def reset_epoch_means(self) -> None:
        self._v_sum, self._v_count = {}, {}

    def mean_gates(self) -> Dict[str, torch.Tensor]:
        """Each layer's gate averaged over this epoch's training minibatches (and over ranks, so
        every rank of a distributed run makes the same choice)."""
        means = {w: s / self._v_count[w] for w, s in self._v_sum.items()}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for w in sorted(means):
                dist.all_reduce(means[w])
                means[w] /= dist.get_world_size()
        return means

    def finalize(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Fold the kept gates into the layers, remove the gates, and return the filter masks."""
        means = self.mean_gates()
        params = dict(unwrap(model).named_parameters())
        out: Dict[str, torch.Tensor] = {}
        for w, layer in self._layers.items():
            v = means.get(w)
            if v is None:   # the gate never ran in training mode this epoch: keep every channel
                v = torch.full((layer["channels"],), 1.0, device=params[w].device)
            keep = v > self.threshold
            if not keep.any():
                keep[torch.argmax(v)] = True
            scale = torch.where(keep, v, torch.zeros_like(v))
            with torch.no_grad():
                gated = layer["gated"]
                for suffix in ("weight", "bias"):
                    p = params.get(f"{gated}.{suffix}")
                    if p is not None:
                        p.mul_(scale.to(p.dtype).view(-1, *([1] * (p.dim() - 1))))
            for n in [w] + layer["extras"]:
                shape = params[n].shape
                out[n] = keep.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
        self.remove()
        self.gates, self.optimizer, self.finished = {}, None, True
        self.reset_epoch_means()
        return out

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"step": self.step, "total_steps": self.total_steps, "started": self.started,
                 "finished": self.finished, "v_count": dict(self._v_count),
                 "v_sum": {w: s.clone() for w, s in self._v_sum.items()}}
        if self.gates:
            state["gates"] = {w: g.state_dict() for w, g in self.gates.items()}
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.step = int(state.get("step", 0))
        self.total_steps = state.get("total_steps")
        self.started = bool(state.get("started", False))
        self.finished = bool(state.get("finished", False))
        self._v_count = {w: int(n) for w, n in state.get("v_count", {}).items()}
        self._v_sum = dict(state.get("v_sum", {}))
        self._saved_gates = state.get("gates")
        self._saved_optimizer = state.get("optimizer")

    def restore_gates(self, model: nn.Module) -> None:
        """After ``load_state_dict``: rebuild the saved gates and their optimizer, and hook them on."""
        saved = getattr(self, "_saved_gates", None)
        if saved is None or self.finished:
            return
        self._make_gates(model)
        for w, gate in self.gates.items():
            gate.load_state_dict(saved[w])
        if self._saved_optimizer is not None:
            self.optimizer.load_state_dict(self._saved_optimizer)
        self._saved_gates = self._saved_optimizer = None
        self.remove()
        self.install(model)
