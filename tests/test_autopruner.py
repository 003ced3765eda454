"""AutoPruner: trainable channel gates, their loss and alpha schedule, the masks they end in,
exact thinning afterwards, resume, and the errors a schedule can make."""
import io
import math

import pytest
import torch
from torch import nn

import compressor
from compressor.errors import CompressorError, ScheduleError
from compressor.models import create_model
from compressor.pruners.autopruner import ChannelGate
from compressor.thinning import contract_model
from helpers import assert_same_function, train


def schedule(keep_ratio=0.5, epochs=2, weights=("conv1.weight", "conv2.weight"), **extra):
    return {"pruners": {"gates": {"class": "AutoPruner", "weights": list(weights),
                                  "keep_ratio": keep_ratio, **extra}},
            "policies": [{"pruner": {"instance_name": "gates"}, "starting_epoch": 0,
                          "ending_epoch": epochs, "frequency": 1}]}


def batches(n, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 28, 28, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def gates_of(sched):
    return sched.ordered[0].pruner


def test_gate_starts_from_the_papers_initialization_and_pools_over_batch_and_space():
    torch.manual_seed(0)
    gate = ChannelGate(64)
    std = gate.fc.weight.std().item()
    assert abs(std - 10 * math.sqrt(2 / 64)) / (10 * math.sqrt(2 / 64)) < 0.05
    assert torch.all(gate.fc.bias == 0)
    x = torch.randn(4, 64, 5, 5)
    v = gate(x, alpha=2.0)
    assert v.shape == (64,)
    expected = torch.sigmoid(2.0 * gate.fc(torch.relu(x).mean(dim=(0, 2, 3))))
    assert torch.allclose(v, expected)


def test_loss_is_lambda_times_squared_gap_with_lambda_from_the_gap():
    torch.manual_seed(0)
    model = create_model("lenet5_bn")
    sched = compressor.dict_config(model, None, schedule(keep_ratio=0.3))
    pruner = gates_of(sched)
    pruner.install(model)
    model(torch.randn(8, 1, 28, 28))
    expected = 0.0
    for v in pruner._v.values():
        gap = v.mean().item() - 0.3
        expected += 100 * abs(gap) * gap ** 2
    assert pruner.loss(torch.zeros(())).item() == pytest.approx(expected, rel=1e-5)


def test_alpha_grows_linearly_over_the_policys_minibatches_and_is_logged_as_a_loss_term():
    torch.manual_seed(0)
    model = create_model("lenet5_bn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = compressor.dict_config(model, optimizer, schedule(epochs=2, alpha_start=2.0, alpha_end=12.0))
    pruner, seen = gates_of(sched), []
    train(model, optimizer, sched, batches(3), 2, after_step=lambda e, i: seen.append(pruner.alpha))
    # alpha during step k of 6 is 2 + 10 * k / 5; recorded after the step, so k = 1..5 then done
    assert seen[:5] == pytest.approx([2 + 10 * k / 5 for k in range(1, 6)])
    assert pruner.finished
    sched = compressor.dict_config(model, optimizer, schedule(epochs=2))
    sched.on_epoch_begin(0)
    sched.on_minibatch_begin(0, 0, 3)
    loss = nn.CrossEntropyLoss()(model(torch.randn(4, 1, 28, 28)), torch.zeros(4, dtype=torch.long))
    out = sched.before_backward_pass(0, 0, 3, loss, return_loss_components=True)
    assert [c.name for c in out.loss_components] == ["gates_loss"]
    assert out.overall_loss.item() == pytest.approx(loss.item() + out.loss_components[0].value.item())


def test_gates_learn_their_keep_ratio_then_become_filter_masks_and_are_removed():
    torch.manual_seed(0)
    model = create_model("lenet5_bn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = compressor.dict_config(model, optimizer, schedule(keep_ratio=0.4, epochs=3, gate_lr=0.5))
    train(model, optimizer, sched, batches(20), 3)
    pruner = gates_of(sched)
    assert pruner.finished and not pruner._hooks and not pruner.gates
    assert all(not m._forward_hooks for m in model.modules())
    masks = sched.masks
    for conv, bn, n in (("conv1", "bn1", 20), ("conv2", "bn2", 50)):
        keep = masks[f"{conv}.weight"].flatten(1).all(dim=1)
        for name in (f"{conv}.bias", f"{bn}.weight", f"{bn}.bias"):
            assert torch.equal(masks[name], keep)        # the same channels everywhere
        assert abs(keep.float().mean().item() - 0.4) <= 0.15, keep.float().mean()
        assert torch.all(dict(model.named_parameters())[f"{bn}.weight"][~keep] == 0)


def test_finalize_folds_the_open_gates_so_the_masked_network_computes_the_gated_one(float64):
    torch.manual_seed(0)
    for arch in ("lenet5_bn", "lenet5"):      # gate after the batch norm, or on the conv itself
        model = create_model(arch).eval()
        sched = compressor.dict_config(model, None, schedule())
        pruner = gates_of(sched)
        pruner.install(model)
        pruner.total_steps, pruner.step = 10, 3
        x = torch.randn(8, 1, 28, 28)
        model.train()
        with torch.no_grad():
            model(x)                      # the gates' values on x become the "epoch mean"
        model.eval()
        means = pruner.mean_gates()
        for w, layer in pruner._layers.items():   # expected: closed gates exactly zero, open ones v
            module = dict(model.named_modules())[layer["gated"]]
            keep = means[w] > 0.5
            module.register_forward_hook(
                lambda m, i, o, v=torch.where(keep, means[w], 0.0): o * v.view(1, -1, 1, 1))
        pruner.remove()
        with torch.no_grad():
            expected = model(x)
        for m in model.modules():
            m._forward_hooks.clear()
        masks = pruner.finalize(model)
        for name, mask in masks.items():
            sched.store.set(name, mask)
        sched.store.apply(list(masks))
        with torch.no_grad():
            assert_same_function(model(x), expected)      # float64: exact up to rounding


def test_the_thinned_network_equals_the_masked_one_after_autopruner(float64):
    torch.manual_seed(0)
    model = create_model("lenet5_bn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = compressor.dict_config(model, optimizer, schedule(epochs=1))
    train(model, optimizer, sched, batches(5), 1)
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        masked = model(x)
    result = contract_model(model, (1, 28, 28), optimizer=optimizer, store=sched)
    assert result.changed and model.conv1.out_channels < 20 and model.conv2.out_channels < 50
    with torch.no_grad():
        assert_same_function(model(x), masked)      # float64: exact up to rounding


def test_a_resumed_run_equals_an_uninterrupted_one():
    def fresh():
        torch.manual_seed(0)
        model = create_model("lenet5_bn")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        return model, optimizer, compressor.dict_config(model, optimizer, schedule(epochs=3))

    data = batches(4)
    model, optimizer, sched = fresh()
    train(model, optimizer, sched, data, 4)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, sched = fresh()
    train(model, optimizer, sched, data, 2)       # stop mid-policy, gates alive
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict(),
                "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model, optimizer, sched = fresh()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    train(model, optimizer, sched, data, 4, start_epoch=2)
    got = model.state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert gates_of(sched).finished


def test_thinning_while_the_gates_are_alive_is_refused_with_a_clear_message():
    model = create_model("lenet5_bn")
    sched = compressor.dict_config(model, None, schedule())
    gates_of(sched).install(model)
    with torch.no_grad():
        model.conv1.weight[:5] = 0
        model.conv1.bias[:5] = 0
        model.bn1.weight[:5] = 0
        model.bn1.bias[:5] = 0
    contract_model(model, (1, 28, 28))
    with pytest.raises(CompressorError, match=r"AutoPruner 'gates': bn1 has 15 channels but its gate "
                                              r"was built for 20; thin the model only after"):
        model(torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("sched_args, match", [
    ({"weights": ["fc1.weight"]}, r"pruners\.gates\.weights\.fc1\.weight: AutoPruner gates the output "
                                  r"channels of convolutions; 'fc1' is Linear"),
    ({"keep_ratio": 0}, r"pruners\.gates\.keep_ratio: must be in \(0\.0, 1\.0\]; got 0"),
    ({"keep_ratio": 1.5}, r"pruners\.gates\.keep_ratio: must be in \(0\.0, 1\.0\]; got 1\.5"),
    ({"alpha_start": 10, "alpha_end": 5}, r"pruners\.gates\.alpha_end: \(5\) must be >= alpha_start"),
    ({"gate_lr": -1}, r"pruners\.gates\.gate_lr: must be > 0\.0; got -1"),
    ({"gate_lr": 0}, r"pruners\.gates\.gate_lr: must be > 0\.0; got 0"),
    ({"gate_momentum": "0.9"}, r"pruners\.gates\.gate_momentum: must be a number; got '0\.9'"),
    ({"threshold": 1}, r"pruners\.gates\.threshold: must be in \(0\.0, 1\.0\); got 1"),
])
def test_bad_arguments_name_the_key(sched_args, match):
    args = {"keep_ratio": 0.5, "weights": ["conv1.weight"], **sched_args}
    with pytest.raises(ScheduleError, match=match):
        compressor.dict_config(create_model("lenet5_bn"), None, schedule(**args))


def test_policy_args_are_refused():
    s = schedule()
    s["policies"][0]["pruner"]["args"] = {"mask_on_forward_only": True}
    with pytest.raises(ScheduleError, match=r"the AutoPruner policy takes no args \(got mask_on_forward_only\)"):
        compressor.dict_config(create_model("lenet5_bn"), None, s)


@pytest.mark.slow          # trains with the app in-process
def test_the_app_stopped_mid_gating_resumes_to_the_same_thinned_network(tmp_path, monkeypatch):
    """The ready schedule through the app: gates alive at the stop, thinned after the resume."""
    import os
    import signal

    from compressor.checkpoint import read_checkpoint
    from compressor_apps import epochs
    from compressor_apps.compress_classifier import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    common = ["--arch", "lenet5_bn", "--dataset", "digits", "-b", "64", "--etrs", "0.4", "--lr", "0.05",
              "--no-progress-bar", "--deterministic", "--epochs", "6",
              "--compress", os.path.join(root, "schedules", "autopruner", "lenet5_bn.yaml")]

    def final(out):
        (folder,) = os.listdir(out)
        return read_checkpoint(os.path.join(out, folder, "checkpoint.pth.tar"))

    assert main(common + ["-o", str(tmp_path / "full")]) == 0
    calls = {"n": 0}

    def stop_at_step_12(self):
        calls["n"] += 1
        if calls["n"] == 12:                  # epoch 1, with the gates training
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(epochs.StopFlag, "__call__", stop_at_step_12)
    assert main(common + ["-o", str(tmp_path / "part")]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    part = final(tmp_path / "part")
    assert part["extras"]["resume_epoch"] == 1
    (state,) = [s for k, s in part["compression_sched"]["policies"].items() if "gates" in k]
    assert state["pruner"]["started"] and "gates" in state["pruner"]
    (folder,) = os.listdir(tmp_path / "part")
    path = os.path.join(tmp_path / "part", folder, "checkpoint.pth.tar")
    assert main(common + ["--resume-from", path, "-o", str(tmp_path / "resumed")]) == 0
    full, resumed = final(tmp_path / "full"), final(tmp_path / "resumed")
    assert full["state_dict"]["conv2.weight"].shape[0] < 50          # thinned at epoch 4
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_a_policy_that_skips_epochs_is_refused():
    s = schedule(epochs=6)
    s["policies"][0]["frequency"] = 2
    with pytest.raises(ScheduleError, match=r"policies\[0\].*the AutoPruner policy must fire on consecutive "
                                            r"epochs \(frequency: 1\); it skips after epoch 0"):
        compressor.dict_config(create_model("lenet5_bn"), None, s)
