"""compressor.deploy.fold_bn: folding batch norms into the conv / linear before them is exact
(float64, the bound of helpers.exact), also for thinned, bias-free, grouped and depthwise layers;
what cannot be folded is left in place with a reason, or refused with a message."""
import re
import warnings

import pytest
import torch
from torch import nn

from compressor.deploy import FoldError, fold_batch_norms
from compressor.models import create_model
from compressor.thinning import contract_model
from helpers.exact import assert_same_function
from helpers.thinning import randomize_bn, zero_structures


def _same(model, folded, x):
    model.eval(), folded.eval()
    with torch.no_grad():
        assert_same_function(folded(x), model(x))


class Mixed(nn.Module):
    """Bias-free conv, grouped conv, depthwise conv, Conv1d and Linear, each followed by a BN."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.b3 = nn.BatchNorm2d(8, affine=False)
        self.c4 = nn.Conv1d(8, 6, 1)
        self.b4 = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6 * 16, 5)
        self.b5 = nn.BatchNorm1d(5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = self.b3(self.dw(x))
        x = self.b4(self.c4(x.flatten(2)))
        return self.b5(self.fc(x.flatten(1)))


def test_folds_biasfree_grouped_depthwise_conv1d_linear(float64):
    model = Mixed()
    randomize_bn(model, seed=3)
    folded, report = fold_batch_norms(model)
    assert sorted(report.folded) == [("c1", "b1"), ("c2", "b2"), ("c4", "b4"), ("dw", "b3"),
                                     ("fc", "b5")]
    assert not report.skipped
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert folded.c1.bias is not None and folded.dw.bias is not None
    _same(model, folded, torch.randn(4, 3, 4, 4))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original is kept"


@pytest.mark.parametrize("arch", ["resnet20_cifar", "preact_resnet20_cifar"])
def test_thinned_resnet_folds_exactly(float64, arch):
    # preact: each block's pre_bn reads the residual stream, which the shortcut reads too
    shared = "skip" if arch.startswith("preact") else "error"
    model = create_model(arch, "cifar10")
    randomize_bn(model, seed=1)
    zero_structures(model, (3, 32, 32), 0.4, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contract_model(model, (3, 32, 32))
    folded, report = fold_batch_norms(model, shared=shared)
    assert report.folded
    _same(model, folded, torch.randn(2, 3, 32, 32))


def test_a_bn_whose_input_has_another_reader_is_refused_or_skipped(float64):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Shared()
    randomize_bn(model)
    with pytest.raises(FoldError, match=re.escape(
            "cannot fold batch norm 'bn' into 'conv': the output of 'conv' is also read by add")):
        fold_batch_norms(model)
    folded, report = fold_batch_norms(model, shared="skip")
    assert report.folded == [] and "also read by add" in report.skipped["bn"]
    _same(model, folded, torch.randn(2, 3, 6, 6))


def test_unfoldable_batch_norms_are_left_with_a_reason(float64):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(3, 4, 2)
            self.bn_up = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn_in = nn.BatchNorm2d(4)
            self.bn_batch = nn.BatchNorm2d(4)  # replaced below, after randomize_bn

        def forward(self, x):
            x = self.bn_up(self.up(x))
            return self.bn_in(torch.relu(self.bn_batch(self.conv(x))))

    model = Odd()
    randomize_bn(model)
    model.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)
    folded, report = fold_batch_norms(model)
    assert report.folded == []
    assert "ConvTranspose2d" in report.skipped["bn_up"]
    assert "running statistics" in report.skipped["bn_batch"]
    assert "not a convolution or linear" in report.skipped["bn_in"]
    _same(model, folded, torch.randn(2, 3, 5, 5))
    assert "left 3" in str(report)


def test_bad_shared_value_is_refused():
    with pytest.raises(FoldError, match=r"shared='x' is not valid; valid: error, skip"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(1, 1, 1)), shared="x")
