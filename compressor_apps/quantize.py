"""Post-training quantization in the app: ``--quantize-eval`` and Distiller's ``--qe-*`` flags.

``add_quantization_args`` adds the flags (Distiller's names and short forms); ``QEConfig.from_args``
maps the ones the torchao PT2E backend honours and refuses the rest with a one-line reason
(``UsageError``, exit code 2). ``quantize_and_evaluate`` removes a schedule's QAT fake
quantization, calibrates the int8 model on training batches, evaluates it on the test set and
writes ``quantized.pt2`` + ``quantized.json`` in the run folder (docs/methods/quantization.md).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .run_config import UsageError

log = logging.getLogger("compressor.app")

MODES = {"sym": "SYMMETRIC", "sym_restr": "SYMMETRIC", "asym_s": "ASYMMETRIC_SIGNED",
         "asym_u": "ASYMMETRIC_UNSIGNED"}
DEFAULT_BATCHES = 10

#: flag dest -> (the flag, why it is refused); refused when given a value other than its default
REFUSED = {
    "qe_bits_accum": ("--qe-bits-accum", "the backend accumulates in int32; only 32 is valid"),
    "qe_clip_n_stds": ("--qe-clip-n-stds", "n_std clipping is not offered; "
                                           "valid --qe-clip-acts: none (min/max), histogram"),
    "qe_no_clip_layers": ("--qe-no-clip-layers", "there is no per-layer clipping to turn off; "
                                                 "use --qe-no-quant-layers to keep layers float"),
    "qe_scale_approx_bits": ("--qe-scale-approx-bits", "the backend requantizes with its own "
                                                       "float scales; there is no fixed-point approximation to set"),
    "qe_save_fp_weights": ("--qe-save-fp-weights", "the float weights are the run's own checkpoint; "
                                                   "quantized.pt2 holds the int8 ones"),
    "qe_stats_file": ("--qe-stats-file", "statistics files are not read; calibrate with "
                                         "--qe-calibration (batches or a fraction)"),
    "qe_dynamic": ("--qe-dynamic", "only static int8 (calibrated activation ranges) is exported"),
    "qe_config_file": ("--qe-config-file", "PostTrainLinearQuantizer YAML is not read; give the "
                                           "settings as --qe-* flags"),
    "qe_lapq": ("--qe-lapq", "LAPQ (coordinate search of the ranges) is not implemented; use "
                             "--qe-clip-acts histogram"),
}


def add_quantization_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "post-training quantization (int8 through torchao PT2E; docs/methods/quantization.md)")
    g.add_argument("--quantize-eval", "--qe", action="store_true",
                   help="after training (or instead of it, with --evaluate), calibrate and evaluate "
                        "an int8 model and save it as quantized.pt2 in the run folder")
    g.add_argument("--qe-calibration", type=float, default=None, metavar="N|FRAC",
                   help=f"calibration batches of the training set: a count (>= 1) or a fraction "
                        f"(< 1) of them (default: {DEFAULT_BATCHES})")
    g.add_argument("--qe-mode", "--qem", choices=sorted(MODES), default=None,
                   help="mode of weights and activations (default: asym_u activations, sym weights)")
    g.add_argument("--qe-mode-acts", "--qema", choices=sorted(MODES), default=None,
                   help="activation mode (overrides --qe-mode)")
    g.add_argument("--qe-mode-wts", "--qemw", choices=sorted(MODES), default=None,
                   help="weight mode (overrides --qe-mode); the backend takes sym only")
    g.add_argument("--qe-bits-acts", "--qeba", type=int, default=8, metavar="N", help="2..8")
    g.add_argument("--qe-bits-wts", "--qebw", type=int, default=8, metavar="N", help="2..8")
    g.add_argument("--qe-bits-accum", type=int, default=32, metavar="N", help="32 only")
    g.add_argument("--qe-clip-acts", "--qeca", default="none",
                   choices=("none", "avg", "n_std", "gauss", "laplace", "histogram"),
                   help="none: min/max ranges; histogram: torchao's L2 range search (new); "
                        "avg, n_std, gauss, laplace are refused")
    g.add_argument("--qe-clip-n-stds", type=float, default=None, help="refused")
    g.add_argument("--qe-no-clip-layers", "--qencl", nargs="+", default=None, metavar="LAYER",
                   help="refused")
    g.add_argument("--qe-no-quant-layers", "--qenql", nargs="+", default=None, metavar="LAYER",
                   help="module names kept in float")
    g.add_argument("--qe-per-channel", "--qepc", action="store_true",
                   help="per-channel weights (per-tensor without it, as in Distiller)")
    g.add_argument("--qe-scale-approx-bits", "--qesab", type=int, default=None, help="refused")
    g.add_argument("--qe-save-fp-weights", action="store_true", help="refused")
    g.add_argument("--qe-convert-pytorch", "--qept", action="store_true",
                   help="accepted: the int8 model is always a native PyTorch (torch.export) program")
    g.add_argument("--qe-pytorch-backend", choices=("fbgemm", "qnnpack"), default="fbgemm",
                   help="fbgemm (x86) only")
    g.add_argument("--qe-stats-file", default=None, metavar="PATH", help="refused")
    g.add_argument("--qe-dynamic", action="store_true", help="refused")
    g.add_argument("--qe-config-file", default=None, metavar="PATH", help="refused")
    g.add_argument("--qe-lapq", "--qe-coordinate-search", action="store_true", help="refused")


@dataclass(frozen=True)
class QEConfig:
    enabled: bool = False
    calibration: Optional[float] = None
    settings: object = None     # ptq.PTQSettings when enabled

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "QEConfig":
        given = [f for f in vars(args) if f.startswith("qe_") and _given(args, f)]
        if not getattr(args, "quantize_eval", False):
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')} needs --quantize-eval")
            return cls()
        for dest, (flag, why) in REFUSED.items():
            if _given(args, dest):
                raise UsageError(f"{flag} is not supported: {why}")
        if args.qe_clip_acts not in ("none", "histogram"):
            raise UsageError(f"--qe-clip-acts {args.qe_clip_acts} is not supported: valid: none "
                             f"(min/max ranges), histogram (torchao's L2 range search)")
        if args.qe_pytorch_backend != "fbgemm":
            raise UsageError("--qe-pytorch-backend qnnpack is not supported: the int8 model is "
                             "built for x86 (torchao's X86InductorQuantizer); valid: fbgemm")
        cal = args.qe_calibration
        if cal is not None and not (math.isfinite(cal) and (0 < cal < 1 or (cal >= 1 and cal == int(cal)))):
            raise UsageError(f"--qe-calibration must be a whole number of batches >= 1 or a "
                             f"fraction in (0, 1); got {cal}")
        acts = MODES[args.qe_mode_acts or args.qe_mode or "asym_u"]
        wts = MODES[args.qe_mode_wts or args.qe_mode or "sym"]
        if wts != "SYMMETRIC":
            raise UsageError(f"--qe-mode-wts {args.qe_mode_wts or args.qe_mode} is not supported: "
                             f"torchao's x86 quantizer takes symmetric weights only; valid: sym, "
                             f"sym_restr")
        for flag, v in (("--qe-bits-acts", args.qe_bits_acts), ("--qe-bits-wts", args.qe_bits_wts)):
            if not 2 <= v <= 8:
                raise UsageError(f"{flag} must be 2..8 for the int8 model; got {v}")
        from compressor.quantization.ptq import PTQSettings
        settings = PTQSettings(bits_activations=args.qe_bits_acts, bits_weights=args.qe_bits_wts,
                               mode_activations=acts, mode_weights=wts,
                               per_channel=bool(args.qe_per_channel),
                               observer="histogram" if args.qe_clip_acts == "histogram" else "minmax",
                               float_layers=tuple(args.qe_no_quant_layers or ()))
        return cls(True, cal, settings)

    def n_batches(self, available: int) -> int:
        if self.calibration is None:
            return min(DEFAULT_BATCHES, available)
        if self.calibration < 1:
            return max(1, int(round(self.calibration * available)))
        return min(int(self.calibration), available)


def _given(args, dest) -> bool:
    defaults = {"qe_bits_acts": 8, "qe_bits_wts": 8, "qe_bits_accum": 32, "qe_clip_acts": "none",
                "qe_pytorch_backend": "fbgemm"}
    v = getattr(args, dest)
    return v != defaults.get(dest) and v not in (None, False)


def top1(model, loader, device) -> Tuple[float, int]:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x.to(device))
            correct += int((out.argmax(1).cpu() == y).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1), total


def quantize_and_evaluate(qe: QEConfig, model, scheduler, train_loader, test_loader, device,
                          run_dir: Optional[str]) -> float:
    """Int8 PTQ of ``model`` (its QAT fake quantization removed first); returns the int8 top-1."""
    from compressor.quantization import find_quantizer, ptq
    quantizer = find_quantizer(scheduler) if scheduler is not None else None
    if quantizer is not None and quantizer.prepared:
        quantizer.release()
        log.info("Removed the schedule's fake quantization (%s) before the int8 conversion",
                 type(quantizer).__name__)
    model = model.to("cpu").eval()
    n = qe.n_batches(len(train_loader))
    calib = []
    for i, (x, _) in enumerate(train_loader):
        if i >= n:
            break
        calib.append(x)
    t = time.time()
    try:
        gm = ptq.quantize_int8(model, calib[0], calib, qe.settings)
    except ValueError as e:
        raise UsageError(f"--quantize-eval: {e}") from None
    except Exception as e:   # torch.export or torchao refusing the model
        raise UsageError(f"--quantize-eval: the model cannot be quantized by torchao PT2E: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    log.info("Quantized to int8 with %d calibration batches in %.1f s", len(calib), time.time() - t)
    acc, seen = top1(gm, test_loader, "cpu")
    log.info("==> int8 Top1: %.3f (%d test images)", acc, seen)
    if run_dir is not None:
        meta = {"top1": acc, "test_images": seen, "calibration_batches": len(calib),
                "settings": ptq.settings_dict(qe.settings), "input_shape": list(calib[0].shape[1:]),
                "format": "torch.export program (torch.export.load); quantize/dequantize ops of torchao PT2E"}
        path = ptq.save_int8(gm, calib[0], os.path.join(run_dir, "quantized.pt2"), meta)
        log.info("Saved the int8 model to %s (and quantized.json)", path)
    return acc
