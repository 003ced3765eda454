"""The thinning entry points: analyze -> plan -> recipe -> execute, in one call.

``remove_filters``, ``remove_channels`` and ``contract_model`` keep Distiller's names and meaning;
they take an example input (a tensor, a sample shape or a dataset name) and the optimizer and mask
store to update along.
"""
from __future__ import annotations

from torch import nn

from ..masks import unwrap
from .execute import apply_recipe
from ..graph import analyze_graph
from .inputs import ExampleInput, sample_input
from .norms import restrict_norms
from .build import ThinningResult, build_recipe
from .plan import MODES, make_plan


def thin(model: nn.Module, kind: str = "contract_model", example_input: ExampleInput = None, *,
         optimizer=None, store=None) -> ThinningResult:
    """Remove the zero structures of ``model`` in place; ``kind`` is one of ``MODES``.

    ``example_input``: a tensor, or the shape of one sample (e.g. ``(3, 32, 32)``); None tries the
    usual image sizes. ``optimizer``: its per-parameter state is sliced along (the same object keeps
    working). ``store``: a MaskStore (or a CompressionScheduler) whose masks are sliced along.
    All or nothing: raises ``ThinningError`` before changing anything when a zero structure sits
    behind an op that cannot be followed exactly.
    """
    if kind not in MODES:
        raise ValueError(f"unknown thinning kind {kind!r}; valid: {', '.join(MODES)}")
    target = unwrap(model)
    graph = analyze_graph(target, sample_input(example_input))
    plan = make_plan(graph, target, kind)
    result = build_recipe(plan, target)
    if result.typed_recipe is not None:
        apply_recipe(target, result.typed_recipe, optimizer=optimizer, store=store)
        restrict_norms(target, result.norm_keeps)
    return result


def remove_filters(model: nn.Module, example_input: ExampleInput = None, *, optimizer=None,
                   store=None) -> ThinningResult:
    """Remove every channel whose producing filters are all zero (and what reads or follows it)."""
    return thin(model, "remove_filters", example_input, optimizer=optimizer, store=store)


def remove_channels(model: nn.Module, example_input: ExampleInput = None, *, optimizer=None,
                    store=None) -> ThinningResult:
    """Remove every channel that all its consumers ignore (all-zero input channels), with the
    filters that produce it."""
    return thin(model, "remove_channels", example_input, optimizer=optimizer, store=store)


def contract_model(model: nn.Module, example_input: ExampleInput = None, *, optimizer=None,
                   store=None) -> ThinningResult:
    """``remove_filters`` and ``remove_channels`` together, as one recipe."""
    return thin(model, "contract_model", example_input, optimizer=optimizer, store=store)
