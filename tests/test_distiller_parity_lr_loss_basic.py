"""Distiller's tests/test_learning_rate.py, test_loss.py and test_basic.py, ported.

Each test names the Distiller test it mirrors; calls are mapped as docs/porting-from-distiller.md
says (``distiller.learning_rate`` -> ``compressor.lr_schedulers``; ``distiller.utils`` sparsity
functions -> ``compressor.metrics``; ``activation_channels_*`` -> ``compressor.activation_channels``;
``model_find_param`` / ``model_find_module_name`` -> plain ``named_parameters`` / ``named_modules``
look-ups). Policies implement ``before_backward_pass`` with compressor's argument order.
"""
from __future__ import annotations

from copy import deepcopy
from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.optim import Optimizer

from compressor import CompressionScheduler, LossComponent, PolicyLoss, ScheduledTrainingPolicy
from compressor.activation_channels import (activation_channels_apoz, activation_channels_l1,
                                            activation_channels_means)
from compressor.lr_schedulers import MultiStepMultiGammaLR
from compressor.metrics import (density, density_3D, density_cols, sparsity, sparsity_3D,
                                sparsity_cols, sparsity_rows)
from compressor.models import create_model


# ---------------------------------------------------------------- test_learning_rate.py

@pytest.mark.filterwarnings("ignore:The epoch parameter")
@pytest.mark.filterwarnings("ignore:Detected call of")
def test_multi_step_multi_gamma_lr():
    """Mirrors test_learning_rate.py::test_multi_step_multi_gamma_lr (same checks, same floats)."""
    dummy_optimizer = Optimizer([torch.zeros(3, 3, 3, requires_grad=True)], {"lr": 0.1})
    with pytest.raises(ValueError):
        MultiStepMultiGammaLR(dummy_optimizer, milestones=[60, 30, 80], gammas=[0.1, 0.1, 0.2])
    with pytest.raises(ValueError):
        MultiStepMultiGammaLR(dummy_optimizer, milestones=[30, 60], gammas=[0.1, 0.1, 0.2])
    with pytest.raises(ValueError):
        MultiStepMultiGammaLR(dummy_optimizer, milestones=[30, 60, 80], gammas=[0.1, 0.1])

    lr_sched = MultiStepMultiGammaLR(dummy_optimizer, milestones=[30, 60, 80], gammas=[0.1, 0.1, 0.2])
    expected_gammas = [1, 1 * 0.1, 1 * 0.1 * 0.1, 1 * 0.1 * 0.1 * 0.2]
    expected_lrs = [0.1 * gamma for gamma in expected_gammas]
    # Exact float equality, as in Distiller: the products are formed in the same order.
    assert lr_sched.multiplicative_gammas == expected_gammas
    for epoch, idx in ((0, 0), (15, 0), (30, 1), (33, 1), (60, 2), (79, 2), (80, 3), (100, 3)):
        lr_sched.step(epoch)
        assert dummy_optimizer.param_groups[0]["lr"] == expected_lrs[idx], epoch


# ---------------------------------------------------------------- test_loss.py

class DummyPolicy(ScheduledTrainingPolicy):
    def __init__(self, idx):
        super().__init__()
        self.loss_val = torch.randint(0, 10000, (1,))
        self.idx = idx

    def before_backward_pass(self, ctx):
        return PolicyLoss(ctx.loss + self.loss_val,
                          [LossComponent("Dummy Loss " + str(self.idx), self.loss_val)])


@pytest.mark.parametrize("check_loss_components", [False, True])
def test_multiple_policies_loss(check_loss_components):
    """Mirrors test_loss.py::test_multiple_policies_loss (integer losses: sums are exact)."""
    scheduler = CompressionScheduler(nn.Module(), device=torch.device("cpu"))
    expected_overall_loss, expected_policy_losses = 0, []
    for i in range(3):
        policy = DummyPolicy(i)
        expected_overall_loss += policy.loss_val
        expected_policy_losses.append(policy.loss_val)
        scheduler.add_policy(policy, epochs=[0])
    main_loss = torch.randint(0, 10000, (1,))
    expected_overall_loss += main_loss
    main_loss_before = deepcopy(main_loss)
    policies_loss = scheduler.before_backward_pass(0, 0, 1, main_loss,
                                                   return_loss_components=check_loss_components)
    assert main_loss_before == main_loss
    if check_loss_components:
        assert expected_overall_loss == policies_loss.overall_loss
        for idx, lc in enumerate(policies_loss.loss_components):
            assert lc.name == "Dummy Loss " + str(idx)
            assert expected_policy_losses[idx] == lc.value.item()
    else:
        assert expected_overall_loss == policies_loss


