"""The compression scheduler inside a real Hugging Face Trainer (tiny Llama, random tokens, CPU)."""
from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

import compressor  # noqa: E402
from helpers.event_counter import counted, counts  # noqa: E402
from compressor.errors import CheckpointError, CompressorError, ScheduleError  # noqa: E402
from compressor.integrations.hf import (STATE_FILE, CompressionCallback,  # noqa: E402
                                        CompressionTrainer)

MLP = "model.layers.*.mlp.*_proj.weight"
SCHEDULE = {
    "version": 1,
    "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.2,
                        "final_sparsity": 0.6, "weights": [MLP]}},
    "regularizers": {"q_l1": {"class": "L1Regularizer",
                              "reg_regims": {"model.layers.0.self_attn.q_proj.weight": 1e-4}}},
    "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 3,
                  "frequency": 1},
                 {"regularizer": {"instance_name": "q_l1"}, "starting_epoch": 0, "ending_epoch": 3}],
}
EPOCHS, SAMPLES, BATCH = 3, 8, 4           # 2 optimizer steps per epoch


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).double()   # float64: resumed == uninterrupted, bit for bit


def tokens(n: int = SAMPLES, length: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def arguments(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
                learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
                save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def trainer_for(out, schedule=SCHEDULE, model=None, data=None, **kw):
    model = model if model is not None else tiny_llama()
    scheduler = counted(compressor.dict_config(model, None, schedule), EPOCHS)
    return CompressionTrainer(model=model, args=arguments(out, **kw),
                              train_dataset=data if data is not None else tokens(),
                              compression_scheduler=scheduler)


def mlp_weights(model):
    return {n: p for n, p in model.named_parameters() if compressor.match_names(MLP, [n])}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted run that saves a checkpoint after every optimizer step."""
    out = tmp_path_factory.mktemp("full")
    trainer = trainer_for(out, save_strategy="steps", save_steps=1)
    trainer.train()
    return out, trainer


def test_agp_reaches_target_and_masks_stay_zero(full_run):
    _, trainer = full_run
    store = trainer.compression_callback.scheduler.store
    weights = mlp_weights(trainer.model)
    assert len(weights) == 6
    for name, w in weights.items():
        assert int((w == 0).sum()) == math.floor(0.6 * w.numel()), name
        # pruned weights are exactly zero after AdamW's last step (masks applied after each step)
        assert torch.all(w[store.masks[name] == 0] == 0), name


def test_regularizer_loss_component_logged(full_run):
    _, trainer = full_run
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == EPOCHS * SAMPLES // BATCH
    assert all(h["q_l1_loss"] > 0 for h in logged)
    q = dict(trainer.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    # logged before the last step's update, so only near the final weights' penalty
    assert logged[-1]["q_l1_loss"] == pytest.approx(1e-4 * float(q.detach().abs().sum()), rel=0.2)


@pytest.mark.parametrize("step", [2, 3])
def test_resumed_run_equals_uninterrupted(full_run, tmp_path, step):
    # checkpoint-2 is saved after epoch 0's last step but before on_epoch_end: the resumed run
    # replays that epoch end; checkpoint-3 is mid-epoch 1: the resumed run must not prune again.
    # float64 on one CPU thread order: the same operations in the same order, so equal bit for bit.
    out, full = full_run
    assert os.path.isfile(out / f"checkpoint-{step}" / STATE_FILE)
    resumed = trainer_for(tmp_path)
    resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{step}"))
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"resumed from checkpoint-{step} differs in {name}"
    every = list(range(EPOCHS))   # each epoch began and ended once, across the interruption
    assert counts(full.compression_callback.scheduler) == (every, every)
    assert counts(resumed.compression_callback.scheduler) == (every, every)


def test_resume_without_state_file_is_refused(full_run, tmp_path):
    out, _ = full_run
    shutil.copytree(out / "checkpoint-4", tmp_path / "checkpoint-4")
    os.remove(tmp_path / "checkpoint-4" / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"checkpoint-4/compression_scheduler.pt: no "
                                              r"compression scheduler state to resume step 4"):
        trainer_for(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_plain_trainer_with_loss_terms_is_refused(tmp_path):
    model = tiny_llama()
    callback = CompressionCallback(compressor.dict_config(model, None, SCHEDULE))
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=tokens(),
                      callbacks=[callback])
    with pytest.raises(CompressorError, match="TrainerCallback cannot add to the loss; use "
                                              "compressor.integrations.hf.CompressionTrainer"):
        trainer.train()


def test_plain_trainer_callback_prunes_with_gradient_accumulation(tmp_path):
    # a plain Trainer (no loss terms in the schedule); events per optimizer step, not micro-batch
    schedule = {k: v for k, v in SCHEDULE.items() if k != "regularizers"}
    schedule["policies"] = SCHEDULE["policies"][:1]
    model = tiny_llama()
    callback = CompressionCallback(compressor.dict_config(model, None, schedule))
    Trainer(model=model, args=arguments(tmp_path, per_device_train_batch_size=2,
                                        gradient_accumulation_steps=2),
            train_dataset=tokens(), callbacks=[callback]).train()
    assert callback.driver.steps_per_epoch == 2 and callback.driver.ended == EPOCHS - 1
    for name, w in mlp_weights(model).items():
        assert int((w == 0).sum()) == math.floor(0.6 * w.numel()), name


def test_schedule_error_is_a_schedule_error(tmp_path):
    schedule = dict(SCHEDULE, pruners={"agp": dict(SCHEDULE["pruners"]["agp"],
                                                   weights=["model.layers.*.mlp.nope.weight"])})
    with pytest.raises(ScheduleError, match=r"pruners\.agp\.weights.*matches no parameter"):
        trainer_for(tmp_path, schedule=schedule)


@torch.fx.wrap
def loss_or_logits(logits, labels):
    """A leaf for the thinning trace, which runs the model on inputs alone."""
    if labels is None:
        return logits
    return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class TwoLayer(nn.Module):
    """A plain module the Trainer accepts: returns {'loss': ...}."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x, labels=None):
        return loss_or_logits(self.fc2(torch.relu(self.fc1(x))), labels)


THIN = {
    "version": 1,
    "input_shape": [8],
    "pruners": {"filters": {"class": "L1RankedStructureParameterPruner", "group_type": "Cols",
                            "desired_sparsity": 0.5, "weights": ["fc1.weight"]}},
    "extensions": {"thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
    "policies": [{"pruner": {"instance_name": "filters"}, "epochs": [0]},
                 {"extension": {"instance_name": "thinner"}, "epochs": [1]}],
}


def test_thinning_mid_training_keeps_training(tmp_path):
    g = torch.Generator().manual_seed(2)
    data = [{"x": torch.randn(8, generator=g), "labels": torch.randint(0, 3, (), generator=g)}
            for _ in range(SAMPLES)]
    model = TwoLayer()
    trainer = trainer_for(tmp_path, schedule=THIN, model=model, data=data)
    trainer.train()
    assert model.fc1.weight.shape == (8, 8) and model.fc2.weight.shape == (3, 8)
    state = trainer.optimizer.state[model.fc1.weight]   # AdamW's moments were sliced along
    assert state["exp_avg"].shape == (8, 8)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == EPOCHS * 2 and all(math.isfinite(v) for v in losses)


def test_thinning_under_ddp_is_refused():
    from compressor.integrations._driver import refuse_distributed_thinning
    scheduler = compressor.dict_config(TwoLayer(), None, THIN)
    with pytest.raises(CompressorError, match=r"Hugging Face Trainer: thinning \(StructureRemover\) "
                                              r"under 2 processes is not supported"):
        refuse_distributed_thinning(scheduler, 2, "Hugging Face Trainer")
