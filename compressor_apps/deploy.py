"""The app's ``--export-deploy`` flags: at the end of a run (after training and the test, or after
``--evaluate``), fold batch norms, keep the (possibly thinned) network, optionally quantize it to
int8 on a few training batches, and save a ``torch.export`` program (``.pt2``) that runs without
this library; log its size, parameters, MACs and latency at batch 1 and 32, and write them to
``deploy_report.json`` in the run folder.  docs/deploy.md says how to load the file.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from compressor import models
from compressor.atomic import atomic_write
from compressor.deploy import export_deploy, program_latency
from .run_config import UsageError

log = logging.getLogger("compressor.app")

DEFAULT_CALIB_BATCHES = 8
REPORT_NAME = "deploy_report.json"


def add_deploy_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("deployable export at the end of the run (docs/deploy.md)")
    g.add_argument("--export-deploy", default=None, metavar="PATH",
                   help="after training (or --evaluate), fold batch norms and save the (thinned) "
                        "model as a torch.export program PATH (.pt2) that runs without compressor")
    g.add_argument("--export-deploy-int8", action="store_true",
                   help="quantize the exported model to int8 (torchao PT2E, X86 config); loading "
                        "it then needs torchao")
    g.add_argument("--export-deploy-calib-batches", type=int, default=None, metavar="N",
                   help=f"training batches that calibrate int8 (default: {DEFAULT_CALIB_BATCHES})")


@dataclass(frozen=True)
class DeployConfig:
    """The checked ``--export-deploy*`` values; ``enabled`` when a path is given."""
    path: Optional[str] = None
    int8: bool = False
    calib_batches: int = DEFAULT_CALIB_BATCHES

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DeployConfig":
        path = getattr(args, "export_deploy", None)
        int8 = bool(getattr(args, "export_deploy_int8", False))
        calib = getattr(args, "export_deploy_calib_batches", None)
        if path is None:
            if int8 or calib is not None:
                flag = "--export-deploy-int8" if int8 else "--export-deploy-calib-batches"
                raise UsageError(f"{flag} needs --export-deploy PATH (the .pt2 file to write)")
            return cls()
        config = cls(path=path, int8=int8,
                     calib_batches=DEFAULT_CALIB_BATCHES if calib is None else calib)
        config.check()
        return config

    def check(self) -> None:
        if not self.path.endswith(".pt2"):
            raise UsageError(f"--export-deploy {self.path}: the file name must end in .pt2 "
                             f"(a torch.export program)")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise UsageError(f"--export-deploy {self.path}: folder {folder} does not exist; "
                             f"create it or name another")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"--export-deploy {self.path}: no permission to write in {folder}")
        if self.calib_batches < 1:
            raise UsageError(f"--export-deploy-calib-batches must be >= 1; got {self.calib_batches}")
        if self.int8:
            try:
                import torchao.quantization.pt2e  # noqa: F401
            except ImportError:
                raise UsageError("--export-deploy-int8 needs torchao: pip install torchao") from None


    def check_mode(self, run) -> None:
        """``UsageError`` when the run's mode ends before the export would happen."""
        for flag, on in (("--summary", run.summary), ("--export-onnx", run.export_onnx),
                         ("--thinnify", run.thinnify), ("--sense", run.sense)):
            if on:
                raise UsageError(f"--export-deploy cannot be used with {flag}, which exits "
                                 f"before the export; it runs after training or --evaluate")


def export_at_end(config: DeployConfig, model: nn.Module, loader, dataset: str,
                  run_dir: Optional[str]) -> dict:
    """Export ``model`` as ``config`` asks; log and return the report (also written as JSON)."""
    shape = tuple(models.input_shape(dataset))
    device = next(model.parameters()).device
    cpu_model = model.to("cpu") if device.type != "cpu" else model
    calibration = None
    if config.int8:
        calibration = [x.cpu() for x, *_ in itertools.islice(iter(loader), config.calib_batches)]
    example = torch.zeros(2, *shape)
    result = export_deploy(cpu_model, example, config.path, int8=config.int8,
                           calibration=calibration)
    if config.int8:   # the int8 graph is fast only compiled with frozen weights (docs/deploy.md)
        torch._inductor.config.freezing = True
    latency = program_latency(result.program, shape, compiled=config.int8)
    if device.type != "cpu":
        model.to(device)
    report = {"path": str(result.path), "int8": config.int8, "size_bytes": result.size_bytes,
              "params": result.params, "macs": result.macs,
              "batch_norms_folded": len(result.fold.folded),
              "batch_norms_left": dict(result.fold.skipped),
              "latency_ms": latency, "latency_mode": "compiled" if config.int8 else "eager",
              "threads": torch.get_num_threads(),
              "loads_with": ("torch + import torch.ao.quantization.fx._decomposed" if config.int8
                             else "torch")}
    log.info("Deployable model (%s) saved to %s: %s bytes, %s parameters, %s MACs per sample; "
             "%d batch norms folded, %d left", "int8" if config.int8 else "float", result.path,
             f"{result.size_bytes:,}", f"{result.params:,}", f"{result.macs:,}",
             len(result.fold.folded), len(result.fold.skipped))
    for bn, why in result.fold.skipped.items():
        log.info("  batch norm %s not folded: %s", bn, why)
    log.info("Its latency (%s, %d threads): %s", report["latency_mode"], torch.get_num_threads(),
             ", ".join(f"batch {k[1:]} {v:.3f} ms" for k, v in latency.items()))
    if run_dir:
        atomic_write(os.path.join(run_dir, REPORT_NAME),
                     lambda f: f.write(json.dumps(report, indent=2) + "\n"), binary=False)
    return report
