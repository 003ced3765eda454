"""Post-training int8 quantization through torchao's PT2E flow, and its safe save and load.

API: ``quantize_int8(model, example, batches, settings)`` -> a converted ``torch.fx.GraphModule``
(quantize/dequantize around int8 weights, ready for ``torch.compile`` with inductor freezing);
``save_int8(gm, example, path, meta)`` -> ``path`` (.pt2, ``torch.export.save``) and a JSON beside
it; ``load_int8(path)`` -> a callable module. ``PTQSettings`` holds bits, modes, per-channel, the
layers kept float and the activation observer.

The model is captured with ``torch.export`` (batch dimension dynamic), annotated by torchao's
``X86InductorQuantizer`` with a quantization config built from the settings (its default, which
inductor lowers to int8 kernels, is 8-bit asymmetric unsigned activations and 8-bit symmetric
per-channel weights), calibrated on the given batches and converted. torchao logs "Failed to load
_C_*.so" for its optional CUDA/fp8 kernels when imported on a CPU-only build; those kernels are not
used here and the messages are silenced while importing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from . import fake_quant as fq


@dataclass(frozen=True)
class PTQSettings:
    bits_activations: int = 8
    bits_weights: int = 8
    mode_activations: str = fq.ASYMMETRIC_UNSIGNED
    mode_weights: str = fq.SYMMETRIC
    per_channel: bool = True
    observer: str = "minmax"           # minmax (Distiller's 'none' clipping) | histogram
    float_layers: Tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        for key in ("bits_activations", "bits_weights"):
            v = getattr(self, key)
            if not isinstance(v, int) or not 2 <= v <= 8:
                raise ValueError(f"{key} must be 2..8 for the int8 export; got {v!r}")
        for key in ("mode_activations", "mode_weights"):
            if getattr(self, key) not in fq.MODES:
                raise ValueError(f"{key} must be one of {', '.join(fq.MODES)}")
        if self.mode_weights != fq.SYMMETRIC:
            raise ValueError("weights must be SYMMETRIC: torchao's x86 quantizer takes symmetric "
                             "(per-channel or per-tensor) int8 weights only")
        if self.observer not in ("minmax", "histogram"):
            raise ValueError("observer must be minmax or histogram")


@contextlib.contextmanager
def _quiet_import():
    names = ("torchao", "torch.utils._pytree")
    saved = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in zip(names, saved):
            logging.getLogger(n).setLevel(level)


def _torchao():
    with _quiet_import():
        from torchao.quantization.pt2e import observer as obs
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import QuantizationSpec
        from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer
    return obs, prepare_pt2e, convert_pt2e, QuantizationSpec, QuantizationConfig, X86InductorQuantizer


def quantization_config(s: PTQSettings):
    """The torchao QuantizationConfig that ``s`` describes (activations per tensor)."""
    obs, _, _, Spec, Config, _ = _torchao()
    eps = {"eps": 2 ** -12}
    qmin, qmax = fq.qrange(s.bits_activations, s.mode_activations)
    signed = s.mode_activations != fq.ASYMMETRIC_UNSIGNED
    act_obs = obs.HistogramObserver if s.observer == "histogram" else obs.MinMaxObserver
    act = Spec(dtype=torch.int8 if signed else torch.uint8, quant_min=qmin, quant_max=qmax,
               qscheme=torch.per_tensor_symmetric if s.mode_activations == fq.SYMMETRIC
               else torch.per_tensor_affine, is_dynamic=False,
               observer_or_fake_quant_ctr=act_obs.with_args(**eps))
    wmin, wmax = fq.qrange(s.bits_weights, s.mode_weights)
    if s.mode_weights == fq.ASYMMETRIC_UNSIGNED:   # int8 storage: shift the unsigned grid down
        wmin, wmax = wmin - 2 ** (s.bits_weights - 1), wmax - 2 ** (s.bits_weights - 1)
    sym = s.mode_weights == fq.SYMMETRIC
    wmin = -(2 ** (s.bits_weights - 1))   # the full signed range, as torchao's x86 default
    if s.per_channel:
        scheme = torch.per_channel_symmetric if sym else torch.per_channel_affine
        wobs = obs.PerChannelMinMaxObserver
    else:
        scheme = torch.per_tensor_symmetric if sym else torch.per_tensor_affine
        wobs = obs.MinMaxObserver
    weight = Spec(dtype=torch.int8, quant_min=wmin, quant_max=wmax, qscheme=scheme, ch_axis=0,
                  is_dynamic=False, observer_or_fake_quant_ctr=wobs.with_args(**eps))
    return Config(act, act, weight, None, False)


def capture(model: nn.Module, example: torch.Tensor):
    """``torch.export`` of ``model`` in eval mode with a dynamic batch dimension."""
    if not isinstance(model, torch.fx.GraphModule):
        model.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def quantize_int8(model: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor],
                  settings: PTQSettings = PTQSettings()) -> torch.fx.GraphModule:
    """Capture, annotate, calibrate on ``batches`` (input tensors) and convert ``model``."""
    settings.check()
    _, prepare_pt2e, convert_pt2e, _, _, X86InductorQuantizer = _torchao()
    if example.shape[0] < 2:
        example = torch.cat([example, example])   # a batch of 1 would be specialized
    gm = capture(model, example).module()
    quantizer = X86InductorQuantizer().set_global(quantization_config(settings))
    for name in settings.float_layers:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(gm, quantizer)
    seen = 0
    with torch.no_grad():
        for x in batches:
            prepared(x)
            seen += 1
    if seen == 0:
        raise ValueError("no calibration batches: give at least one")
    return convert_pt2e(prepared)


def save_int8(gm: torch.fx.GraphModule, example: torch.Tensor, path: str,
              meta: Optional[dict] = None) -> str:
    """Write the converted model as an exported program (``path``, .pt2) and ``meta`` as JSON
    beside it (``path`` with .json). Both load without unpickling code."""
    if example.shape[0] < 2:
        example = torch.cat([example, example])
    program = capture(gm, example)
    torch.export.save(program, path)
    with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(meta or {}, f, indent=2, sort_keys=True)
    return path


def load_int8(path: str) -> nn.Module:
    """The saved int8 model as a callable module (``torch.export.load``; no pickled code).

    Elsewhere, with torch alone: ``import torch.ao.quantization.fx._decomposed`` (it registers the
    ``quantized_decomposed`` quantize/dequantize ops the program calls), then
    ``torch.export.load(path).module()``; neither torchao nor compressor is needed.
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the q/dq ops)
    return torch.export.load(path).module()


def settings_dict(s: PTQSettings) -> dict:
    d = asdict(s)
    d["float_layers"] = list(s.float_layers)
    return d
