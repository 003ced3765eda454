"""The scheduler's behaviour: targets reached, masks exact through optimizers, resume exactness."""
import io
import math

import pytest
import torch
from torch import nn

import compressor
from compressor.schedules import agp_sparsity_at_epoch

from helpers import TinyNet, assert_same_function, make_batches, train

AGP_YAML = """\
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.85
    weights: [conv1.weight, conv2.weight, fc.weight]
  sens:
    class: SensitivityPruner
    sensitivities: {fc.bias: 0.5}
lr_schedulers:
  lr: {class: StepLR, step_size: 2, gamma: 0.5}
policies:
  - pruner: {instance_name: agp}
    starting_epoch: 1
    ending_epoch: 8
    frequency: 2
  - pruner: {instance_name: sens}
    epochs: [2, 5]
  - lr_scheduler: {instance_name: lr}
    starting_epoch: 0
    ending_epoch: 100
    frequency: 1
"""


def zeros(t):
    return int((t == 0).sum())


def test_agp_reaches_distillers_targets_epoch_by_epoch(write_yaml, tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.01, momentum=0.9)
    sched = compressor.file_config(tiny, opt, write_yaml(AGP_YAML))
    batches = make_batches()
    seen = {}

    def record(epoch, i):
        if i == len(batches) - 1:
            seen[epoch] = {n: zeros(p) for n, p in tiny.named_parameters()}

    train(tiny, opt, sched, batches, epochs=9, after_step=record)
    last_target = 0.0
    for epoch in range(9):
        if epoch in (1, 3, 5, 7):
            last_target = agp_sparsity_at_epoch(0.05, 0.85, epoch, 1, 8, 2)
        for name in ("conv1.weight", "conv2.weight", "fc.weight"):
            numel = dict(tiny.named_parameters())[name].numel()
            assert seen[epoch][name] == math.floor(last_target * numel + 1e-6), (epoch, name)
    assert last_target == pytest.approx(0.85)   # the last pruning step hits final_sparsity exactly


def test_agp_with_an_epochs_list_spreads_the_cubic_over_the_list(tiny):
    sched = compressor.dict_config(tiny, None, {
        "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                          "final_sparsity": 0.7, "weights": ["fc.weight"]}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0, 3, 4]}]})
    got = []
    for epoch in range(5):
        sched.on_epoch_begin(epoch)
        got.append(compressor.sparsity(tiny.fc.weight))
    numel = tiny.fc.weight.numel()
    expected = [0.1, 0.1, 0.1, 0.7 + (0.1 - 0.7) * 0.125, 0.7]
    assert got == pytest.approx([math.floor(s * numel + 1e-6) / numel for s in expected])


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=0.01),
    lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
], ids=["sgd-momentum-wd", "nesterov", "adam", "adamw", "rmsprop"])
def test_pruned_weights_stay_exactly_zero_and_masks_only_add_zeros(write_yaml, tiny, make_opt):
    opt = make_opt(tiny.parameters())
    sched = compressor.file_config(tiny, opt, write_yaml(AGP_YAML))
    previous = {}

    def check(epoch, i):
        for name, mask in sched.store.masks.items():
            param = dict(tiny.named_parameters())[name]
            assert torch.all(param[mask == 0] == 0), (name, epoch, i)
            if name in previous:    # zeros only ever added
                assert torch.all(mask[previous[name] == 0] == 0)
            previous[name] = mask.clone()

    train(tiny, opt, sched, make_batches(), epochs=8, after_step=check)
    assert compressor.sparsity(tiny.fc.weight) >= 0.84


