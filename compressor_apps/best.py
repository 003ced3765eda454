"""Best-epoch tracking for the app: every epoch's scores, ranked by top-1 or (like Distiller) sparsity."""
from __future__ import annotations

from typing import List, Optional


class BestScores:
    """Keeps every epoch's scores and ranks them by top-1 (default) or, like Distiller, sparsity."""

    def __init__(self, by: str = "top1", history: Optional[List[dict]] = None):
        self.by = by
        self.history = list(history or [])

    def key(self, s: dict):
        if self.by == "sparsity":
            return (-s["nnz"], s["top1"], s["top5"], s["epoch"])
        return (s["top1"], s["top5"], -s["nnz"], s["epoch"])

    def add(self, scores: dict) -> bool:
        """Record an epoch; True when it is the new best."""
        self.history.append(scores)
        best = self.best(1)
        return bool(best) and best[0] is scores

    def best(self, n: int) -> List[dict]:
        """The ``n`` best epochs; one whose validation metrics were not finite is never ranked."""
        ranked = [s for s in self.history if s.get("finite", True)]   # older histories lack the key
        return sorted(ranked, key=self.key, reverse=True)[:n]

    def describe(self, n: int) -> str:
        ranking = "top-1, then top-5" if self.by == "top1" else "fewest non-zero parameters, then top-1"
        lines = [f"==> Best (ranked by {ranking}):"]
        for s in self.best(n):
            lines.append(f"    Top1: {s['top1']:.3f}   Top5: {s['top5']:.3f}   Sparsity: "
                         f"{s['sparsity']:.2f}%   NNZ-Params: {s['nnz']:,} on epoch: {s['epoch']}")
        return "\n".join(lines)
