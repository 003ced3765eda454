"""The schedule's quantizers (Distiller's class names and keys): which layer gets which bits, and
quantization-aware training installed on the model in place.

Building a quantizer (at schedule load) only validates its keys and resolves ``overrides`` against
the model's module names; nothing is changed. ``prepare(optimizer)`` (the ``quantizer:`` policy
calls it at its starting epoch) installs fake quantization *in place*: convolutions and linears
compute with their fake-quantized weight, ReLU outputs are fake-quantized, optionally the model
input too. The model keeps its module objects, parameter objects and state_dict keys, so the
optimizer, the mask store, thinning and checkpoints keep working; ``release()`` removes it all.
"""
from __future__ import annotations

import math
import re
import types
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ComponentArgError, listing, suggest
from ..masks import unwrap
from ..registry import QUANTIZERS
from . import fake_quant as fq

OVERRIDE_KEYS = ("bits_weights", "bits_activations", "bits_bias")
_REGEX_CHARS = set(".*+?[](){}|^$\\")


def _bits(key: str, value: Any) -> Optional[int]:
    """``value`` as a bit width, or None for "keep float" (null, or 32 as in Distiller)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ComponentArgError(key, f"must be an integer bit width 2..16, 32 or null (float); "
                                     f"got {value!r}")
    if value == 32:
        return None
    if value > 16:
        raise ComponentArgError(key, f"must be 2..16 bits, 32 or null (float); got {value}")
    if value == 1:
        raise ComponentArgError(key, "1-bit (binary) weights are not reproduced; valid: 2..16, "
                                     "32 or null")
    return value


def _mode(value: Any) -> Dict[str, str]:
    """Distiller's ``mode``: one LinearQuantMode name, or {activations: ..., weights: ...}."""
    def one(key, v):
        name = str(v).upper() if isinstance(v, str) else None
        if name not in fq.MODES:
            raise ComponentArgError(key, f"must be one of {', '.join(fq.MODES)}; got {v!r}")
        return name
    if isinstance(value, Mapping):
        for k in value:
            if k not in ("activations", "weights"):
                raise ComponentArgError(f"mode.{k}", "unknown key; valid: activations, weights")
        return {"activations": one("mode.activations", value.get("activations", fq.SYMMETRIC)),
                "weights": one("mode.weights", value.get("weights", fq.SYMMETRIC))}
    m = one("mode", value)
    return {"activations": m, "weights": m}


class Quantizer:
    """Base: bit widths per layer (defaults + ordered ``overrides`` by name or regex)."""

    #: layer types whose weights are quantized, and whose outputs carry activation quantization
    weight_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    act_types = (nn.ReLU,)

    def __init__(self, model: nn.Module, optimizer=None, bits_activations=32, bits_weights=32,
                 bits_bias=None, overrides=None):
        self.model = model
        self.optimizer = optimizer
        self.defaults = {"bits_weights": _bits("bits_weights", bits_weights),
                         "bits_activations": _bits("bits_activations", bits_activations)}
        _bias(bits_bias, "bits_bias")
        self.bits = self._resolve(overrides or {})
        self.prepared = False
        self._handles: List[Any] = []
        self._forwards: List[nn.Module] = []

    # -- which layer gets which bits -----------------------------------------------------------
    def _resolve(self, overrides: Mapping) -> Dict[str, Dict[str, Optional[int]]]:
        if not isinstance(overrides, Mapping):
            raise ComponentArgError("overrides", f"must map layer names or regexes to "
                                                 f"{{bits_weights, bits_activations}}; got {overrides!r}")
        names = [n for n, _ in unwrap(self.model).named_modules() if n]
        rules = []
        for key, spec in overrides.items():
            where = f"overrides.{key}"
            if not isinstance(spec, Mapping):
                raise ComponentArgError(where, "must be a mapping of bits_weights, bits_activations "
                                               "(null: keep this layer float)")
            for k in spec:
                if k not in OVERRIDE_KEYS:
                    raise ComponentArgError(f"{where}.{k}", f"unknown override key{suggest(k, OVERRIDE_KEYS)}; "
                                                            f"valid: {', '.join(OVERRIDE_KEYS)}")
            _bias(spec.get("bits_bias"), f"{where}.bits_bias")
            try:
                rx = re.compile(str(key))
            except re.error as e:
                raise ComponentArgError(where, f"invalid regular expression: {e}") from None
            plain = not (_REGEX_CHARS & set(str(key)))
            if plain and str(key) not in names:
                raise ComponentArgError(where, f"'{key}' is not a module of the model"
                                               f"{suggest(str(key), names)}; modules: {listing(names, 8)}")
            vals = {k: _bits(f"{where}.{k}", spec[k]) for k in ("bits_weights", "bits_activations")
                    if k in spec}
            rules.append((rx, vals))
        out = {}
        for name in names:
            bits = dict(self.defaults)
            for rx, vals in rules:   # first match wins, as Distiller's ordered overrides
                if rx.fullmatch(name):
                    bits.update(vals)
                    break
            out[name] = bits
        return out

    # -- installing fake quantization ----------------------------------------------------------
    def weight_fn(self, name: str, bits: int):
        raise NotImplementedError

    def act_fn(self, name: str, bits: int):
        raise NotImplementedError

    def new_parameters(self) -> List[nn.Parameter]:
        """Parameters QAT adds (PACT's clips), given their own optimizer param group."""
        return []

    def prepare(self, optimizer=None) -> None:
        """Install fake quantization on the model in place (once)."""
        if self.prepared:
            return
        model = unwrap(self.model)
        for name, module in model.named_modules():
            bits = self.bits.get(name)
            if bits is None:
                continue
            if isinstance(module, self.weight_types) and bits["bits_weights"] is not None:
                _quantize_weight_forward(module, self.weight_fn(name, bits["bits_weights"]))
                self._forwards.append(module)
            if isinstance(module, self.act_types) and bits["bits_activations"] is not None:
                fn = self.act_fn(name, bits["bits_activations"])
                self._handles.append(module.register_forward_hook(lambda m, i, o, fn=fn: fn(o, m.training)))
        self._prepare_extra(model)
        new = self.new_parameters()
        optimizer = optimizer if optimizer is not None else self.optimizer
        if new:
            if optimizer is None:
                raise ValueError(f"{type(self).__name__} learns new parameters during QAT; it needs "
                                 f"the optimizer (pass it to file_config, or to the policy's event)")
            if not any(p is new[0] for g in optimizer.param_groups for p in g["params"]):
                optimizer.add_param_group(self.param_group(new))
        self.prepared = True

    def param_group(self, params) -> dict:
        return {"params": params}

    def _prepare_extra(self, model: nn.Module) -> None:
        pass

    def release(self) -> None:
        """Remove every hook and forward installed by ``prepare``; weights are left as trained."""
        for h in self._handles:
            h.remove()
        for m in self._forwards:
            m.__dict__.pop("forward", None)
        self._handles, self._forwards = [], []
        self.prepared = False

    def state_dict(self) -> dict:
        return {"prepared": self.prepared}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("prepared"):
            self.prepare()


