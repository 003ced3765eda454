"""Fold every inference-mode batch norm that directly follows a convolution or linear layer into it.

In eval mode ``BN(conv(x)) = s * (W x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``
per output channel, which is one convolution with weight ``s * W`` and bias ``s * (b - mean) +
beta``; the batch norm then becomes ``nn.Identity``.  The pairs come from the torch.fx graph
(``compressor.graph.trace``): a ``BatchNorm1d/2d/3d`` call whose input is the output of a
``Conv1d/2d/3d`` (any groups, with or without bias) or ``Linear`` call.  The fold is exact up to
rounding; a thinned network folds like any other (its layers are plain, narrower modules).

Not folded, with the reason in the report: transposed convolutions, batch norms that use batch
statistics in eval mode (``track_running_stats=False``), channel-selecting batch norms (thinning's
``selects_channels``), modules called more than once.  Refused (``FoldError``): a batch norm whose
input is also read by another op (folding would change what that op reads), unless
``shared="skip"``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import CompressorError
from ..graph.trace import selects_channels, trace
from ..masks import unwrap

__all__ = ["FoldError", "FoldReport", "fold_batch_norms"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SHARED_CHOICES = ("error", "skip")


class FoldError(CompressorError, ValueError):
    """A batch norm cannot be folded into the layer before it (the message says why)."""


@dataclass
class FoldReport:
    """What ``fold_batch_norms`` did: ``folded`` (layer, batch norm) pairs; ``skipped`` maps a
    batch norm's name to why it was left in place."""

    folded: List[Tuple[str, str]] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} batch norm(s); left {len(self.skipped)}"]
        lines += [f"  {bn}: {why}" for bn, why in self.skipped.items()]
        return "\n".join(lines)


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    var, mean = bn.running_var, bn.running_mean
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    w = layer.weight
    # Conv weights are [out, in/groups, *kernel] (grouped and depthwise included); Linear [out, in].
    w.mul_(scale.to(w.dtype).reshape(-1, *([1] * (w.dim() - 1))))
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.to(w.dtype).clone())
    else:
        layer.bias.mul_(scale.to(w.dtype)).add_(shift.to(w.dtype))


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def fold_batch_norms(model: nn.Module, inplace: bool = False,
                     shared: str = "error") -> Tuple[nn.Module, FoldReport]:
    """Fold each batch norm that follows a conv / linear layer into it; return (model, report).

    The returned model is a deep copy unless ``inplace``; its class and module names are kept
    (folded batch norms become ``nn.Identity``), so it runs and exports like the original.  It is
    meant for inference: use it in eval mode.  ``shared="error"`` raises ``FoldError`` when a batch
    norm's input has another reader; ``"skip"`` leaves that batch norm in place (reported).
    """
    if shared not in SHARED_CHOICES:
        raise FoldError(f"fold_batch_norms: shared={shared!r} is not valid; "
                        f"valid: {', '.join(SHARED_CHOICES)}")
    model = unwrap(model)
    if not inplace:
        model = copy.deepcopy(model)
    gm = trace(model)
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    report = FoldReport()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, _BN):
            continue
        name = node.target
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            report.skipped[name] = "its input is not a convolution or linear layer"
            continue
        layer = model.get_submodule(src.target)
        if not isinstance(layer, _CONV + (nn.Linear,)):
            kind = type(layer).__name__
            report.skipped[name] = f"its input comes from {src.target} ({kind}), not a conv/linear"
            continue
        if selects_channels(bn):
            report.skipped[name] = "it selects channels (thinning's channel selection)"
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            report.skipped[name] = "it has no running statistics (uses batch statistics in eval)"
            continue
        if calls[name] > 1 or calls[src.target] > 1:
            report.skipped[name] = f"{name if calls[name] > 1 else src.target} is called more than once"
            continue
        others = [u.name for u in src.users if u is not node]
        if others:
            msg = (f"cannot fold batch norm '{name}' into '{src.target}': the output of "
                   f"'{src.target}' is also read by {', '.join(others)}, which would then read "
                   f"the normalized values; fold only where the batch norm is its only reader "
                   f"(or pass shared='skip' to leave this batch norm in place)")
            if shared == "error":
                raise FoldError(msg)
            report.skipped[name] = f"the output of {src.target} is also read by {', '.join(others)}"
            continue
        _fold_into(layer, bn)
        _set_module(model, name, nn.Identity())
        report.folded.append((src.target, name))
    return model, report
