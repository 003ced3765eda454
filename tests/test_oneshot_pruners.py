"""One-shot calibrated pruners (magnitude, Wanda, SparseGPT): masks, reconstruction, calibration."""
import pytest
import torch
from torch import nn

import compressor
from compressor.errors import ComponentArgError
from compressor.oneshot import (CalibrationError, InputStats, nm_keep, provide_calibration,
                                run_sequential, sparsegpt_prune, unstructured_keep)
from compressor.pruners.oneshot import SparseGPTPruner, WandaPruner, take_samples


def stats_of(x: torch.Tensor, hessian=True) -> InputStats:
    s = InputStats(x.shape[-1], hessian)
    s.add(x)
    return s


def schedule(cls, weights, **args):
    return {"pruners": {"p": dict({"class": cls, "weights": weights}, **args)},
            "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}


class Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class Blocks(nn.Module):
    """A stack of two residual MLP blocks in an nn.ModuleList, as decoders hold theirs (the
    residual inside the block: each block's output is the next one's input)."""

    def __init__(self, width=8, residual_outside=False):
        super().__init__()
        self.residual_outside = residual_outside
        self.inp = nn.Linear(4, width)
        kind = nn.Sequential if residual_outside else Residual
        self.layers = nn.ModuleList(kind(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, width))
                                    for _ in range(2))
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        h = self.inp(x)
        for block in self.layers:
            h = h + block(h) if self.residual_outside else block(h)
        return self.out(h)


LAYER_WEIGHTS = ["layers.0.0.weight", "layers.0.2.weight", "layers.1.0.weight", "layers.1.2.weight"]


# -- mask selection ------------------------------------------------------------------------------

def test_unstructured_counts_are_exact_per_layer_and_per_row():
    scores = torch.rand(6, 10)
    layer = unstructured_keep(scores, 0.37, per_row=False)
    assert int((~layer).sum()) == int(0.37 * 60)
    row = unstructured_keep(scores, 0.5, per_row=True)
    assert ((~row).sum(1) == 5).all()


def test_nm_pattern_is_exact():
    keep = nm_keep(torch.rand(5, 16), 2, 4)
    assert (keep.reshape(5, 4, 4).sum(-1) == 2).all()


def test_ties_are_broken_by_position_and_repeatable():
    scores = torch.ones(2, 8)
    keep = unstructured_keep(scores, 0.25, per_row=True)
    assert keep[:, :2].logical_not().all() and keep[:, 2:].all()   # the earliest two go
    assert torch.equal(keep, unstructured_keep(scores.clone(), 0.25, per_row=True))
    assert torch.equal(nm_keep(scores, 2, 4)[0], torch.tensor([False, False, True, True] * 2))


# -- SparseGPT solver ----------------------------------------------------------------------------