def run(path, epochs, start=0, state=None, model_state=None, opt_state=None):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    if model_state is not None:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    sched = compressor.file_config(model, opt, path, resumed_epoch=start - 1 if start else None)
    if state is not None:
        sched.load_state_dict(state)
    train(model, opt, sched, make_batches(), epochs=epochs, start_epoch=start)
    return model, opt, sched


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("stop", [2, 3, 6])
def test_resumed_run_equals_uninterrupted_run(write_yaml, stop):
    path = write_yaml(AGP_YAML)
    full_model, full_opt, full_sched = run(path, 9)
    part_model, part_opt, part_sched = run(path, stop)
    saved = roundtrip({"model": part_model.state_dict(), "opt": part_opt.state_dict(),
                       "sched": part_sched.state_dict()})
    res_model, res_opt, res_sched = run(path, 9, start=stop, state=saved["sched"],
                                        model_state=saved["model"], opt_state=saved["opt"])
    for (name, a), b in zip(full_model.state_dict().items(), res_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert full_opt.param_groups[0]["lr"] == res_opt.param_groups[0]["lr"]
    assert full_sched.masks.keys() == res_sched.masks.keys()
    for name, mask in full_sched.masks.items():
        assert torch.equal(mask, res_sched.masks[name])


def test_building_for_a_resumed_run_does_not_move_the_lr(write_yaml, tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    for g in opt.param_groups:
        g["initial_lr"], g["lr"] = 0.1, 0.0125
    text = AGP_YAML.replace("StepLR, step_size: 2, gamma: 0.5", "LambdaLR, lr_lambda: 3")
    path = write_yaml(AGP_YAML)
    sched = compressor.file_config(tiny, opt, path, resumed_epoch=5)
    assert opt.param_groups[0]["lr"] == 0.0125
    lr_policy = sched.ordered[-1]
    assert lr_policy.lr_scheduler.last_epoch == 6   # epochs 0..5 each stepped once


def test_before_backward_pass_adds_regularizer_terms_by_name(tiny):
    sched = compressor.dict_config(tiny, None, {
        "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"fc.weight": 0.01}}},
        "policies": [{"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 1}]})
    loss = torch.tensor(1.0)
    out = sched.before_backward_pass(0, 0, 1, loss, return_loss_components=True)
    expected = 0.01 * tiny.fc.weight.abs().sum()
    assert [c.name for c in out.loss_components] == ["l1_loss"]
    assert torch.allclose(out.loss_components[0].value, expected)
    assert torch.allclose(out.overall_loss, 1.0 + expected)
    assert loss.item() == 1.0                                   # the input loss is untouched
    assert torch.allclose(sched.before_backward_pass(0, 0, 1, loss), 1.0 + expected)
    assert sched.before_backward_pass(1, 0, 1, loss) is loss    # no policy in epoch 1


def test_forward_only_masks_with_double_copies_let_dense_weights_learn(tiny):
    sched = compressor.dict_config(tiny, None, {
        "pruners": {"s": {"class": "SplicingPruner", "sensitivities": {"fc.weight": 0.5},
                          "low_thresh_mult": 0.9, "hi_thresh_mult": 1.1}},
        "policies": [{"pruner": {"instance_name": "s", "args": {
            "mask_on_forward_only": True, "use_double_copies": True, "mask_gradients": True,
            "mini_batch_pruning_frequency": 1}}, "starting_epoch": 0, "ending_epoch": 3}]})
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    dense_before = tiny.fc.weight.detach().clone()
    in_forward = []
    tiny.fc.register_forward_pre_hook(lambda m, i: in_forward.append(m.weight.detach().clone()))
    train(tiny, opt, sched, make_batches(), epochs=3)
    mask = sched.store.masks["fc.weight"]
    assert 0 < int((mask == 0).sum()) < mask.numel()
    assert all(torch.all(w[sched.store.masks["fc.weight"] == 0] == 0) for w in in_forward[-1:])
    # After the step the dense copy (not the masked one) was updated: pruned weights are not zero.
    assert int((tiny.fc.weight[mask == 0] != 0).sum()) > 0
    assert not torch.equal(dense_before, tiny.fc.weight)


def test_keep_mask_makes_a_forward_only_mask_permanent(tiny):
    sched = compressor.dict_config(tiny, None, {
        "pruners": {"l": {"class": "LevelPruner", "levels": {"fc.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "l", "args": {
            "mask_on_forward_only": True, "keep_mask": True}}, "starting_epoch": 0, "ending_epoch": 2}]})
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    train(tiny, opt, sched, make_batches(), epochs=2)
    assert compressor.sparsity(tiny.fc.weight) == pytest.approx(0.5)
    train(tiny, opt, sched, make_batches(), epochs=4, start_epoch=2)   # masks now kept after steps
    assert compressor.sparsity(tiny.fc.weight) == pytest.approx(0.5)


def test_reduce_lr_on_plateau_reads_the_metrics(tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    sched = compressor.dict_config(tiny, opt, {
        "lr_schedulers": {"plateau": {"class": "ReduceLROnPlateau", "mode": "max", "patience": 0, "factor": 0.5}},
        "policies": [{"lr_scheduler": {"instance_name": "plateau"}, "starting_epoch": 0, "ending_epoch": 10}]})
    for epoch in range(3):
        sched.on_epoch_end(epoch, opt, metrics={"min": 1.0, "max": 50.0})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs on_epoch_end"):
        sched.on_epoch_end(3, opt)


def test_policies_act_in_declaration_order(tiny):
    # level 0.5 then a threshold that removes everything below 1e9 except nothing: order shows.
    sched = compressor.dict_config(tiny, None, {
        "pruners": {"a": {"class": "LevelPruner", "levels": {"fc.weight": 0.5}},
                    "b": {"class": "LevelPruner", "levels": {"fc.weight": 0.25}}},
        "policies": [{"pruner": {"instance_name": "a"}, "epochs": [0]},
                     {"pruner": {"instance_name": "b"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    assert compressor.sparsity(tiny.fc.weight) == pytest.approx(0.5)   # b cannot un-prune a
    assert [p.name for p in sched.policies[0]] == ["a", "b"]


def test_zeros_mask_dict_view_is_distiller_compatible(tiny):
    sched = compressor.CompressionScheduler(tiny)
    mask = torch.ones_like(tiny.fc.weight)
    mask[0] = 0
    sched.zeros_mask_dict["fc.weight"].mask = mask
    sched.zeros_mask_dict["fc.weight"].apply_mask(tiny.fc.weight)
    assert torch.all(tiny.fc.weight[0] == 0)
    assert sched.zeros_mask_dict["fc.bias"].mask is None


def test_state_dict_is_plain_data_loadable_with_weights_only(write_yaml, tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    sched = compressor.file_config(tiny, opt, write_yaml(AGP_YAML))
    train(tiny, opt, sched, make_batches(), epochs=3)
    state = roundtrip(sched.state_dict())
    assert state["masks_dict"]["masks"]["fc.weight"].dtype == torch.bool
    assert "stds" in state["policies"]["policies[1]:pruner:sens"]["pruner"]


def test_load_state_dict_rejects_masks_that_do_not_fit(tiny):
    sched = compressor.CompressionScheduler(tiny)
    with pytest.raises(compressor.CheckpointError, match=r"mask for 'fc\.weight' has shape \(3,\)"):
        sched.load_state_dict({"masks_dict": {"masks": {"fc.weight": torch.ones(3, dtype=torch.bool)}}})
    with pytest.raises(compressor.CheckpointError, match=r"mask for 'fc9\.weight' has no parameter"):
        sched.load_state_dict({"masks_dict": {"masks": {"fc9.weight": torch.ones(3, dtype=torch.bool)}}})


def test_group_lasso_keep_mask_also_masks_zeroed_filters_bias_and_batch_norm_so_thinning_is_exact(
        float64):
    from compressor.models import create_model
    from compressor.thinning import contract_model
    torch.manual_seed(0)
    model = create_model("lenet5_bn")
    with torch.no_grad():
        model.conv1.weight[::2] *= 1e-3       # half of conv1's filters fall under the threshold
    sched = compressor.dict_config(model, None, {
        "regularizers": {"ssl": {"class": "GroupLassoRegularizer", "threshold_criteria": "Max",
                                 "reg_regims": {"conv1.weight": [0.01, "Filters"]}}},
        "policies": [{"regularizer": {"instance_name": "ssl", "args": {"keep_mask": True}}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    sched.on_minibatch_end(0, 0, 1)          # the last minibatch of the policy: masks are kept
    zeroed = model.conv1.weight.detach().flatten(1).abs().sum(dim=1) == 0
    assert int(zeroed.sum()) == 10
    for name in ("conv1.bias", "bn1.weight", "bn1.bias"):
        assert torch.equal(sched.masks[name], ~zeroed), name
        assert torch.all(dict(model.named_parameters())[name][zeroed] == 0)
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        masked = model(x)
    result = contract_model(model, (1, 28, 28), store=sched)
    assert model.conv1.out_channels == 10 and result.nonzero_bias_removed == 0
    with torch.no_grad():
        assert_same_function(model(x), masked)      # float64: exact up to rounding


# ---------------------------------------------------------------- Distiller's masker interface

def test_zeros_mask_dict_accepts_dataparallel_names_and_iterates_the_models_names():
    model = nn.Sequential(nn.Linear(3, 2))
    scheduler = compressor.CompressionScheduler(nn.DataParallel(model))
    masks = scheduler.zeros_mask_dict
    assert list(masks) == ["0.weight", "0.bias"] and len(masks) == 2
    assert "module.0.weight" in masks and "0.weight" in masks and "module.1.weight" not in masks
    masks["module.0.weight"].mask = torch.tensor([[1., 0., 1.], [0., 1., 1.]])
    assert torch.equal(masks["0.weight"].mask, torch.tensor([[1., 0., 1.], [0., 1., 1.]]))
    assert masks["0.bias"].mask is None
    with pytest.raises(KeyError):
        masks["module.2.weight"]


def test_apply_mask_masks_the_tensor_it_is_given():
    model = nn.Sequential(nn.Linear(3, 2))
    scheduler = compressor.CompressionScheduler(model)
    masker = scheduler.zeros_mask_dict["0.weight"]
    masker.mask = torch.tensor([[1., 0., 1.], [0., 1., 1.]])
    other = torch.full((2, 3), 7.0)
    assert masker.apply_mask(other) is other
    assert torch.equal(other, torch.tensor([[7., 0., 7.], [0., 7., 7.]]))
    assert model[0].weight.count_nonzero() == 6          # the parameter is left alone
    masker.apply_mask(model[0].weight)                    # the parameter itself, as Distiller did
    assert torch.equal(model[0].weight != 0, masker.mask.bool())
    with pytest.raises(ValueError, match=r"^apply_mask: tensor of shape \(3, 2\) does not fit the "
                                         r"mask of '0\.weight', shape \(2, 3\)$"):
        masker.apply_mask(torch.ones(3, 2))
    unmasked = torch.ones(2)
    assert torch.equal(scheduler.zeros_mask_dict["0.bias"].apply_mask(unmasked), torch.ones(2))


def test_sched_metadata_records_each_policys_range():
    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    a, b = compressor.ScheduledTrainingPolicy(), compressor.ScheduledTrainingPolicy()
    scheduler.add_policy(a, starting_epoch=0, ending_epoch=10, frequency=4)   # fires 0, 4, 8
    scheduler.add_policy(b, epochs=[7, 3])
    assert scheduler.sched_metadata[a] == {"starting_epoch": 0, "ending_epoch": 10, "frequency": 4}
    assert scheduler.sched_metadata[b] == {"starting_epoch": 3, "ending_epoch": 8, "frequency": None}
