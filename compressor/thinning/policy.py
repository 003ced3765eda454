"""The YAML extension that thins during training: ``StructureRemover`` (alias ``FilterRemover``,
``ChannelRemover``), as in Distiller::

    extensions:
      net_thinner:
        class: FilterRemover
        thinning_func_str: remove_filters
        dataset: cifar10            # or input_shape: [3, 32, 32]; arch is accepted and ignored

    policies:
      - extension:
          instance_name: net_thinner
        epochs: [10, 20]

It thins at the first ``on_minibatch_begin`` of each scheduled epoch, slicing the optimizer's state
and the scheduler's masks along.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from ..errors import ComponentArgError, listing, suggest
from ..graph import example_input_of
from ..events import ScheduledTrainingPolicy, StepContext
from ..registry import EXTENSIONS
from .api import thin
from .build import ThinningResult
from .plan import MODES


@EXTENSIONS.register(name="StructureRemover", aliases=("FilterRemover", "ChannelRemover"))
class StructureRemover(ScheduledTrainingPolicy):
    """Physically removes zero filters/channels at the start of each of its epochs.

    ``thinning_func_str``: remove_filters, remove_channels or contract_model. The example input
    used to follow shapes comes from ``input_shape`` (one sample, e.g. ``[3, 32, 32]``) or
    ``dataset`` (mnist, cifar10, imagenet); with neither, the schedule's top-level ``input_shape``
    (or the first batch the model saw, ``compressor.example_input``), else the usual image sizes.
    ``arch`` is accepted for Distiller's schedules and ignored.
    """

    def __init__(self, name: str, thinning_func_str: str,
                 arch: Optional[str] = None, dataset: Optional[str] = None,
                 input_shape: Optional[Sequence[int]] = None, model=None):
        super().__init__()
        self.name = name
        if thinning_func_str not in MODES:
            raise ComponentArgError(
                "thinning_func_str",
                f"unknown thinning function {thinning_func_str!r}"
                f"{suggest(str(thinning_func_str), MODES)}; valid: {listing(MODES)}")
        self.thinning_func_str = thinning_func_str
        self.arch = arch
        self.dataset = dataset
        self.input_shape = self._shape(dataset, input_shape)
        self.done_epoch: Optional[int] = None
        self.n_thinned = 0
        self.last_result: Optional[ThinningResult] = None

    @staticmethod
    def _shape(dataset, input_shape):
        if input_shape is not None:
            ok = isinstance(input_shape, (list, tuple)) and len(input_shape) >= 1 and all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape)
            if not ok:
                raise ComponentArgError("input_shape", f"must be the shape of one input sample "
                                                       f"as positive integers, e.g. [3, 32, 32]; "
                                                       f"got {input_shape!r}")
            return tuple(input_shape)
        if dataset is not None:
            from ..models.registry import DATASETS
            key = str(dataset).lower()
            if key not in DATASETS:
                raise ComponentArgError("dataset", f"unknown dataset {dataset!r}"
                                                   f"{suggest(key, DATASETS)}; valid: "
                                                   f"{listing(DATASETS)} (or give input_shape)")
            return tuple(DATASETS[key].input_shape)
        return None

    def on_minibatch_begin(self, ctx: StepContext) -> None:
        if self.done_epoch == ctx.epoch:
            return
        self.done_epoch = ctx.epoch
        shape = self.input_shape if self.input_shape is not None else example_input_of(ctx.model)
        self.last_result = thin(ctx.model, self.thinning_func_str, shape,
                                optimizer=ctx.optimizer, store=ctx.store)
        if self.last_result.changed:
            self.n_thinned += 1

    def state_dict(self) -> dict:
        return {"done_epoch": self.done_epoch, "n_thinned": self.n_thinned}

    def load_state_dict(self, state: Mapping) -> None:
        self.done_epoch = state.get("done_epoch", self.done_epoch)
        self.n_thinned = int(state.get("n_thinned", self.n_thinned))
