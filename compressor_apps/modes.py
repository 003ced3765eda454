"""The app's modes that replace training: summaries, ONNX export, thinning a checkpoint,
sensitivity analysis; and the scratch-baseline set-up."""
from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from compressor import checkpoint as ckpt_io
from compressor import models, summary
from compressor.atomic import atomic_write
from compressor import sensitivity as sens
from compressor.thinning import analyze, contract_model
from .common import table, weight_stats
from .run_config import RunConfig, UsageError

log = logging.getLogger("compressor.app")


def total_macs(model: nn.Module, shape) -> int:
    df = summary.model_performance_summary(model, torch.zeros(1, *shape))
    return int(summary.compute_totals(df)["MACs"])


def run_summaries(config: RunConfig, model: nn.Module, dataset: str) -> None:
    shape = models.input_shape(dataset)
    for what in config.summary:
        if what == "sparsity":
            df, total, _ = weight_stats(model)
            print("Parameters:\n" + table(df) + f"\nTotal sparsity: {total:.2f}")
        elif what == "compute":
            df = summary.model_performance_summary(model, torch.zeros(1, *shape))
            print(table(df) + f"\nTotal MACs: {int(summary.compute_totals(df)['MACs']):,}")
        elif what == "model":
            print(model)
        elif what == "modules":
            print(table(summary.model_summary_modules(model)))
        elif what == "thinning":
            print(analyze(model, shape).text())


def export_onnx(config: RunConfig, model: nn.Module, dataset: str) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("--export-onnx needs the onnx package: pip install 'compressor[onnx]'") from None
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, *models.input_shape(dataset)),), config.export_onnx)
    log.info("Exported the model to %s", config.export_onnx)


def thinnify(config: RunConfig, model: nn.Module, optimizer, scheduler, ckpt: dict, source: str,
             run_dir: str, dataset: str) -> str:
    """Thin the loaded checkpoint's model and save it; returns the new checkpoint's path."""
    shape = models.input_shape(dataset)
    before = summary.model_performance_summary(model, torch.zeros(1, *shape))
    result = contract_model(model, shape, optimizer=optimizer, store=scheduler)
    after = summary.model_performance_summary(model, torch.zeros(1, *shape))
    log.info("Compute before thinning:\n%s\nTotal MACs: %s", table(before),
             f"{int(summary.compute_totals(before)['MACs']):,}")
    log.info("Compute after thinning:\n%s\nTotal MACs: %s", table(after),
             f"{int(summary.compute_totals(after)['MACs']):,}")
    if not result.changed:
        log.info("Nothing to remove: no filter or channel of %s is entirely zero", source)
    for layer, (removed, total) in result.removed.items():
        log.info("  %s: removed %d of %d channels", layer, removed, total)
    if result.nonzero_bias_removed:
        log.warning("%d removed channels carried a non-zero bias or batch-norm shift: the thinned "
                    "model differs slightly from the masked one", result.nonzero_bias_removed)
    stem = os.path.basename(source).split(".")[0]
    path = os.path.join(run_dir, f"{stem}_thinned_checkpoint.pth.tar")
    ckpt_io.save_checkpoint(path, model, optimizer, scheduler, arch=config.arch, dataset=ckpt.get("dataset"),
                            epoch=ckpt.get("epoch"), extras=ckpt.get("extras", {}))
    log.info("Saved the thinned checkpoint to %s", path)
    return path


def sensitivity(config: RunConfig, model: nn.Module, loader, criterion, device, run_dir: str) -> None:
    levels = sens.sensitivity_range(*config.sense_range)
    log.info("Sensitivity analysis (%s) at %d levels %s", config.sense, len(levels),
             ", ".join(f"{x:g}" for x in levels))
    df = sens.perform_sensitivity_analysis(
        model, None, levels, sens.evaluator(loader, criterion, device), config.sense)
    log.info("Top-1 by layer and sparsity:\n%s", summary.render(sens.sensitivity_table(df)))
    sens.sensitivities_to_csv(df, os.path.join(run_dir, "sensitivity.csv"))
    try:
        sens.sensitivities_to_png(df, os.path.join(run_dir, "sensitivity.png"))
    except sens.SensitivityError as e:
        log.info("No plot: %s", e)
    ratios = sens.ratios_from_sensitivity(df, config.sense_max_drop)
    text = sens.ratios_to_schedule(ratios, config.sense, model=model)
    atomic_write(os.path.join(run_dir, "sensitivity_schedule.yaml"), lambda f: f.write(text), binary=False)
    log.info("Per-layer ratios within %.2f top-1 points: %s; schedule written to %s",
             config.sense_max_drop, ", ".join(f"{k}={v:g}" for k, v in ratios.items()),
             os.path.join(run_dir, "sensitivity_schedule.yaml"))


def reinitialize(model: nn.Module) -> None:
    """Fresh random weights for every layer (the scratch baselines); shapes stay as they are."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()


def scratch_epochs(config: RunConfig, model: nn.Module, dataset: str) -> int:
    """Scratch-B: as many epochs as give the same total compute as the dense model's run."""
    shape = models.input_shape(dataset)
    dense = models.create_model(config.scratch_dense_arch or config.arch, dataset)
    ratio = total_macs(dense, shape) / max(total_macs(model, shape), 1)
    epochs = int(math.ceil(config.epochs * ratio))
    log.info("Scratch-B: dense/thinned MACs = %.2f, so %d epochs instead of %d", ratio, epochs, config.epochs)
    return epochs