def _bias(value, key) -> None:
    if value is not None and value != 32:
        raise ComponentArgError(key, f"biases stay float during QAT (the int8 export keeps them as "
                                     f"the backend does, int32-scaled); valid: 32 or null; got {value!r}")


def _quantize_weight_forward(module: nn.Module, wfn) -> None:
    """Make ``module`` compute with ``wfn(module.weight)`` (an instance attribute; ``release``
    deletes it). The parameter object itself is untouched, so optimizers and masks see it."""
    if isinstance(module, nn.Linear):
        def forward(self, x):
            return F.linear(x, wfn(self.weight), self.bias)
    else:
        def forward(self, x):
            return self._conv_forward(x, wfn(self.weight), self.bias)
    module.forward = types.MethodType(forward, module)


class _EmaRange:
    """Running min/max of a tensor (Distiller's EMA with bias correction), fake-quantizing it."""

    def __init__(self, bits: int, mode: str, decay: float):
        self.bits, self.mode, self.decay = bits, mode, decay
        self.lo = self.hi = None
        self.steps = 0

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training or self.lo is None:
            lo, hi = x.detach().min().float(), x.detach().max().float()
            self.steps += 1
            if self.lo is None:
                self._lo_raw, self._hi_raw = torch.zeros(()), torch.zeros(())
            d = self.decay
            self._lo_raw = d * self._lo_raw + (1 - d) * lo.cpu()
            self._hi_raw = d * self._hi_raw + (1 - d) * hi.cpu()
            corr = 1 - d ** self.steps
            self.lo, self.hi = self._lo_raw / corr, self._hi_raw / corr
        return fq.fake_quant(x, self.lo.to(x.device), self.hi.to(x.device), self.bits, self.mode)

    def state(self) -> dict:
        if self.lo is None:
            return {}
        return {"lo": float(self._lo_raw), "hi": float(self._hi_raw), "steps": self.steps}

    def load(self, s: Mapping) -> None:
        if s:
            self._lo_raw, self._hi_raw = torch.tensor(s["lo"]), torch.tensor(s["hi"])
            self.steps = int(s["steps"])
            corr = 1 - self.decay ** self.steps
            self.lo, self.hi = self._lo_raw / corr, self._hi_raw / corr


