"""The compression scheduler inside Hugging Face's ``Trainer``.

``CompressionCallback`` maps the Trainer's events to the scheduler's; ``CompressionTrainer`` (a
``Trainer`` subclass, or ``CompressionTrainerMixin`` for your own subclass) adds the schedule's
loss terms in ``compute_loss`` and logs them through ``Trainer.log``. A callback alone cannot
change the loss: with a plain ``Trainer`` the pruning, masking and LR policies work but
regularizers contribute nothing, so the callback refuses a schedule with loss terms unless the
trainer adds them.

Events, per optimizer step (with gradient accumulation ``before_backward_pass`` runs for each
micro-batch, the others once per step)::

    on_epoch_begin         -> on_epoch_begin(epoch)
    on_step_begin          -> on_minibatch_begin(epoch, step in epoch, steps per epoch)
    compute_loss           -> before_backward_pass (CompressionTrainer)
    on_pre_optimizer_step  -> before_parameter_optimization   (after gradient clipping)
    on_optimizer_step      -> on_minibatch_end                 (masks re-applied after the step)
    on_epoch_end           -> on_epoch_end(epoch, metrics of the last evaluation)
    on_save                -> compression_scheduler.pt in the checkpoint folder (atomic)
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from transformers import Trainer, TrainerCallback

from ..atomic import atomic_write
from ..errors import CheckpointError, CompressorError
from ..scheduler import CompressionScheduler
from ._driver import Driver, refuse_distributed_thinning

STATE_FILE = "compression_scheduler.pt"
_PREFIX = "checkpoint"   # transformers' PREFIX_CHECKPOINT_DIR


def _has_loss_terms(scheduler: CompressionScheduler) -> bool:
    from ..events import ScheduledTrainingPolicy
    base = ScheduledTrainingPolicy.before_backward_pass
    return any(getattr(type(p), "before_backward_pass", base) is not base for p in scheduler.ordered)


class CompressionCallback(TrainerCallback):
    """Drives ``scheduler`` from a ``transformers.Trainer``; see the module docstring for the map.

    On resume the state is read from ``<checkpoint>/compression_scheduler.pt``: the folder given to
    ``resume_from`` (``CompressionTrainer.train(resume_from_checkpoint=...)`` calls it), else
    ``<output_dir>/checkpoint-<global step>``.
    """

    def __init__(self, scheduler: CompressionScheduler):
        self.driver = Driver(scheduler)
        self.scheduler = scheduler
        self.trainer_adds_loss = False    # set by CompressionTrainer
        self._resume_dir: Optional[str] = None

    def resume_from(self, checkpoint_dir: Optional[str]) -> None:
        """The checkpoint folder the next ``train()`` resumes from (None: the default folder)."""
        self._resume_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)

    # -- set-up ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if not self.trainer_adds_loss and _has_loss_terms(self.scheduler):
            raise CompressorError(
                "CompressionCallback: the schedule has loss terms (regularizers), which a "
                "TrainerCallback cannot add to the loss; use "
                "compressor.integrations.hf.CompressionTrainer (or CompressionTrainerMixin)")
        refuse_distributed_thinning(self.scheduler, args.world_size, "Hugging Face Trainer")
        ga = args.gradient_accumulation_steps
        if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
            n = len(train_dataloader)
            self.driver.steps_per_epoch = max(n // ga + int(n % ga > 0), 1)
        else:   # an iterable dataset: max_steps is the epoch
            self.driver.steps_per_epoch = max(int(state.max_steps), 1)
        self.driver.distributed = args.world_size > 1
        if state.global_step > 0:
            self._load(args, state)
        self._resume_dir = None

    def _load(self, args, state) -> None:
        folder = self._resume_dir or os.path.join(args.output_dir, f"{_PREFIX}-{state.global_step}")
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{path}: no compression scheduler state to resume step {state.global_step} from; "
                f"resume from a checkpoint written with CompressionCallback, or call "
                f"callback.resume_from(<checkpoint folder>) before train()")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # a damaged or pickled file: say which, not the unpickler's words
            raise CheckpointError(f"{path}: cannot be read safely ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.driver.load_state_dict(saved, path)

    # -- events ----------------------------------------------------------------------------------
    def on_epoch_begin(self, args, state, control, optimizer=None, **kwargs):
        spe = self.driver.steps_per_epoch or 1
        self.driver.epoch_begin(int(state.global_step) // spe, optimizer)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.driver.minibatch_begin(state.global_step, optimizer)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.driver.before_step(optimizer)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.driver.after_step(optimizer)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            m = {"min": float(metrics["eval_loss"])}
            acc = metrics.get("eval_accuracy")
            if acc is not None:
                m["max"] = float(acc)
            self.driver.metrics = m

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs):
        spe = self.driver.steps_per_epoch or 1
        begun = self.driver.begun
        self.driver.epoch_end(begun if begun is not None else
                              max(math.ceil(int(state.global_step) / spe) - 1, 0), optimizer)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{_PREFIX}-{state.global_step}")
        if not os.path.isdir(folder):   # a trial's run folder, or a save strategy we do not know
            return
        saved = self.driver.state_dict()
        atomic_write(os.path.join(folder, STATE_FILE), lambda f: torch.save(saved, f))


class CompressionTrainerMixin:
    """Put before ``Trainer`` in your subclass's bases: adds the schedule's loss terms to the loss
    in ``compute_loss`` and logs their means since the last log through ``Trainer.log`` (named
    ``<instance name>_loss``, as ``before_backward_pass`` returns them)."""

    compression_callback: CompressionCallback

    def __init__(self, *args, compression_scheduler: Optional[CompressionScheduler] = None,
                 compression_callback: Optional[CompressionCallback] = None, **kwargs):
        if (compression_scheduler is None) == (compression_callback is None):
            raise TypeError("pass exactly one of compression_scheduler= and compression_callback=")
        callback = compression_callback or CompressionCallback(compression_scheduler)
        callback.trainer_adds_loss = True
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if callback not in callbacks:
            callbacks.append(callback)
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.compression_callback = callback
        self._component_sums: dict = {}
        self._component_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        loss, outputs = out if return_outputs else (out, None)
        if not model.training:   # evaluation goes through compute_loss too
            return out
        driver = self.compression_callback.driver
        result = driver.loss(loss, self.optimizer)
        if result.loss_components:
            penalty = result.overall_loss - loss
            # The Trainer divides the loss by the accumulation steps unless the model already
            # normalised it over the whole step; the penalty must count once per optimizer step.
            scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
                (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                or self.compute_loss_func is not None)
            if scaled:
                penalty = penalty / self.current_gradient_accumulation_steps
            loss = loss + penalty
            for c in result.loss_components:
                self._component_sums[c.name] = self._component_sums.get(c.name, 0.0) + float(c.value.detach())
            self._component_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self._component_count and "loss" in logs:   # training logs only, not eval's
            for name, total in self._component_sums.items():
                logs[name] = total / self._component_count
            self._component_sums, self._component_count = {}, 0
        return super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        folder = resume_from_checkpoint
        if folder is True or folder == "True":
            from transformers.trainer_utils import get_last_checkpoint
            folder = get_last_checkpoint(self.args.output_dir)
        if isinstance(folder, (str, os.PathLike)):
            self.compression_callback.resume_from(folder)
        return super().train(resume_from_checkpoint, *args, **kwargs)


class CompressionTrainer(CompressionTrainerMixin, Trainer):
    """``transformers.Trainer`` that drives a compression scheduler::

        scheduler = compressor.file_config(model, None, "schedule.yaml")
        trainer = CompressionTrainer(model=model, args=args, train_dataset=ds,
                                     compression_scheduler=scheduler)
    """
