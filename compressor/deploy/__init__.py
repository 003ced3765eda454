"""Deployment: fold batch norms, export a (thinned, optionally int8) network as a ``torch.export``
program that runs without this library, and measure it.  See docs/deploy.md."""
from .export import (DeployResult, ExportError, count_macs, export_deploy, export_program,
                     latency_ms, load_program, program_latency, quantize_int8)
from .fold_bn import FoldError, FoldReport, fold_batch_norms

__all__ = ["DeployResult", "ExportError", "count_macs", "export_deploy", "export_program",
           "FoldError", "FoldReport", "fold_batch_norms", "latency_ms", "load_program", "program_latency",
           "quantize_int8"]