@QUANTIZERS.register
class QuantAwareTrainRangeLinearQuantizer(Quantizer):
    """Range-based linear QAT: weights on their own min/max each step, activations (ReLU outputs,
    and the input with ``quantize_inputs``) on an exponential moving average of their range."""

    def __init__(self, model, optimizer=None, bits_activations=32, bits_weights=32, bits_bias=32,
                 overrides=None, mode="SYMMETRIC", ema_decay=0.999, per_channel_wts=False,
                 quantize_inputs=True, num_bits_inputs=None):
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides)
        self.mode = _mode(mode)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) \
                or not 0 < ema_decay < 1:
            raise ComponentArgError("ema_decay", f"must be a number in (0, 1); got {ema_decay!r}")
        self.ema_decay = float(ema_decay)
        for key, v in (("per_channel_wts", per_channel_wts), ("quantize_inputs", quantize_inputs)):
            if not isinstance(v, bool):
                raise ComponentArgError(key, f"must be true or false; got {v!r}")
        self.per_channel_wts = per_channel_wts
        self.quantize_inputs = quantize_inputs
        self.bits_inputs = (_bits("num_bits_inputs", num_bits_inputs) if num_bits_inputs is not None
                            else self.defaults["bits_activations"])
        self.ranges: Dict[str, _EmaRange] = {}

    def weight_fn(self, name, bits):
        mode, pc = self.mode["weights"], self.per_channel_wts
        return lambda w: fq.range_linear_weight(w, bits, mode, pc)

    def act_fn(self, name, bits):
        r = self.ranges.setdefault(name, _EmaRange(bits, self.mode["activations"], self.ema_decay))
        return r

    def _prepare_extra(self, model):
        if self.quantize_inputs and self.bits_inputs is not None:
            r = self.ranges.setdefault("<input>", _EmaRange(self.bits_inputs, self.mode["activations"],
                                                            self.ema_decay))

            def pre(m, args):
                return (r(args[0], m.training),) + tuple(args[1:])
            self._handles.append(model.register_forward_pre_hook(pre))

    def state_dict(self):
        return {"prepared": self.prepared, "ranges": {k: r.state() for k, r in self.ranges.items()}}

    def load_state_dict(self, state):
        saved = state.get("ranges", {})
        super().load_state_dict(state)
        for k, s in saved.items():
            if k in self.ranges:
                self.ranges[k].load(s)


@QUANTIZERS.register
class DorefaQuantizer(Quantizer):
    """DoReFa-Net: tanh-normalized k-bit weights, ReLU outputs clipped to [0, 1] and rounded."""

    def __init__(self, model, optimizer=None, bits_activations=32, bits_weights=32, bits_bias=None,
                 overrides=None):
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides)

    def weight_fn(self, name, bits):
        return lambda w: fq.dorefa_weight(w, bits)

    def act_fn(self, name, bits):
        return lambda x, training: fq.clipped_linear(x, bits, 1.0)


@QUANTIZERS.register
class PACTQuantizer(Quantizer):
    """PACT: ReLU outputs clipped at a learned alpha per layer (``act_clip_init_val``), with
    ``act_clip_decay`` as the alphas' L2 weight decay (the optimizer's own when null); DoReFa
    weights, as Distiller's PACTQuantizer."""

    def __init__(self, model, optimizer=None, bits_activations=32, bits_weights=32, bits_bias=None,
                 overrides=None, act_clip_init_val=8.0, act_clip_decay=None):
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides)
        for key, v in (("act_clip_init_val", act_clip_init_val), ("act_clip_decay", act_clip_decay)):
            if v is None and key == "act_clip_decay":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                    v < 0 or (key == "act_clip_init_val" and v == 0):
                raise ComponentArgError(key, f"must be a number {'> 0' if key == 'act_clip_init_val' else '>= 0 or null'}; got {v!r}")
        self.init_val = float(act_clip_init_val)
        self.decay = act_clip_decay
        self.clips: Dict[str, nn.Parameter] = {}

    def weight_fn(self, name, bits):
        return lambda w: fq.dorefa_weight(w, bits)

    def act_fn(self, name, bits):
        device = next(unwrap(self.model).parameters()).device
        alpha = self.clips.setdefault(name, nn.Parameter(torch.tensor(self.init_val, device=device)))
        return lambda x, training: fq.clipped_linear(x, bits, alpha)

    def new_parameters(self):
        return list(self.clips.values())

    def param_group(self, params):
        group = {"params": params}
        if self.decay is not None:
            group["weight_decay"] = float(self.decay)
        return group

    def state_dict(self):
        return {"prepared": self.prepared,
                "clips": {k: float(p.detach()) for k, p in self.clips.items()}}

    def load_state_dict(self, state):
        if state.get("prepared"):
            raise ValueError("a PACT run cannot be resumed after its quantizer started: its learned "
                             "clips are an extra optimizer param group the checkpoint's optimizer "
                             "state does not fit; resume from a checkpoint before the start epoch")