# ---------------------------------------------------------------- test_basic.py

def test_sparsity():
    """Mirrors test_basic.py::test_sparsity (the fractions are compared exactly, as in Distiller,
    except where Distiller used almost_equal for thirds)."""
    zeros = torch.zeros(2, 3, 5, 6)
    assert sparsity(zeros) == 1.0
    assert sparsity_3D(zeros) == 1.0
    assert density_3D(zeros) == 0.0
    assert sparsity(torch.ones(12, 43, 4, 6)) == 0.0
    x = torch.tensor([[1., 2., 0, 4., 0],
                      [1., 2., 0, 4., 0]])
    assert density(x) == 0.6
    assert density_cols(x, transposed=False) == 0.6
    assert sparsity_rows(x, transposed=False) == 0
    x = torch.tensor([[0., 0., 0],
                      [1., 4., 0],
                      [1., 2., 0],
                      [0., 0., 0]])
    assert density(x) == 4 / 12
    assert sparsity_rows(x, transposed=False) == 0.5
    assert sparsity_cols(x, transposed=False) == pytest.approx(1 / 3, abs=1e-6)
    assert sparsity_rows(x) == pytest.approx(1 / 3, abs=1e-6)


ACTIVATION = [[[[1., 0., 0.], [0., 2., 0.], [0., 0., 3.]],
               [[1., 0., 2.], [0., 3., 0.], [4., 0., 5.]]],
              [[[4., 0., 0.], [0., 5., 0.], [0., 0., 6.]],
               [[0., 6., 0.], [7., 0., 8.], [0., 9., 0.]]]]


def test_activations():
    """Mirrors test_basic.py::test_activations, with Distiller's exact float32 comparisons.

    The sums are small integers (exact in any float type) and each result is one correctly rounded
    division, so it equals the float32 literal of the same quotient bit for bit.
    """
    x = torch.tensor(ACTIVATION)
    assert all(activation_channels_l1(x) == torch.tensor([21 / 2, 45 / 2]))
    assert all(activation_channels_apoz(x) == torch.tensor([100 * (6 + 6) / (9 + 9), 100 * (4 + 5) / (9 + 9)]))
    assert all(activation_channels_means(x) == torch.tensor([21 / 18, 45 / 18]))


def test_activations_float64_and_2d():
    """The same facts in float64, and a (batch, features) activation gets one value per feature
    (Distiller returned a single number there; see the porting doc)."""
    x = torch.tensor(ACTIVATION, dtype=torch.float64)
    assert activation_channels_l1(x).tolist() == [float(Fraction(21, 2)), float(Fraction(45, 2))]
    assert activation_channels_means(x).tolist() == [float(Fraction(21, 18)), float(Fraction(45, 18))]
    assert activation_channels_apoz(x).tolist() == [float(Fraction(1200, 18)), float(Fraction(900, 18))]
    fc = torch.tensor([[1., 0., -3.], [0., 0., 5.]], dtype=torch.float64)
    assert activation_channels_l1(fc).tolist() == [0.5, 0.0, 4.0]
    assert activation_channels_means(fc).tolist() == [0.5, 0.0, 1.0]
    assert activation_channels_apoz(fc).tolist() == [50.0, 100.0, 0.0]
    with pytest.raises(ValueError, match=r"^activation_channels_l1: activation must have shape "
                                         r"\(batch, channels, h, w\) or \(batch, features\); "
                                         r"got shape \(2, 3, 4\)$"):
        activation_channels_l1(torch.zeros(2, 3, 4))


def test_utils():
    """Mirrors test_basic.py::test_utils with the porting doc's plain-PyTorch look-ups."""
    model = create_model("resnet20_cifar", dataset="cifar10")
    assert model is not None
    params = dict(model.named_parameters())
    assert params.get("") is None                        # distiller.model_find_param(model, "")
    assert params.get("layer1.0.conv1.weight") is not None
    module_to_find = dict(model.named_modules())["layer1.0.conv1"]
    module_name = next(n for n, m in model.named_modules() if m is module_to_find)
    assert module_name == "layer1.0.conv1"               # distiller.model_find_module_name
