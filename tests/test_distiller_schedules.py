"""Distiller's own schedule files (tests/distiller_schedules/) load unchanged and do what they say."""
import math
import os

import pytest
import torch

import compressor
from compressor.models import create_model
from compressor.schedules import agp_sparsity_at_epoch
from helpers import assert_same_function, train

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distiller_schedules")


def test_resnet20_filters_agp_with_thinning_at_epoch_30():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = compressor.file_config(model, opt, os.path.join(HERE, "resnet20_filters.schedule_agp.yaml"))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    train(model, opt, sched, [(x, y)], range(0, 30, 2), metrics=None)   # the low_pruner's epochs 0, 2, ..., 28
    target = agp_sparsity_at_epoch(0.10, 0.50, 28, 0, 30, 2)
    assert target == pytest.approx(0.5)
    w = model.layer2[0].conv1.weight
    assert float((w.flatten(1).abs().sum(1) == 0).float().mean()) == pytest.approx(0.5)
    train(model, opt, sched, [(x, y)], [30], metrics=None)   # the thinner removes the zeroed filters
    assert model.layer2[0].conv1.out_channels == 16 and model.layer2[0].conv2.in_channels == 16
    assert len(model.thinning_recipes) == 1
    train(model, opt, sched, [(x, y)], range(32, 50, 2), metrics=None)   # fine and fc pruners until epoch 48
    fine = model.layer3[1].conv1.weight
    assert float((fine == 0).float().mean()) == pytest.approx(0.7, abs=1e-3)
    fc_rows_zero = (model.fc.weight.abs().sum(0) == 0).float().mean()   # Distiller's Rows: input columns
    assert float(fc_rows_zero) == pytest.approx(math.floor(0.5 * 64) / 64)


def test_resnet56_one_shot_filter_ranking_then_thinning(float64):
    model = create_model("resnet56_cifar")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compressor.file_config(model, opt, os.path.join(HERE, "resnet56_cifar_filter_rank.yaml"))
    x = torch.randn(2, 3, 32, 32)
    sched.on_epoch_begin(0, opt)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    sched.on_minibatch_begin(0, 0, 1, opt)                # thinning fires at the first minibatch
    assert model.layer1[0].conv1.out_channels == 16 - math.floor(0.6 * 16)
    assert model.layer2[1].conv1.out_channels == 16
    with torch.no_grad():
        assert_same_function(model(x), masked)   # float64: same function, smaller network


def test_alexnet_hybrid_with_partial_dataparallel_names_builds():
    model = create_model("alexnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compressor.file_config(model, opt, os.path.join(HERE, "alexnet.schedule_agp_2Dreg.yaml"))
    names = {key.split(":")[-1] for key in sched.keys}
    assert names == {"conv2_pruner", "fc_pruner", "2d_groups_regularizer", "pruning_lr"}
    reg = [p for p in sched.ordered if p.name == "2d_groups_regularizer"][0]
    assert reg.regularizer.param_names == ["features.0.weight", "features.3.weight"]
    assert [p for p in sched.ordered if p.name == "conv2_pruner"][0].pruner.weights == ["features.3.weight"]
