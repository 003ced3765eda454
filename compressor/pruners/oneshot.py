"""One-shot pruners calibrated on data: magnitude, Wanda and SparseGPT, unstructured or N:M.

Each prunes the linear layers named by ``weights`` once, when its policy fires, from a pass over
calibration batches (``compressor.oneshot.provide_calibration`` hands them in; the LM app does it
for you), block by block (``compressor.oneshot.calibrate``). The result is masks like any other
pruner's, so AGP, fine-tuning or thinning can follow in the same schedule.

* ``OneShotMagnitudePruner``: the lowest |W| of each layer (or of each N:M group); no data needed.
* ``WandaPruner`` (Sun et al., 2024): score |W_ij| · ‖X_j‖₂, compared within each output row.
* ``SparseGPTPruner`` (Frantar & Alistarh, 2023): OBS mask selection and reconstruction of the
  kept weights from the inputs' Hessian (so it also *changes* kept weights, as the paper does).

While calibrating, each layer's new mask is applied to its weight at once, so the next block's
inputs come from the pruned blocks (the papers' sequential setting). Ties: the lower position goes
first (``compressor.oneshot.select``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ComponentArgError
from ..oneshot.calibrate import CalibrationError, InputStats, run_sequential
from ..oneshot.select import nm_keep, unstructured_keep
from ..oneshot.sparsegpt import sparsegpt_prune
from ..registry import PRUNERS
from .base import Pruner
from .magnitude import check_sparsity


def _positive_int(key: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ComponentArgError(key, f"must be an integer >= {low}; got {value!r}")
    return value


class CalibratedPruner(Pruner):
    """Shared keys: ``weights``, and ``desired_sparsity`` (per layer) or ``n`` and ``m`` (N:M)."""

    needs_data = True        # the policy refuses to fire without calibration batches
    needs_hessian = False

    def __init__(self, name: str, weights: Sequence[str], desired_sparsity: Optional[float] = None,
                 n: Optional[int] = None, m: Optional[int] = None, calibration_samples: int = 128,
                 sequential: bool = True):
        super().__init__(name)
        if isinstance(weights, str):
            weights = [weights]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise ComponentArgError("weights", f"must be a non-empty list of weight names; got {weights!r}")
        self.weights = list(dict.fromkeys(weights))
        if (desired_sparsity is None) == (n is None and m is None):
            raise ComponentArgError("desired_sparsity", "give either desired_sparsity (a fraction per "
                                    "layer) or n and m (keep n of every m inputs), not both or neither")
        self.sparsity = None if desired_sparsity is None else check_sparsity(
            "desired_sparsity", desired_sparsity)
        self.nm = None
        if desired_sparsity is None:
            if n is None or m is None:
                raise ComponentArgError("n" if n is None else "m", "N:M sparsity needs both n and m "
                                        "(e.g. n: 2, m: 4 for 2:4)")
            n, m = _positive_int("n", n), _positive_int("m", m, 2)
            if n >= m:
                raise ComponentArgError("n", f"must be smaller than m ({m}); got {n}")
            self.nm = (n, m)
        self.calibration_samples = _positive_int("calibration_samples", calibration_samples)
        if not isinstance(sequential, bool):
            raise ComponentArgError("sequential", f"must be true or false; got {sequential!r}")
        self.sequential = sequential
        self.calibration: Optional[Sequence] = None   # set by compressor.oneshot.provide_calibration
        self.progress = None

    @property
    def param_names(self) -> List[str]:
        return self.weights

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        for name in self.weights:
            shape = tuple(params[name].shape)
            if len(shape) != 2:
                raise ComponentArgError("weights", f"parameter '{name}' of shape {shape} is not a "
                                                   f"Linear weight; valid: nn.Linear weights (2-D)")
            if self.nm and shape[1] % self.nm[1]:
                raise ComponentArgError("m", f"parameter '{name}' of shape {shape} has {shape[1]} "
                                             f"inputs, not a multiple of m={self.nm[1]}")

    def layer_keep(self, weight: torch.Tensor, stats: Optional[InputStats]):
        """(keep mask, new weight or None) for one layer."""
        raise NotImplementedError

    def masks(self, params, ctx) -> Dict[str, torch.Tensor]:
        model = ctx.model
        modules = dict(model.named_modules())
        layers: Dict[str, nn.Module] = {}
        for pname in self.weights:
            mod = modules.get(pname.rsplit(".", 1)[0])
            if not isinstance(mod, nn.Linear) or pname.rsplit(".", 1)[-1] != "weight":
                raise ComponentArgError("weights", f"'{pname}' is not the weight of an nn.Linear; "
                                                   f"valid: nn.Linear weights")
            layers[pname.rsplit(".", 1)[0]] = mod
        batches = None
        if self.needs_data:
            if self.calibration is None:
                raise CalibrationError(
                    f"pruner '{self.name}' ({type(self).__name__}) fired without calibration data; "
                    f"valid: call compressor.oneshot.provide_calibration(scheduler, batches) before "
                    f"its epoch, or run it from apps/compress_lm.py")
            batches = take_samples(self.calibration, self.calibration_samples)
        out: Dict[str, torch.Tensor] = {}

        def prune_layer(lname: str, module: nn.Module, stats: Optional[InputStats]) -> None:
            keep, new = self.layer_keep(module.weight.detach(), stats)
            with torch.no_grad():
                if new is not None:
                    module.weight.copy_(new)
                module.weight.mul_(keep)
            out[lname + ".weight"] = keep

        if batches is None:
            for lname, module in layers.items():
                prune_layer(lname, module, None)
        else:
            run_sequential(model, layers, batches, prune_layer, hessian=self.needs_hessian,
                           sequential=self.sequential, progress=self.progress)
        return out

    def _keep_from_scores(self, scores: torch.Tensor, per_row: bool) -> torch.Tensor:
        if self.nm is not None:
            return nm_keep(scores, *self.nm)
        return unstructured_keep(scores, self.sparsity, per_row)


def take_samples(batches, count: int) -> List:
    """The first ``count`` samples (dim 0 of each batch's tensors) of ``batches``, as batches."""
    out, have = [], 0
    for batch in batches:
        size = _batch_size(batch)
        if have + size > count:
            batch = _slice(batch, count - have)
            size = count - have
        out.append(batch)
        have += size
        if have >= count:
            break
    return out


def _batch_size(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1


def _slice(batch, k: int):
    if isinstance(batch, torch.Tensor):
        return batch[:k]
    if isinstance(batch, Mapping):
        return {key: (v[:k] if isinstance(v, torch.Tensor) else v) for key, v in batch.items()}
    return type(batch)(v[:k] if isinstance(v, torch.Tensor) else v for v in batch)


@PRUNERS.register
class OneShotMagnitudePruner(CalibratedPruner):
    """The ``desired_sparsity`` lowest |W| of each layer, or the m - n lowest of each N:M group."""

    needs_data = False

    def layer_keep(self, weight, stats):
        return self._keep_from_scores(weight.abs(), per_row=False), None


@PRUNERS.register
class WandaPruner(CalibratedPruner):
    """Wanda: score |W_ij| · ‖X_j‖₂ over the calibration tokens, compared per output row."""

    def layer_keep(self, weight, stats):
        scores = weight.abs().to(torch.float64) * stats.norms().unsqueeze(0)
        return self._keep_from_scores(scores, per_row=True), None


@PRUNERS.register
class SparseGPTPruner(CalibratedPruner):
    """SparseGPT: OBS mask selection per column block and reconstruction of the kept weights."""

    needs_hessian = True

    def __init__(self, name: str, weights: Sequence[str], desired_sparsity: Optional[float] = None,
                 n: Optional[int] = None, m: Optional[int] = None, calibration_samples: int = 128,
                 sequential: bool = True, block_size: int = 128, damp: float = 0.01):
        super().__init__(name, weights, desired_sparsity, n, m, calibration_samples, sequential)
        self.block_size = _positive_int("block_size", block_size)
        if self.nm and self.block_size % self.nm[1]:
            raise ComponentArgError("block_size", f"must be a multiple of m={self.nm[1]}; got {block_size}")
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp <= 1:
            raise ComponentArgError("damp", f"must be a number in (0, 1]; got {damp!r}")
        self.damp = float(damp)

    def layer_keep(self, weight, stats):
        new, keep = sparsegpt_prune(weight, stats.hessian(), self.sparsity or 0.0, self.nm,
                                    self.block_size, self.damp)
        return keep, new
