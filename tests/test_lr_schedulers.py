"""Learning-rate schedulers available by name, including Distiller's two."""
import pytest
import torch

from compressor.errors import ComponentArgError
from compressor.lr_schedulers import MultiStepMultiGammaLR, PolynomialLR
from compressor.registry import LR_SCHEDULERS


def opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(sched, steps):
    out = []
    for _ in range(steps):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_every_torch_scheduler_is_registered():
    assert "LambdaLR" not in LR_SCHEDULERS and "MultiplicativeLR" not in LR_SCHEDULERS  # need callables
    for name in ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
                 "OneCycleLR", "CyclicLR", "ReduceLROnPlateau", "CosineAnnealingWarmRestarts",
                 "PolynomialLR", "MultiStepMultiGammaLR", "LinearLR", "ConstantLR"):
        assert name in LR_SCHEDULERS


def test_polynomial_lr_distiller_and_torch_forms():
    assert lrs(PolynomialLR(opt(), T_max=4, power=2), 6) == pytest.approx([1, 0.5625, 0.25, 0.0625, 0, 0])
    assert lrs(PolynomialLR(opt(), total_iters=4, power=1), 5) == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(ComponentArgError, match="give exactly one of T_max"):
        PolynomialLR(opt(), T_max=3, total_iters=3)


def test_multistep_multigamma():
    s = MultiStepMultiGammaLR(opt(), milestones=[2, 4], gammas=[0.5, 0.1])
    assert lrs(s, 6) == pytest.approx([1, 1, 0.5, 0.5, 0.05, 0.05])
    with pytest.raises(ComponentArgError, match="one gamma per milestone"):
        MultiStepMultiGammaLR(opt(), milestones=[2, 4], gammas=[0.5])
    with pytest.raises(ComponentArgError, match="strictly increasing"):
        MultiStepMultiGammaLR(opt(), milestones=[4, 2], gammas=[0.5, 0.5])


def test_multi_step_multi_gamma_keeps_distillers_attribute_and_reads_old_states():
    s = MultiStepMultiGammaLR(opt(), milestones=[2, 4], gammas=[0.5, 0.1])
    assert s.multiplicative_gammas == [1.0, 0.5, 0.05] and s.multipliers is s.multiplicative_gammas
    state = s.state_dict()
    old = {("multipliers" if k == "multiplicative_gammas" else k): v for k, v in state.items()}
    t = MultiStepMultiGammaLR(opt(), milestones=[2, 4], gammas=[0.9, 0.9])
    t.load_state_dict(old)                        # a state saved under the former attribute name
    assert t.multiplicative_gammas == [1.0, 0.5, 0.05]
