"""Weight selectors: words a schedule's ``weights:`` may hold in place of parameter names.

``weights: thinnable`` (alone, or as one entry of a list beside names and patterns) stands for
every layer the thinning dry run (``compressor.thinning.analyze``) calls thinnable, in model order;
``thinnable:<pattern>`` keeps those whose weight matches the pattern (a glob or ``re:``, as
elsewhere in ``weights``). The classifier is never among them: its output channels are the
model's output, which the analysis blocks (a soft block, "part of the model's output"), so the
last layer producing the model's output is listed as not thinnable. With a ``group_type``, the
selector keeps the layers that group type cuts by output channel: ``Filters`` (and ``3D``) take
the convolutions, ``Cols`` the linear layers; without one (a pruner with no group type) it takes
both. Selector words are reserved: a model parameter spelled like one is refused as ambiguous
(write it as ``re:<name>``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from ..errors import ComponentArgError, CompressorError
from ..groups import canonical_group_type
from ..masks import unwrap
from .coupling import layer_facts

#: Group types a selector may be combined with -> which weights they cut by output channel.
_BY_RANK: Dict[str, Callable[[int], bool]] = {
    "Filters": lambda rank: rank >= 3,   # convolutions: one structure per output filter
    "Cols": lambda rank: rank == 2,      # linear layers: one structure per output neuron
}


def thinnable_weights(model: nn.Module, group_type: Optional[str] = None) -> List[str]:
    """The weights of the layers the thinning analysis calls thinnable, for ``group_type``.

    Raises ``ComponentArgError('weights', ...)`` when the group type does not cut layers by
    output channel or the model's graph cannot be analyzed.
    """
    keep: Callable[[int], bool] = lambda rank: rank >= 2
    if group_type is not None:
        canonical = canonical_group_type(str(group_type))
        if canonical not in _BY_RANK:
            raise ComponentArgError("weights", f"the 'thinnable' selector picks layers by their "
                                               f"output channels; use it with group_type Filters "
                                               f"(convolutions) or Cols (linear layers), not "
                                               f"{group_type!r}")
        keep = _BY_RANK[canonical]
    try:
        facts = layer_facts(model)
    except CompressorError as e:
        raise ComponentArgError("weights", f"'thinnable' needs the model's thinning analysis, "
                                           f"which failed: {e}") from None
    params = dict(unwrap(model).named_parameters())
    return [w for w, f in facts.items() if f.thinnable and w in params and keep(params[w].dim())]


#: Selector word -> function(model, group type) -> weight names.
SELECTORS: Mapping[str, Callable[[nn.Module, Optional[str]], List[str]]] = {
    "thinnable": thinnable_weights,
}


def parse_selector(entry: str) -> Optional[Tuple[str, Optional[str]]]:
    """(selector word, narrowing pattern or None) for ``thinnable`` / ``thinnable:<pattern>``;
    None for anything else (a name or pattern)."""
    word, sep, rest = entry.partition(":")
    if word not in SELECTORS:
        return None
    if sep and not rest:
        raise ComponentArgError("weights", f"'{entry}' needs a pattern after ':', e.g. "
                                           f"'{word}:features.*'")
    return word, (rest if sep else None)
