"""Dry run: what thinning would find in a model, as data and as text; changes nothing."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from torch import nn

from ..errors import ThinningError
from ..masks import unwrap
from ..graph import analyze_graph
from .inputs import ExampleInput, sample_input
from .build import build_recipe
from .plan import make_plan


@dataclass
class ThinningReport:
    """``groups``: coupled weight names (see ``coupled_filter_groups``); ``thinnable``: layers whose
    output channels can be removed; ``blocked``: {layer: why none can}; ``partial``: {layer: why
    some cannot}; ``removable``: {layer: (channels ``kind`` would remove now, channels)};
    ``selected``: {batch norm: (channels it would read, channels of its input)} where thinning
    would make a batch norm select channels; ``error``: what thinning now would raise, if
    anything; ``notes``: its warnings."""
    model: str
    input_shape: Tuple[int, ...]
    kind: str
    groups: List[List[str]] = field(default_factory=list)
    thinnable: List[str] = field(default_factory=list)
    blocked: Dict[str, str] = field(default_factory=dict)
    partial: Dict[str, str] = field(default_factory=dict)
    removable: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    error: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    selected: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    #: Layers coupled in part (a depthwise conv after a concatenation): {weight: the group's
    #: channel position of each of its output channels}, one per group (``coupled_classes``).
    partly: List[Dict[str, List[int]]] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"Thinning analysis of {self.model} (example input {list(self.input_shape)})"]
        lines.append(f"Coupled groups ({len(self.groups)}): layers that must keep the same channels")
        for g in self.groups:
            lines.append("  - " + ", ".join(g))
        if self.partly:
            lines.append(f"Coupled in part ({len(self.partly)}): layers whose channels meet position "
                         f"by position, pruned as one")
            for g in self.partly:
                lines.append("  - " + ", ".join(f"{n} ({len(v)})" for n, v in g.items()))
        lines.append(f"Thinnable layers ({len(self.thinnable)}):")
        for name in self.thinnable:
            extra = f"  [{self.partial[name]}]" if name in self.partial else ""
            lines.append(f"  - {name}{extra}")
        lines.append(f"Not thinnable ({len(self.blocked)}):")
        for name, why in self.blocked.items():
            lines.append(f"  - {name}: {why}")
        total = sum(r for r, _ in self.removable.values())
        lines.append(f"{self.kind} now: {total} channels in {len(self.removable)} layers")
        for name, (r, n) in self.removable.items():
            lines.append(f"  - {name}: {r} of {n}")
        for name, (k, n) in self.selected.items():
            lines.append(f"  - {name}: reads {k} of its {n} input channels (channel selection)")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.error:
            lines.append(f"  would fail: {self.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def analyze(model: nn.Module, example_input: ExampleInput = None,
            kind: str = "contract_model") -> ThinningReport:
    """Analyze ``model`` without changing it; ``kind`` selects what ``removable`` counts.

    Raises ``ThinningError`` only when the model cannot be traced or run on the example input;
    layers behind unsupported ops are listed in ``blocked`` with the reason.
    """
    target = unwrap(model)
    graph = analyze_graph(target, sample_input(example_input))
    order = [n for n, _ in target.named_parameters()]
    thinnable, blocked, partial = graph.layer_status()
    report = ThinningReport(type(target).__name__, graph.input_shape, kind,
                            graph.coupled_groups(order), thinnable, blocked, partial,
                            partly=graph.coupled_classes(order))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = build_recipe(make_plan(graph, target, kind), target)
        report.notes = [str(w.message) for w in caught]
        report.removable = dict(result.removed)
        report.selected = dict(result.selected)
    except ThinningError as e:
        report.error = str(e)
    return report
