"""The compression scheduler inside a real Lightning Trainer (a small MLP, float64, CPU)."""
from __future__ import annotations

import csv
import math
import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

import compressor  # noqa: E402
from helpers.event_counter import counted, counts  # noqa: E402
from compressor.errors import CheckpointError, CompressorError, ScheduleError  # noqa: E402
from compressor.integrations.lightning import (CHECKPOINT_KEY, CompressionCallback,  # noqa: E402
                                               CompressionModule)

SCHEDULE = {
    "version": 1,
    "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.3,
                        "final_sparsity": 0.7, "weights": ["fc1.weight", "fc2.weight"]}},
    "regularizers": {"out_l1": {"class": "L1Regularizer", "reg_regims": {"fc3.weight": 1e-3}}},
    "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 3,
                  "frequency": 1},
                 {"regularizer": {"instance_name": "out_l1"}, "starting_epoch": 0, "ending_epoch": 4}],
}
EPOCHS, SAMPLES, BATCH = 4, 32, 8     # 4 optimizer steps per epoch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Module(CompressionModule, pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = Net().double()   # float64, one thread order: resumed == uninterrupted exactly

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("objective", loss)
        return self.compression_loss(loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (SAMPLES,), generator=g)
    # no shuffling: Lightning restores no sampler state, and the comparison needs the same order
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def fit(out, schedule=SCHEDULE, epochs=EPOCHS, ckpt_path=None, module=None, **kw):
    module = module if module is not None else Module()
    callback = CompressionCallback(counted(compressor.dict_config(module.net, None, schedule), EPOCHS))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=str(out),
                         logger=pl.loggers.CSVLogger(str(out), name="logs"),
                         callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Lightning's advice on num_workers and the like
        trainer.fit(module, loader(), ckpt_path=ckpt_path, weights_only=True)
    return module, trainer, callback


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return (out,) + fit(out)


def test_agp_reaches_target_and_masks_stay_zero(full_run):
    _, module, _, callback = full_run
    for name in ("fc1.weight", "fc2.weight"):
        w = dict(module.net.named_parameters())[name]
        assert int((w == 0).sum()) == math.floor(0.7 * w.numel()), name
        assert torch.all(w[callback.scheduler.store.masks[name] == 0] == 0), name


def test_loss_components_logged(full_run):
    out, module, trainer, _ = full_run
    with open(out / "logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("out_l1_loss")]
    assert len(rows) == EPOCHS * SAMPLES // BATCH
    assert all(float(r["out_l1_loss"]) > 0 for r in rows)
    w = module.net.fc3.weight.detach()
    # logged before the last step's update, so only near the final weights' penalty
    assert float(rows[-1]["out_l1_loss"]) == pytest.approx(1e-3 * float(w.abs().sum()), rel=0.2)


def test_resumed_run_equals_uninterrupted(full_run, tmp_path):
    _, full, _, _ = full_run
    _, trainer, _ = fit(tmp_path / "first", epochs=2)
    ckpt = trainer.checkpoint_callback.best_model_path
    saved = torch.load(ckpt, weights_only=True)
    assert saved[CHECKPOINT_KEY]["ended"] == 1
    resumed, _, callback = fit(tmp_path / "second", ckpt_path=ckpt)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    every = list(range(EPOCHS))   # each epoch began and ended once, across the interruption
    assert counts(callback.scheduler) == (every, every)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    module, _, callback = fit(tmp_path, accumulate_grad_batches=2)
    assert callback.driver.steps_per_epoch == 2 and callback.driver.ended == EPOCHS - 1
    for name in ("fc1.weight", "fc2.weight"):
        w = dict(module.net.named_parameters())[name]
        assert int((w == 0).sum()) == math.floor(0.7 * w.numel()), name


def test_checkpoint_without_state_is_refused(full_run, tmp_path):
    out, _, trainer, _ = full_run
    saved = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    del saved[CHECKPOINT_KEY]
    torch.save(saved, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="the checkpoint has no 'compression_scheduler': it "
                                              "was not saved with compressor's Lightning"):
        fit(tmp_path, epochs=EPOCHS + 1, ckpt_path=str(tmp_path / "plain.ckpt"))


def test_schedule_error_is_a_schedule_error():
    schedule = dict(SCHEDULE, pruners={"agp": dict(SCHEDULE["pruners"]["agp"], weights=["fc9.weight"])})
    with pytest.raises(ScheduleError, match=r"pruners\.agp\.weights.*matches no parameter"):
        compressor.dict_config(Net(), None, schedule)


def test_compression_loss_needs_the_callback(tmp_path):
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=str(tmp_path),
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    with pytest.raises(CompressorError, match=r"the Trainer needs exactly one compressor "
                                              r"CompressionCallback in callbacks=\[...\]; it has 0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Module(), loader())


THIN = {
    "version": 1,
    "input_shape": [6],
    "pruners": {"neurons": {"class": "L1RankedStructureParameterPruner", "group_type": "Cols",
                            "desired_sparsity": 0.5, "weights": ["fc1.weight"]}},
    "extensions": {"thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
    "policies": [{"pruner": {"instance_name": "neurons"}, "epochs": [0]},
                 {"extension": {"instance_name": "thinner"}, "epochs": [1]}],
}


def test_thinning_mid_training_keeps_training(tmp_path):
    module, trainer, _ = fit(tmp_path, schedule=THIN, epochs=3)
    assert module.net.fc1.weight.shape == (8, 6) and module.net.fc2.weight.shape == (12, 8)
    assert trainer.optimizers[0].state[module.net.fc1.weight]["exp_avg"].shape == (8, 6)
    assert math.isfinite(float(trainer.callback_metrics["objective"]))
