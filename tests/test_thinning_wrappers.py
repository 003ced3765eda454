"""Thinning through wrapped submodules: Distiller's VGG/AlexNet layout wraps ``features`` in
DataParallel (parameters ``features.module.0.weight``); ``torch.compile`` wraps in an
OptimizedModule (``features._orig_mod.0.weight``). The wrapped layers are analysed, pruned with
their coupling, thinned exactly and replayed, never silently skipped."""
import copy

import pytest
import torch
from torch import nn

from compressor.builder import dict_config
from compressor.thinning import analyze, remove_filters, replay


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def wrapped_dp():
    torch.manual_seed(0)
    m = VGGish().double()
    m.features = nn.DataParallel(m.features)   # CPU: no devices, it just calls its module
    return m


def wrapped_compiled():
    torch.manual_seed(0)
    m = VGGish().double()
    m.features = torch.compile(m.features, backend="eager")
    return m


SCHEDULE = {
    "input_shape": [3, 8, 8],
    "pruners": {"filters": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                            "desired_sparsity": 0.5,
                            "weights": ["features.0.weight", "features.3.weight"]}},
    "policies": [{"pruner": {"instance_name": "filters"}, "epochs": [0]}],
}


def prune_and_thin(model, prefix):
    scheduler = dict_config(model, None, SCHEDULE)
    names = scheduler.ordered[0].pruner.param_names
    assert f"features.{prefix}.0.weight" in names and f"features.{prefix}.1.weight" in names
    scheduler.on_epoch_begin(0)
    model.eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        masked = model(x)
    dense = copy.deepcopy(model)
    result = remove_filters(model, (3, 8, 8), store=scheduler)
    assert result.changed
    inner = getattr(model.features, prefix)
    assert inner[0].out_channels == 4 and inner[3].out_channels == 4 and inner[4].num_features == 4
    with torch.no_grad():
        thinned = model(x)
    # float64, and the removed channels were exactly zero: same sums up to a few ulps of
    # re-ordered accumulation over <= 8*9 terms of magnitude ~1.
    assert torch.allclose(thinned, masked, rtol=0, atol=1e-12)
    return dense, result, x, thinned


def test_dry_run_lists_the_layers_inside_a_dataparallel_submodule():
    report = analyze(wrapped_dp(), (3, 8, 8), "remove_filters")
    assert report.error is None
    assert "features.module.0" in report.thinnable and "features.module.3" in report.thinnable
    assert "features.module.0" in report.text()


def test_dataparallel_submodule_is_pruned_and_thinned_exactly_and_replays():
    model = wrapped_dp()
    assert isinstance(model.features, nn.DataParallel)
    fresh = copy.deepcopy(model)   # dense, as a checkpoint load builds it
    _, result, x, thinned = prune_and_thin(model, "module")
    assert isinstance(model.features, nn.DataParallel)   # the wrapper stays, its module is thinner
    replay(fresh, [result.recipe])
    assert [tuple(p.shape) for p in fresh.parameters()] == [tuple(p.shape) for p in model.parameters()]
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), thinned)


def test_compiled_submodule_is_analysed_and_thinned_exactly():
    model = wrapped_compiled()
    report = analyze(model, (3, 8, 8), "remove_filters")
    assert "features._orig_mod.0" in report.thinnable
    prune_and_thin(model, "_orig_mod")


def test_distributed_data_parallel_submodule_with_a_gloo_group_of_one():
    import torch.distributed as dist
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group of another test")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = VGGish().double()
        model.features = nn.parallel.DistributedDataParallel(model.features)
        report = analyze(model, (3, 8, 8), "remove_filters")
        assert report.thinnable[:2] == ["features.module.0", "features.module.3"]
        prune_and_thin(model, "module")
    finally:
        dist.destroy_process_group()
