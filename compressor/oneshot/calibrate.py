"""Calibration passes: the inputs each pruned linear layer sees, collected block by block.

``run_sequential`` finds the model's stack of repeated blocks (the ``nn.ModuleList`` holding most
of the layers to prune: a decoder's ``model.layers``, an encoder's ``encoder.layer``), records the
first block's inputs on the calibration batches (a forward pre-hook that stops the forward there),
then for each block: runs it on those inputs with hooks on its layers (their input statistics),
lets the caller prune those layers, and runs it again so the *pruned* block's outputs become the
next block's inputs. Memory stays at one block's inputs for the calibration set plus the model.
Every block gets the keyword arguments the first block got (attention mask, position embeddings):
true of the Hugging Face decoders and encoders this serves. Layers outside the stack (or all of
them with ``sequential=False``, or in a model without such a stack) get their statistics from one
forward pass of the whole model, after the blocks.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import CompressorError


class CalibrationError(CompressorError, ValueError):
    """The calibration data or the model does not allow the calibration pass."""


class InputStats:
    """Running statistics of a linear layer's inputs (rows = tokens): the per-feature sum of
    squares (Wanda's ‖X_j‖²) and, when asked, ``Xᵀ X`` (SparseGPT's Hessian), in float64."""

    def __init__(self, features: int, hessian: bool):
        self.count = 0
        self.sq = torch.zeros(features, dtype=torch.float64)
        self.xtx = torch.zeros(features, features, dtype=torch.float64) if hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        self.count += x.shape[0]
        self.sq += (x * x).sum(0)
        if self.xtx is not None:
            self.xtx += x.T @ x

    def norms(self) -> torch.Tensor:
        return self.sq.sqrt()

    def hessian(self) -> torch.Tensor:
        return self.xtx / max(self.count, 1)


Batch = Any
PruneLayer = Callable[[str, nn.Module, InputStats], None]
Progress = Callable[[int, int, str], None]


def call_model(model: nn.Module, batch: Batch):
    """A batch is what the model takes: a tensor, a tuple of positional inputs, or a dict of kwargs."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def find_blocks(model: nn.Module, layer_names: Sequence[str]) -> Optional[Tuple[str, nn.ModuleList]]:
    """The ``nn.ModuleList`` (2+ entries) holding the most of ``layer_names``; None when none does."""
    best, best_count = None, 0
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            prefix = path + "." if path else ""
            count = sum(1 for n in layer_names if n.startswith(prefix))
            if count > best_count:
                best, best_count = (path, module), count
    return best


class _Stop(Exception):
    pass


def _collect(layers: Mapping[str, nn.Module], hessian: bool, run: Callable[[], None]):
    found = {name: InputStats(m.in_features, hessian) for name, m in layers.items()}
    handles = [m.register_forward_hook(lambda mod, args, out, s=found[name]: s.add(args[0]))
               for name, m in layers.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    for name, s in found.items():
        if s.count == 0:
            raise CalibrationError(f"layer '{name}' did not run on the calibration data; valid: "
                                   f"layers that the model's forward pass uses")
    return found


def _first_block_inputs(model, block, batches) -> List[Tuple[tuple, dict]]:
    seen: List[Tuple[tuple, dict]] = []

    def hook(mod, args, kwargs):
        seen.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                call_model(model, batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    return seen


def run_sequential(model: nn.Module, layers: Mapping[str, nn.Module], batches: Sequence[Batch],
                   prune_layer: PruneLayer, hessian: bool = False,
                   sequential: bool = True, progress: Optional[Progress] = None) -> None:
    """Collect each layer's input statistics and call ``prune_layer(name, module, stats)``."""
    if not batches:
        raise CalibrationError("no calibration batches; valid: at least one batch of model inputs")
    was_training = model.training
    model.eval()
    remaining = dict(layers)
    try:
        with torch.no_grad():
            found = find_blocks(model, list(layers)) if sequential else None
            if found is not None:
                path, blocks = found
                _check_chained(model, blocks, path, batches[0])
                inputs = _first_block_inputs(model, blocks[0], batches)
                for i, block in enumerate(blocks):
                    prefix = f"{path}.{i}." if path else f"{i}."
                    mine = {n: m for n, m in remaining.items() if n.startswith(prefix)}
                    if mine:
                        def run(block=block, inputs=inputs):
                            for args, kwargs in inputs:
                                block(*args, **kwargs)
                        for name, s in _collect(mine, hessian, run).items():
                            prune_layer(name, mine[name], s)
                            del remaining[name]
                    inputs = [_next_inputs(block, args, kwargs, path, i) for args, kwargs in inputs]
                    if progress:
                        progress(i + 1, len(blocks), path)
            if remaining:
                def run_all():
                    for batch in batches:
                        call_model(model, batch)
                for name, s in _collect(remaining, hessian, run_all).items():
                    prune_layer(name, remaining[name], s)
                if progress:
                    progress(1, 1, "model")
    finally:
        model.train(was_training)


def _check_chained(model, blocks, path, batch) -> None:
    """Block 1's input must be block 0's output (residuals inside the blocks, as in Hugging Face
    layers); checked on one batch, since running blocks alone relies on it."""
    seen = {}

    def record(i):
        def hook(mod, args, kwargs):
            seen.setdefault(i, (args, kwargs))
        return hook

    handles = [blocks[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in (0, 1)]
    try:
        call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    if 1 not in seen or not seen[1][0]:
        return
    args, kwargs = seen[0]
    out = _next_inputs(blocks[0], args, kwargs, path, 0)[0][0]
    nxt = seen[1][0][0]
    if not (isinstance(out, torch.Tensor) and out.shape == nxt.shape
            and torch.allclose(out, nxt, rtol=1e-5, atol=1e-6 * float(nxt.abs().max()))):
        raise CalibrationError(f"'{path}.1' does not take '{path}.0''s output as its input (a "
                               f"residual or other code between the blocks), so the blocks cannot "
                               f"be calibrated one by one; valid: set 'sequential: false' on the pruner")


def _next_inputs(block, args, kwargs, path, i):
    if not args:
        raise CalibrationError(f"block '{path}.{i}' takes its input as a keyword, so it cannot be run "
                               f"alone; valid: set 'sequential: false' on the pruner")
    out = block(*args, **kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return (out,) + tuple(args[1:]), kwargs
