"""The ``quantizer:`` policy: installs the quantizer's QAT at the first epoch it fires.

Before its starting epoch the model trains in float (and may be pruned and thinned); at the
starting epoch's ``on_epoch_begin`` the quantizer is prepared in place, with the optimizer the loop
passes to the scheduler (PACT adds its clips to it as a new param group). Masks are re-applied
after every step by the scheduler as always, so pruned weights stay exactly zero through QAT.
"""
from __future__ import annotations

from typing import Mapping

from ..events import ScheduledTrainingPolicy, StepContext


class QuantizationPolicy(ScheduledTrainingPolicy):
    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer

    def on_epoch_begin(self, ctx: StepContext) -> None:
        if not self.quantizer.prepared:
            self.quantizer.prepare(ctx.optimizer)

    def state_dict(self) -> dict:
        return self.quantizer.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.quantizer.load_state_dict(state)