def correlated_inputs(n=512, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * 0.3 + torch.eye(d)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.double()


def test_sparsegpt_zero_sparsity_leaves_weights_unchanged():
    w = torch.randn(8, 32, dtype=torch.float64)
    new, keep = sparsegpt_prune(w, stats_of(correlated_inputs()).hessian(), 0.0)
    assert keep.all() and torch.equal(new, w)


def test_sparsegpt_with_white_inputs_is_blockwise_magnitude():
    # H = c·I: the OBS saliency is w² up to a constant and the update has no off-diagonal terms.
    w = torch.randn(6, 16, dtype=torch.float64)
    new, keep = sparsegpt_prune(w, 3.0 * torch.eye(16, dtype=torch.float64), 0.5, block_size=16)
    assert torch.equal(keep, unstructured_keep(w.abs().reshape(1, -1), 0.5, False).reshape(6, 16))
    assert torch.allclose(new, w * keep, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pattern", [{"fraction": 0.5}, {"nm": (2, 4)}])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    x = correlated_inputs()
    w = torch.randn(16, 32, dtype=torch.float64)
    s = stats_of(x)
    new, keep = sparsegpt_prune(w, s.hessian(), pattern.get("fraction", 0.0), pattern.get("nm"),
                                block_size=16)
    assert int((~keep).sum()) == 16 * 16 and bool((new[~keep] == 0).all())
    score_mag, score_wanda = w.abs(), w.abs() * s.norms()
    if "nm" in pattern:
        mag, wanda = nm_keep(score_mag, 2, 4), nm_keep(score_wanda, 2, 4)
    else:
        mag, wanda = unstructured_keep(score_mag, 0.5, True), unstructured_keep(score_wanda, 0.5, True)

    def err(wp):
        return float(((x @ w.T - x @ wp.T) ** 2).sum())
    assert err(new) < err(w * wanda)
    assert err(new) < err(w * mag)


# -- pruners in a schedule -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["OneShotMagnitudePruner", "WandaPruner", "SparseGPTPruner"])
@pytest.mark.parametrize("pattern", [{"desired_sparsity": 0.5}, {"n": 2, "m": 4}])
def test_each_pruner_reaches_its_pattern_and_masks_stay_zero(cls, pattern):
    torch.manual_seed(0)
    model = Blocks()
    sched = compressor.dict_config(model, None, schedule(cls, LAYER_WEIGHTS, **pattern))
    provide_calibration(sched, [torch.randn(8, 4) for _ in range(3)])
    sched.on_epoch_begin(0)
    assert sorted(sched.masks) == sorted(LAYER_WEIGHTS)
    for name in LAYER_WEIGHTS:
        w, mask = sched.store.params[name], sched.masks[name]
        dropped = mask == 0
        if "n" in pattern:
            assert (dropped.reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), name
        else:
            assert float(dropped.float().mean()) == 0.5, name
        assert bool((w[dropped] == 0).all()), name
    opt = torch.optim.Adam(model.parameters(), lr=0.1)     # a training step cannot revive them
    loss = model(torch.randn(8, 4)).square().mean()
    loss.backward()
    opt.step()
    sched.on_minibatch_end(0, 0, 1, opt)
    for name in LAYER_WEIGHTS:
        assert bool((sched.store.params[name][sched.masks[name] == 0] == 0).all())


def test_sequential_calibration_feeds_each_block_the_pruned_blocks_outputs():
    torch.manual_seed(1)
    model = Blocks()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [torch.randn(16, 4) for _ in range(2)]
    sched = compressor.dict_config(model, None, schedule("WandaPruner", LAYER_WEIGHTS,
                                                         desired_sparsity=0.5))
    provide_calibration(sched, batches)
    sched.on_epoch_begin(0)
    # Block 1's inputs, recomputed from the pruned model (block 0 pruned, block 1 dense again):
    pruned_block1 = {n: p.detach().clone() for n, p in model.layers[1].named_parameters()}
    with torch.no_grad():
        for n, p in model.layers[1].named_parameters():
            p.copy_(dense[f"layers.1.{n}"])
    seen = []
    hook = model.layers[1][0].register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with torch.no_grad():
        for b in batches:
            model(b)
    hook.remove()
    norms = stats_of(torch.cat(seen), hessian=False).norms()
    expect = unstructured_keep(dense["layers.1.0.weight"].abs().double() * norms, 0.5, True)
    assert torch.equal(sched.masks["layers.1.0.weight"].bool(), expect)
    assert torch.equal(pruned_block1["0.weight"] == 0, ~expect)


def test_blocks_that_do_not_chain_are_refused_unless_sequential_is_off():
    model = Blocks(residual_outside=True)
    sched = compressor.dict_config(model, None, schedule("WandaPruner", LAYER_WEIGHTS,
                                                         desired_sparsity=0.5))
    provide_calibration(sched, [torch.randn(8, 4)])
    with pytest.raises(CalibrationError, match="does not take 'layers.0''s output.*sequential: false"):
        sched.on_epoch_begin(0)
    sched = compressor.dict_config(model, None, schedule("WandaPruner", LAYER_WEIGHTS,
                                                         desired_sparsity=0.5, sequential=False))
    provide_calibration(sched, [torch.randn(8, 4)])
    sched.on_epoch_begin(0)
    assert len(sched.masks) == 4


def test_layers_outside_the_block_stack_get_one_full_pass():
    torch.manual_seed(2)
    model = Blocks()
    sched = compressor.dict_config(model, None, schedule("SparseGPTPruner",
                                                         ["inp.weight", "out.weight"], n=1, m=2))
    provide_calibration(sched, [torch.randn(8, 4)])
    sched.on_epoch_begin(0)
    assert float((sched.masks["out.weight"] == 0).float().mean()) == 0.5


def test_take_samples_counts_rows_of_tensors_and_dicts():
    batches = [torch.zeros(3, 2), torch.zeros(3, 2)]
    assert [b.shape[0] for b in take_samples(batches, 4)] == [3, 1]
    dicts = [{"input_ids": torch.zeros(2, 5, dtype=torch.long), "use_cache": False}] * 3
    got = take_samples(dicts, 5)
    assert [d["input_ids"].shape[0] for d in got] == [2, 2, 1] and got[2]["use_cache"] is False


def test_a_decoder_is_pruned_block_by_block():
    pytest.importorskip("transformers")
    from helpers.models import tiny_llama
    model = tiny_llama(layers=3)
    seen = []
    progress = lambda done, total, label: seen.append((done, total, label))
    sched = compressor.dict_config(model, None, schedule(
        "SparseGPTPruner", [r"re:model\.layers\.\d+\.mlp\.\w+_proj\.weight"], desired_sparsity=0.5,
        calibration_samples=3))
    provide_calibration(sched, [{"input_ids": torch.randint(0, 64, (2, 12)), "use_cache": False}
                                for _ in range(4)], progress=progress)
    sched.on_epoch_begin(0)
    assert seen == [(i, 3, "model.layers") for i in (1, 2, 3)]
    assert len(sched.masks) == 9
    assert torch.isfinite(model(torch.randint(0, 64, (1, 8))).logits).all()


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, key, text", [
    ({}, "desired_sparsity", "either desired_sparsity"),
    ({"desired_sparsity": 0.5, "n": 2, "m": 4}, "desired_sparsity", "not both"),
    ({"n": 2}, "m", "needs both n and m"),
    ({"n": 4, "m": 4}, "n", "must be smaller than m"),
    ({"desired_sparsity": 1.5}, "desired_sparsity", "1.5"),
    ({"desired_sparsity": 0.5, "calibration_samples": 0}, "calibration_samples", ">= 1"),
    ({"desired_sparsity": 0.5, "sequential": "yes"}, "sequential", "true or false"),
])
def test_bad_arguments_name_the_key(args, key, text):
    with pytest.raises(ComponentArgError, match=text) as info:
        WandaPruner("p", ["w"], **args)
    assert info.value.key == key


