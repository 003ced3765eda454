"""Export a trained (possibly thinned) network as a ``torch.export`` program that runs without
this library: fold batch norms, optionally quantize to int8 after calibration, save a ``.pt2``.

The steps: ``fold_batch_norms`` (exact); the model is already thinned if a thinning policy ran
(thinning changes the modules themselves, so there is nothing to replay); with ``int8=True``,
post-training quantization with torchao's PT2E flow (``prepare_pt2e`` / ``convert_pt2e``, the
``X86InductorQuantizer`` with its default config: int8 per-channel symmetric weights, int8
per-tensor activations, observers fed the calibration batches); then ``torch.export.export``
with a dynamic batch dimension and ``torch.export.save``.

Loading needs only torch: a float program as it is; an int8 program holds
``quantized_decomposed`` ops, registered by ``import torch.ao.quantization.fx._decomposed`` (a
torch module; torchao registers them too), which must come before ``torch.export.load``
(``load_program`` imports torchao's PT2E module, which does).  The int8 graph is a reference (quantize / dequantize around float
ops): it is fast only after ``torch.compile(m, dynamic=False)`` with
``torch._inductor.config.freezing = True``,
which fuses it into int8 oneDNN kernels; eager it is slower than float.  See docs/deploy.md.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import CompressorError
from .fold_bn import FoldReport, fold_batch_norms

__all__ = ["ExportError", "DeployResult", "quantize_int8", "export_program", "export_deploy",
           "load_program", "latency_ms", "count_macs", "program_latency"]

PathLike = Union[str, "os.PathLike[str]"]
MAX_BATCH = 4096


class ExportError(CompressorError, ValueError):
    """The model cannot be exported as asked (the message says why and what is valid)."""


def _dynamic_batch(example: torch.Tensor):
    if example.dim() == 0:
        raise ExportError("export: the example input must have a batch dimension; got a scalar")
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _import_torchao_pt2e():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:   # pragma: no cover - torchao is installed where int8 is tested
        raise ExportError(f"int8 export needs torchao (pip install torchao): {e}") from None
    return prepare_pt2e, convert_pt2e, xiq


def quantize_int8(model: nn.Module, example: torch.Tensor,
                  calibration: Iterable[torch.Tensor]) -> nn.Module:
    """Post-training int8 quantization of an eval-mode float model (torchao PT2E, X86 config).

    ``calibration``: input batches (at least one) the observers see.  Returns the converted
    ``GraphModule`` (reference int8 graph; see the module docstring for how it becomes fast).
    """
    prepare_pt2e, convert_pt2e, xiq = _import_torchao_pt2e()
    model = model.eval()
    captured = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(example)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(captured, quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
            seen += 1
    if seen == 0:
        raise ExportError("int8 export: no calibration batches; give at least one input batch")
    return convert_pt2e(prepared)


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode with a dynamic batch dimension."""
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model = model.eval()
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(example))


@dataclass
class DeployResult:
    """What ``export_deploy`` wrote: ``path``, its ``size_bytes``; the float ``model`` after
    folding (for MACs and parameter counts), the ``program`` saved, the ``fold`` report, ``int8``."""

    path: Path
    size_bytes: int
    model: nn.Module
    program: torch.export.ExportedProgram
    fold: FoldReport
    int8: bool
    params: int = 0
    macs: int = 0
    latency_ms: Dict[str, float] = field(default_factory=dict)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one sample (``compressor.summary``: convolutions and linear layers)."""
    from ..summary import compute_totals, model_performance_summary
    return int(compute_totals(model_performance_summary(model, example[:1]))["MACs"])


def export_deploy(model: nn.Module, example: torch.Tensor, path: PathLike, *, int8: bool = False,
                  calibration: Optional[Iterable[torch.Tensor]] = None,
                  fold: bool = True) -> DeployResult:
    """Fold batch norms (``fold``), quantize (``int8``, on ``calibration`` batches), export with a
    dynamic batch dimension and save the program to ``path`` (``.pt2``) atomically.

    A batch norm that cannot be folded (e.g. a pre-activation block's, whose input the shortcut
    also reads) stays in the program and is listed in ``result.fold.skipped``.
    ``model`` is not changed (folding works on a copy).  ``example`` is one input batch; its
    shape after the batch dimension is fixed in the program.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ExportError(f"export: {path}: the file name must end in .pt2 "
                          f"(torch.export.save's format)")
    if path.parent and not path.parent.is_dir():
        raise ExportError(f"export: {path}: folder {path.parent} does not exist")
    if int8 and calibration is None:
        raise ExportError("int8 export: calibration batches are needed (calibration=...)")
    was_training = model.training
    model.eval()
    try:
        if fold:
            folded, report = fold_batch_norms(model, shared="skip")
        else:
            import copy
            folded, report = copy.deepcopy(model), FoldReport()
        folded.eval()
        target = quantize_int8(folded, example, calibration) if int8 else folded
        program = export_program(target, example)
    finally:
        model.train(was_training)
    atomic_write(path, lambda f: torch.export.save(program, f))
    params = sum(p.numel() for p in folded.parameters())
    return DeployResult(path=path, size_bytes=path.stat().st_size, model=folded, program=program,
                        fold=report, int8=int8, params=params, macs=count_macs(folded, example))


def load_program(path: PathLike) -> torch.export.ExportedProgram:
    """``torch.export.load``, after importing torchao's quantized ops when torchao is installed
    (an int8 program needs them; a float one needs only torch)."""
    try:
        import torchao.quantization.pt2e  # noqa: F401  registers quantized_decomposed ops
    except ImportError:
        pass
    return torch.export.load(str(path))


def latency_ms(fn: Callable[[torch.Tensor], object], x: torch.Tensor, rounds: int = 20,
               warmup: int = 3) -> float:
    """Median wall milliseconds of ``fn(x)`` under ``torch.no_grad`` over ``rounds`` calls."""
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        for _ in range(rounds):
            t = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    n = len(times)
    return times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])


def program_latency(program: torch.export.ExportedProgram, sample_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 32), compiled: bool = False,
                    rounds: int = 20) -> Dict[str, float]:
    """Median milliseconds per forward pass of ``program`` at each batch size (random input of
    ``sample_shape`` per sample), eager or after ``torch.compile`` (inductor; an int8 program
    needs ``torch._inductor.config.freezing = True``, which the caller sets: this library does
    not change global settings).  Keys: ``"b1"``, ``"b32"``, ...  The compile time is not counted."""
    module = program.module()
    # dynamic=False: one static graph per batch size; inductor's int8 conv lowering fails on
    # the dynamic-batch recompile (torch 2.13: a stride assertion in qconv), static ones work.
    fn = torch.compile(module, dynamic=False) if compiled else module
    dtype = next((n.meta["val"].dtype for n in program.graph.nodes
                  if n.op == "placeholder" and "val" in n.meta
                  and n.name not in program.graph_signature.inputs_to_parameters
                  and n.name not in program.graph_signature.inputs_to_buffers), torch.float32)
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, *sample_shape, dtype=dtype)
        out[f"b{b}"] = latency_ms(fn, x, rounds=rounds)
    return out
