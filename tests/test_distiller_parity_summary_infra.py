"""Distiller's tests/test_model_summary.py and tests/test_infra.py, ported where we have the feature.

Each test names the Distiller test it mirrors; calls are mapped as docs/porting-from-distiller.md
says (``create_model(pretrained, dataset, arch)`` -> ``create_model(arch, dataset=, pretrained=)``;
``distiller.model_summary(model, what)`` -> the ``compressor.summary`` table functions). Not ported:
PNG drawing (needs Distiller's SummaryGraph), ``pretrainedmodels`` and pretrained ImageNet downloads
(no network here), Distiller's checkpoint files (compressor refuses pickled checkpoints; see the
porting doc's Checkpoints section and tests/test_checkpoint.py), and ``_validate_input_shape`` /
``get_dummy_input`` (covered by the example-input tests).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor import CompressionScheduler, ScheduledTrainingPolicy, weights_sparsity_summary
from compressor.models import create_model
from compressor.summary import model_performance_summary, model_summary_modules


# ---------------------------------------------------------------- test_model_summary.py

def test_compute_summary():
    """Mirrors test_model_summary.py::test_compute_summary: the same MACs per module."""
    model = nn.DataParallel(create_model("simplenet_cifar", dataset="cifar10"))
    df = model_performance_summary(model, torch.randn(1, 3, 32, 32))
    #                                [conv1,  conv2,  fc1,   fc2,   fc3]
    assert df.loc[:, "MACs"].to_list() == [352800, 240000, 48000, 10080, 840]

    model = nn.DataParallel(create_model("mobilenet", dataset="imagenet"))
    df = model_performance_summary(model, torch.randn(1, 3, 224, 224))
    assert df.loc[:, "MACs"].to_list() == [
        10838016, 3612672, 25690112, 1806336, 25690112, 3612672, 51380224, 903168,
        25690112, 1806336, 51380224, 451584, 25690112, 903168, 51380224, 903168,
        51380224, 903168, 51380224, 903168, 51380224, 903168, 51380224, 225792,
        25690112, 451584, 51380224, 1024000]


@pytest.mark.parametrize("arch, shape", [("resnet20_cifar", (1, 3, 32, 32)),
                                         ("simplenet_mnist", (1, 1, 28, 28))])
def test_summary(arch, shape):
    """Mirrors test_model_summary.py::test_summary and ::test_mnist for 'sparsity', 'compute',
    'model' and 'modules' (Distiller only checked that nothing raised; we check the tables too)."""
    model = nn.DataParallel(create_model(arch))
    sparsity_df, total = weights_sparsity_summary(model, return_total_sparsity=True)
    assert total == 0 and len(sparsity_df) > 1
    compute_df = model_performance_summary(model, torch.randn(*shape))
    assert (compute_df["MACs"] > 0).all()
    assert str(model)                                       # 'model' printed the module tree
    modules_df = model_summary_modules(model)
    assert "module.conv1" in modules_df["Name"].to_list()   # the wrapped model's own names


# ---------------------------------------------------------------- test_infra.py

def test_create_model_cifar():
    """Mirrors test_infra.py::test_create_model_cifar: the three ValueErrors."""
    assert create_model("resnet20_cifar", dataset="cifar10", pretrained=False) is not None
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar100'"):
        create_model("resnet20_cifar", dataset="cifar100")
    with pytest.raises(ValueError, match=r"unknown architecture 'no_such_model!'"):
        create_model("no_such_model!", dataset="cifar10")
    with pytest.raises(ValueError, match=r"'resnet20_cifar' has no pretrained weights"):
        create_model("resnet20_cifar", dataset="cifar10", pretrained=True)


def test_create_model_imagenet():
    """Mirrors test_infra.py::test_create_model_imagenet without the pretrained download."""
    x = torch.randn(1, 3, 224, 224)
    for arch in ("alexnet", "resnet50"):
        model = create_model(arch, dataset="imagenet").eval()
        with torch.no_grad():
            assert model(x).shape == (1, 1000), arch
    with pytest.raises(ValueError, match=r"unknown architecture 'no_such_model!'"):
        create_model("no_such_model!", dataset="imagenet")


class _Policy(ScheduledTrainingPolicy):
    pass


def test_policy_scheduling():
    """Mirrors test_infra.py::test_policy_scheduling, including Distiller issue #176.

    Distiller asserted (AssertionError) on a missing or a doubly given schedule; compressor raises
    a ValueError that says which, as the porting doc lists.
    """
    scheduler = CompressionScheduler(create_model("resnet20_cifar", dataset="cifar10"))
    policy = _Policy()
    with pytest.raises(ValueError, match=r"^add_policy needs epochs=\[\.\.\.\] or starting_epoch and "
                                         r"ending_epoch$"):
        scheduler.add_policy(policy)
    with pytest.raises(ValueError, match=r"^add_policy takes epochs=\[\.\.\.\] or a range, not both$"):
        scheduler.add_policy(policy, epochs=[1, 2, 3], starting_epoch=4, ending_epoch=5, frequency=1)

    scheduler.add_policy(policy, epochs=None, starting_epoch=4, ending_epoch=5, frequency=1)
    assert scheduler.sched_metadata[policy] == {"starting_epoch": 4, "ending_epoch": 5, "frequency": 1}
    scheduler.add_policy(policy, epochs=[1, 2, 3])
    sched_metadata = scheduler.sched_metadata[policy]
    assert sched_metadata["starting_epoch"] == 1
    assert sched_metadata["ending_epoch"] == 4
    assert sched_metadata["frequency"] is None

    scheduler.add_policy(policy, epochs=[5])
    sched_metadata = scheduler.sched_metadata[policy]
    assert sched_metadata["starting_epoch"] == 5
    assert sched_metadata["ending_epoch"] == 6
    assert sched_metadata["frequency"] is None
