"""Activation statistics gathered with forward hooks: how sparse each ReLU's output is.

Used by the app's ``--activation-stats`` and by activation-ranked pruners (APoZ, mean activation).
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple, Type

import pandas as pd
import torch
from torch import nn

from .masks import unwrap

ACTIVATIONS: Tuple[Type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


class ActivationStatsCollector:
    """Per activation module: fraction of zero outputs (overall and per channel) and mean output.

    Use as a context manager around the forward passes to observe; hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, classes: Iterable[Type[nn.Module]] = ACTIVATIONS):
        self.model = unwrap(model)
        self.classes = tuple(classes)
        self.stats: Dict[str, Dict[str, torch.Tensor]] = {}
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, output):
            out = output.detach()
            dims = [d for d in range(out.dim()) if d != 1] if out.dim() > 1 else [0]
            zeros = (out == 0).float().sum(dim=dims)
            total = out.numel() // (out.shape[1] if out.dim() > 1 else 1)
            entry = self.stats.setdefault(name, {"zeros": torch.zeros_like(zeros), "count": 0,
                                                 "sum": torch.zeros_like(zeros)})
            entry["zeros"] += zeros
            entry["sum"] += out.float().sum(dim=dims)
            entry["count"] += total
        return hook

    def __enter__(self):
        for name, module in self.model.named_modules():
            if isinstance(module, self.classes):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def apoz(self) -> Dict[str, torch.Tensor]:
        """Average percentage of zeros per channel, by module name."""
        return {n: 100.0 * s["zeros"] / max(s["count"], 1) for n, s in self.stats.items()}

    def channel_means(self) -> Dict[str, torch.Tensor]:
        return {n: s["sum"] / max(s["count"], 1) for n, s in self.stats.items()}

    def summary(self) -> pd.DataFrame:
        rows = []
        for name, s in self.stats.items():
            count = max(s["count"], 1) * s["zeros"].numel()
            rows.append({"Layer": name, "Channels": s["zeros"].numel(),
                         "Sparsity (%)": 100.0 * float(s["zeros"].sum()) / count,
                         "Mean": float(s["sum"].sum()) / count})
        return pd.DataFrame(rows, columns=["Layer", "Channels", "Sparsity (%)", "Mean"])
