"""RMS norms that lose channels: the rescaling that keeps thinning exact, as recipe data.

An RMS norm computes ``w * x / sqrt(S/n + eps)`` with ``S`` the sum of squares of its ``n`` input
channels. Removing ``k`` channels that are zero leaves ``S`` unchanged but divides by ``m = n - k``:
``S/m + eps·n/m = n/m · (S/n + eps)``, so multiplying the kept weights by ``sqrt(n/m)`` and the
epsilon by ``n/m`` computes the same function. The graph lists such norms
(``graph.records.RMSNormRecord``, the residual stream of a Llama-style decoder); ``rescales_for``
turns the removed classes into one ``NormRescale`` per norm that loses channels, a recipe's
``rms_norms`` entry (plain data: names and integers, so a checkpoint holds no floats to trust);
``check_rescale`` / ``apply_rescale`` validate and apply it after the recipe's slices, on a live
model or when a recipe is replayed before loading weights (the weights then come from the
checkpoint; the epsilon, a plain attribute, comes from here).

A class such a norm reads may only go when it is zero in the stream (its filters): a channel
that no layer reads still counts in the norm's mean square (``plan``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Set

import torch
from torch import nn

from ..errors import ThinningError


@dataclass
class NormRescale:
    """An RMS norm kept ``kept`` of its ``channels`` channels: its parameter ``weight`` is
    multiplied by ``sqrt(channels/kept)`` and its float attribute ``eps`` by ``channels/kept``."""
    weight: str
    eps: str
    channels: int
    kept: int

    def to_dict(self) -> Dict[str, Any]:
        return {"weight": self.weight, "eps": self.eps, "channels": self.channels,
                "kept": self.kept}

    @property
    def factors(self):
        """(weight factor, eps factor)."""
        return math.sqrt(self.channels / self.kept), self.channels / self.kept


def stream_roots(graph) -> Set[int]:
    """The classes an RMS norm reads (removable only by their zero filters)."""
    return {r for rec in graph.rms_norms for r in graph.roots(rec.ids)}


def rescales_for(graph, removed: Set[int]) -> Dict[str, NormRescale]:
    """{norm module: NormRescale} for every RMS norm of ``graph`` that loses channels."""
    out: Dict[str, NormRescale] = {}
    find = graph.uf.find
    for rec in graph.rms_norms:
        kept = sum(1 for i in rec.ids if find(i) not in removed)
        if kept != len(rec.ids):
            prefix = f"{rec.module}."
            weight = rec.weight[len(prefix):] if rec.weight.startswith(prefix) else rec.weight
            out[rec.module] = NormRescale(weight, rec.eps, len(rec.ids), kept)
    return out


def parse_rescale(name: str, spec: Any, where: str, error=ThinningError) -> NormRescale:
    """A recipe's ``rms_norms`` entry for module ``name``; ``error`` (one line) when malformed."""
    ok = isinstance(spec, Mapping) and set(spec) == {"weight", "eps", "channels", "kept"} and \
        all(isinstance(spec[k], str) and spec[k].isidentifier() for k in ("weight", "eps")) and \
        all(type(spec[k]) is int for k in ("channels", "kept")) and \
        0 < spec["kept"] <= spec["channels"]
    if not ok:
        raise error(f"{where}: bad RMS norm rescale for '{name}' (expected 'weight' and 'eps' "
                    f"attribute names and 0 < 'kept' <= 'channels' integers), got {spec!r}")
    return NormRescale(spec["weight"], spec["eps"], spec["channels"], spec["kept"])


def check_rescale(model: nn.Module, name: str, spec: NormRescale, shapes: Dict[str, List[int]],
                  where: str) -> None:
    """The module exists, has the weight and a float epsilon, and the recipe leaves the weight
    ``kept`` entries (``shapes``: the shapes after the recipe's slices)."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ThinningError(f"{where}: the model has no module '{name}'") from None
    w = mod._parameters.get(spec.weight)
    eps = getattr(mod, spec.eps, None)
    if w is None or not isinstance(eps, float):
        raise ThinningError(f"{where}: module '{name}' ({type(mod).__name__}) has no parameter "
                            f"'{spec.weight}' and float attribute '{spec.eps}' to rescale")
    after = shapes.get(f"{name}.{spec.weight}", list(w.shape))
    if after != [spec.kept]:
        raise ThinningError(f"{where}: the rescale of '{name}' expects {spec.kept} channels, its "
                            f"weight will have shape {after}")


@torch.no_grad()
def apply_rescale(model: nn.Module, name: str, spec: NormRescale) -> None:
    """Multiply the (already sliced) weight and the epsilon by their factors."""
    mod = model.get_submodule(name)
    fw, fe = spec.factors
    mod._parameters[spec.weight].data.mul_(fw)
    setattr(mod, spec.eps, getattr(mod, spec.eps) * fe)
