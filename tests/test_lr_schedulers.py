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


def test_argument_rules_name_real_schedulers_and_parameters():
    import inspect
    from compressor.lr_schedulers import ARG_RULES
    for name, rules in ARG_RULES.items():
        params = inspect.signature(LR_SCHEDULERS.get(name).__init__).parameters
        assert set(rules) <= set(params), (name, set(rules) - set(params))


@pytest.mark.parametrize("cls, args, message", [
    ("StepLR", {"step_size": 0}, r"step_size: must be an integer >= 1; got 0"),
    ("StepLR", {"step_size": True}, r"step_size: must be an integer >= 1; got True"),
    ("ExponentialLR", {"gamma": "1e3"}, r"gamma: '1e3' is text.*write 1\.0e3"),
    ("ExponentialLR", {"gamma": 0}, r"gamma: must be > 0; got 0"),
    ("OneCycleLR", {"max_lr": [0.1, float("nan")]}, r"max_lr\[1\]: must be a finite number; got nan"),
    ("CyclicLR", {"base_lr": 0.1, "max_lr": float("-inf")}, r"max_lr: must be a finite number; got -inf"),
])
def test_check_args_refuses(cls, args, message):
    from compressor.lr_schedulers import check_args
    with pytest.raises(ComponentArgError, match=message):
        check_args(cls, args)


def test_check_args_accepts_ordinary_values():
    from compressor.lr_schedulers import check_args
    check_args("StepLR", {"step_size": 2, "gamma": 0.5})
    check_args("MultiStepMultiGammaLR", {"milestones": [1, 3], "gammas": [0.5, 2]})
    check_args("OneCycleLR", {"max_lr": [0.1, 0.2], "total_steps": 10, "pct_start": 0.25})
    check_args("NotInTheTable", {"anything": float("nan")})   # left to the constructor
