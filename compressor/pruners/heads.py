"""Pruning whole attention heads, MLP neurons and hidden channels of a transformer, from YAML.

``AttentionHeadPruner`` masks the ``desired_sparsity`` fraction of heads with the smallest L1 norm
of their q/k/v rows and output-projection columns in every attention layer (with grouped-query
attention a unit is a key/value head with its query heads); ``MLPNeuronPruner`` does the same for
the neurons of every MLP (up/gate rows and down column). Both rank the channel classes of the
model's graph (``compressor.thinning.heads``) and mask the consumer columns, so ``contract_model``
then removes exactly what was masked; the same fraction in every layer keeps a Hugging Face config
able to say the widths (``compressor.hf.save_thinned``).

``HiddenSizePruner`` masks the ``desired_sparsity`` fraction of the hidden channels (the residual
stream) of a Llama-style decoder whose stream the graph proves (``compressor.graph.stream``): a
channel is ranked by the L1 norm of all its slices (embedding column, every o_proj / down_proj
row, every q/k/v/gate/up and lm_head column); its producer rows and columns are masked, so the
stream is exactly zero there and ``contract_model`` removes it, rescaling the RMS norms.

    pruners:
      heads:
        class: AttentionHeadPruner
        desired_sparsity: 0.25
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..errors import ComponentArgError
from ..graph import analyze_graph, example_input_of
from ..masks import unwrap
from ..registry import PRUNERS
from ..graph.stream import KEPT, find_decoder
from ..thinning.heads import attention_outputs, class_masks, class_params, stream_readers
from .base import PruneContext, Pruner


class _ClassPruner(Pruner):
    """Shared by the two: which layers' classes are ranked (``_readers``) differs."""

    heads = True

    def __init__(self, name: str, desired_sparsity: float, model: Optional[nn.Module] = None):
        super().__init__(name)
        if isinstance(desired_sparsity, bool) or not isinstance(desired_sparsity, (int, float)) or \
                not 0.0 <= float(desired_sparsity) < 1.0:
            raise ComponentArgError("desired_sparsity", f"must be a number in [0, 1), the fraction "
                                                        f"of each layer's units; got {desired_sparsity!r}")
        if model is None:
            raise ComponentArgError("model", f"{type(self).__name__} needs the model to find its "
                                             f"{self._what()}")
        self.fraction = float(desired_sparsity)
        self.model = unwrap(model)
        graph = analyze_graph(self.model, example_input_of(model))
        readers = self._readers(graph)
        self._names = class_params(graph, readers)
        if not self._names:
            raise ComponentArgError("model", f"the thinning analysis finds no removable "
                                             f"{self._what()} in {type(self.model).__name__}"
                                             f"{self._why_not(graph)}")

    def _what(self) -> str:
        return "attention heads" if self.heads else "MLP neurons"

    def _why_not(self, graph) -> str:
        return ""

    def _readers(self, graph) -> List[str]:
        att = attention_outputs(self.model)
        stream = stream_readers(graph)   # MLP neurons are not the hidden channels
        return sorted({c.module for c in graph.consumers
                       if (c.module in att) == self.heads and c.module not in stream})

    @property
    def param_names(self) -> List[str]:
        return list(self._names)

    def masks(self, params, ctx: PruneContext) -> Dict[str, torch.Tensor]:
        model = unwrap(ctx.model) if ctx.model is not None else self.model
        graph = analyze_graph(model, example_input_of(model))
        found = class_masks(graph, model, self.fraction, self._readers(graph))
        return {n: m for n, m in found.items() if n in params}


@PRUNERS.register
class AttentionHeadPruner(_ClassPruner):
    """Mask ``desired_sparsity`` of the heads of every attention layer (L1 of q/k/v/o slices)."""
    heads = True


@PRUNERS.register
class MLPNeuronPruner(_ClassPruner):
    """Mask ``desired_sparsity`` of the neurons of every MLP (L1 of up/gate rows, down column)."""
    heads = False


@PRUNERS.register
class HiddenSizePruner(_ClassPruner):
    """Mask ``desired_sparsity`` of the hidden channels (residual stream) of a Llama-style
    decoder: one ranking for the whole model, by the L1 of all a channel's slices."""
    heads = False

    def _what(self) -> str:
        return "hidden channels (residual stream)"

    def _readers(self, graph) -> List[str]:
        # every stream reader reads the same classes: ranking through one ranks them all
        return sorted(stream_readers(graph))[:1]

    def _why_not(self, graph) -> str:
        dec = find_decoder(self.model)
        if isinstance(dec, str):
            return f" ({dec})"
        _, blocked, _ = graph.layer_status()
        why = next((r for r in blocked.values() if r.startswith(KEPT)), None)
        return f" ({why})" if why else ""
