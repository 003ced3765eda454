"""One example input for the whole schedule: the top-level ``input_shape`` key, the builder's
``example_input=`` argument, or the first batch the model sees, used by filter coupling and by
thinning before any guessing of image sizes."""
import copy
import warnings

import pytest
import torch
from torch import nn

from compressor.builder import dict_config
from compressor.config import loads
from compressor.errors import ScheduleError
from compressor.graph import example_input_of
from compressor.thinning import analyze, remove_filters


class Odd(nn.Module):
    """A residual block with a depthwise conv, on 1x13x17 inputs (no usual image size fits fc)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.fc = nn.Linear(6 * 13 * 17, 4)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.fc(torch.flatten(torch.relu(self.dw(s)) + s, 1))


def model():
    torch.manual_seed(0)
    return Odd().double()


def schedule(**top):
    return {**top, "pruners": {"f": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                                     "desired_sparsity": 0.5, "weights": ["stem.weight"]}},
            "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}]}


def check_exact_thinning(m, scheduler, x):
    m.eval()
    with torch.no_grad():
        masked = m(x)
    assert remove_filters(m, store=scheduler).changed   # the recorded example input, no guess
    assert m.stem.out_channels == 3 and m.dw.out_channels == 3
    with torch.no_grad():   # float64; removed channels were exactly 0: equal up to re-ordered sums
        assert torch.allclose(m(x), masked, rtol=0, atol=1e-12)


def test_top_level_input_shape_finds_the_coupling_without_warning():
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = dict_config(m, None, schedule(input_shape=[1, 13, 17]))
    assert example_input_of(m) == (1, 13, 17)
    assert scheduler.ordered[0].pruner.units[0].members == ["stem.weight", "dw.weight"]
    scheduler.on_epoch_begin(0)
    check_exact_thinning(m, scheduler, torch.randn(2, 1, 13, 17, dtype=torch.float64))


def test_example_input_argument_is_the_same_as_the_key():
    m = model()
    scheduler = dict_config(m, None, schedule(), example_input=torch.zeros(5, 1, 13, 17))
    assert example_input_of(m) == (1, 13, 17)
    assert scheduler.ordered[0].pruner.units[0].members == ["stem.weight", "dw.weight"]


def test_without_a_shape_the_first_batch_supplies_it_and_the_owed_step_runs():
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = dict_config(m, None, schedule())
        pruner = scheduler.ordered[0].pruner
        scheduler.on_epoch_begin(0)            # before any batch: the step is owed, nothing pruned
        assert pruner.owed_epoch == 0 and scheduler.masks == {}
        x = torch.randn(2, 1, 13, 17, dtype=torch.float64)
        m(x)                                   # the first forward records the shape and prunes
    assert example_input_of(m) == (1, 13, 17) and pruner.owed_epoch is None
    assert pruner.units[0].members == ["stem.weight", "dw.weight"]
    zero = scheduler.masks["stem.weight"].flatten(1).sum(1) == 0
    assert zero.sum() == 3 and torch.equal(zero, scheduler.masks["dw.weight"].flatten(1).sum(1) == 0)
    check_exact_thinning(m, scheduler, x)


def test_bad_input_shape_is_a_schedule_error_with_its_line():
    text = "input_shape: [1, -13]\npolicies: []\n"
    with pytest.raises(ScheduleError, match=r"<string>:1 input_shape: must be the shape of one input "
                                            r"sample .* got \[1, -13\]"):
        loads(text)


def test_input_shape_that_does_not_fit_the_model_is_a_schedule_error():
    with pytest.raises(ScheduleError, match=r"input_shape: input_shape \[1, 28, 28\] does not fit the "
                                            r"model: a forward pass on one sample of that shape failed"):
        dict_config(model(), None, schedule(input_shape=[1, 28, 28]))


def test_input_shape_inconsistent_with_the_extension_or_argument():
    sched = schedule(input_shape=[1, 13, 17])
    sched["extensions"] = {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                 "input_shape": [1, 13, 18]}}
    with pytest.raises(ScheduleError, match=r"extensions\.t\.input_shape: \[1, 13, 18\] disagrees with "
                                            r"the top-level input_shape \[1, 13, 17\]"):
        dict_config(model(), None, sched)
    with pytest.raises(ScheduleError, match=r"input_shape: input_shape \[1, 13, 17\] disagrees with the "
                                            r"example input passed to the builder"):
        dict_config(model(), None, schedule(input_shape=[1, 13, 17]), example_input=(1, 12, 17))


class CatDepthwise(nn.Module):
    """Two convolutions concatenated, then a depthwise conv (with its batch norm) over the
    concatenation; fc fixes the input at 1x13x17, which no usual image size matches."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 13 * 17, 5)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = torch.relu(self.pw(torch.relu(self.bn(self.dw(x)))))
        return self.fc(torch.flatten(x, 1))


CAT_SCHEDULE = {
    "pruners": {"f": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                      "desired_sparsity": 0.5, "weights": ["a.weight", "b.weight"]}},
    "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}],
}


@pytest.mark.parametrize("top_level_key", [True, False])
def test_depthwise_after_concatenation_is_coupled_and_thinned_exactly(top_level_key):
    torch.manual_seed(0)
    m = CatDepthwise().double()
    x = torch.randn(3, 1, 13, 17, dtype=torch.float64)
    sched = dict(CAT_SCHEDULE, input_shape=[1, 13, 17]) if top_level_key else CAT_SCHEDULE
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "filter coupling not found"
        scheduler = dict_config(m, None, sched)
        scheduler.on_epoch_begin(0)
        m(x)                             # without the key, the first batch brings the shape
    unit = scheduler.ordered[0].pruner.units[0]
    assert unit.members == ["a.weight", "b.weight", "dw.weight"]
    assert unit.index == {"a.weight": [0, 1, 2, 3], "b.weight": [4, 5, 6, 7], "dw.weight": list(range(8))}
    dead = {n: scheduler.masks[n].flatten(1).sum(1) == 0 for n in unit.members}
    assert int(dead["dw.weight"].sum()) == 4   # half of the 8 concatenated channels
    assert torch.equal(dead["dw.weight"], torch.cat([dead["a.weight"], dead["b.weight"]]))
    assert torch.equal(scheduler.masks["bn.weight"] == 0, dead["dw.weight"])
    m.eval()
    with torch.no_grad():
        masked = m(x)
    assert remove_filters(m, store=scheduler).changed
    assert m.dw.out_channels == 4 and m.bn.num_features == 4 and m.pw.in_channels == 4
    assert m.a.out_channels + m.b.out_channels == 4
    with torch.no_grad():   # float64, removed channels exactly 0: equal up to re-ordered sums
        assert torch.allclose(m(x), masked, rtol=0, atol=1e-12)


def test_dry_run_lists_layers_coupled_in_part():
    report = analyze(CatDepthwise(), (1, 13, 17), "remove_filters")
    assert report.partly == [{"a.weight": [0, 1, 2, 3], "b.weight": [4, 5, 6, 7],
                              "dw.weight": list(range(8))}]
    assert "a.weight (4), b.weight (4), dw.weight (8)" in report.text()


def test_example_input_argument_must_be_a_batch_or_a_sample_shape():
    with pytest.raises(ValueError, match=r"example_input must be a tensor \(a batch\) or the shape of "
                                         r"one sample as positive integers, e\.g\. \(3, 32, 32\); got \[1, 0\]"):
        dict_config(model(), None, schedule(), example_input=[1, 0])