def test_sparsegpt_arguments():
    with pytest.raises(ComponentArgError, match="multiple of m=4"):
        SparseGPTPruner("p", ["w"], n=2, m=4, block_size=6)
    with pytest.raises(ComponentArgError, match=r"in \(0, 1\]"):
        SparseGPTPruner("p", ["w"], desired_sparsity=0.5, damp=0)


def test_schedule_errors_name_the_weight():
    model = Blocks()
    with pytest.raises(compressor.ScheduleError, match="not a multiple of m=3"):
        compressor.dict_config(model, None, schedule("WandaPruner", ["layers.0.0.weight"], n=1, m=3))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(compressor.ScheduleError, match="is not a Linear weight"):
        compressor.dict_config(conv, None, schedule("WandaPruner", ["0.weight"], desired_sparsity=0.5))


def test_firing_without_calibration_data_is_an_error_not_a_silent_skip():
    sched = compressor.dict_config(Blocks(), None, schedule("WandaPruner", LAYER_WEIGHTS,
                                                            desired_sparsity=0.5))
    with pytest.raises(CalibrationError, match="fired without calibration data.*provide_calibration"):
        sched.on_epoch_begin(0)
    with pytest.raises(CalibrationError, match="no calibration batches"):
        run_sequential(Blocks(), {}, [], lambda *a: None)


def test_counts_are_immune_to_float_noise():
    # 0.29 * 100 is 28.999999999999996 in floating point; 29 weights must go
    assert int((~unstructured_keep(torch.rand(1, 100), 0.29, per_row=False)).sum()) == 29
