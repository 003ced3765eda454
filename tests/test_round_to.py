"""``round_to``: the structured pruners keep a multiple of N structures (Torch-Pruning's name;
Distiller's ``group_size`` rounds the count pruned instead): the count rule's property, the choice
of the lowest-ranked structures, grouped convolutions (every group loses the same count and the
total kept is a multiple), a YAML schedule whose thinned widths are multiples, and bad values."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import compressor
from compressor.errors import ComponentArgError, ScheduleError
from compressor.pruners import L1RankedStructureParameterPruner, PruneContext, structures_to_prune
from compressor.pruners.structured import round_kept
from compressor.thinning import contract_model
from helpers import assert_same_function


def ctx():
    return PruneContext(epoch=0, event=0, n_events=1, current={}, args={})


def filters(values):
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).repeat(1, 2, 1, 1)


def pruned(mask):
    return [i for i in range(mask.shape[0]) if not mask[i].any()]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 200), cells=st.integers(1, 8), r=st.integers(1, 32),
       f=st.floats(0, 0.99))
def test_round_kept_is_the_largest_count_that_keeps_a_multiple(n, cells, r, f):
    k = structures_to_prune(f, n)
    j = round_kept(k, n, r, cells)
    assert 0 <= j <= k
    if j:
        assert (cells * (n - j)) % r == 0
    assert all((cells * (n - i)) % r for i in range(j + 1, k + 1))   # none larger fits


def test_round_to_keeps_a_multiple_of_the_lowest_ranked():
    w = filters([0.1 * i for i in range(20, 0, -1)])   # filter 19 lowest
    p = L1RankedStructureParameterPruner("p", "Filters", 0.3, ["w"], round_to=8)
    # 30% of 20 is 6, keeping 14; rounded up to 16 kept: the 4 lowest go
    assert pruned(p.masks({"w": w}, ctx())["w"]) == [16, 17, 18, 19]
    p = L1RankedStructureParameterPruner("p", "Filters", 0.3, ["w"], round_to=32)
    assert p.masks({"w": w}, ctx()) == {}          # no multiple of 32 below 20: nothing pruned
    p = L1RankedStructureParameterPruner("p", "Filters", 0.3, ["w"], round_to=1)
    assert len(pruned(p.masks({"w": w}, ctx())["w"])) == 6


class Grouped(nn.Module):
    """conv -> BN -> ReLU -> grouped conv (4 groups of 6) -> BN -> ReLU -> conv (a ResNeXt cell)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 24, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(24)
        self.b = nn.Conv2d(24, 24, 3, padding=1, groups=4, bias=False)
        self.bn_b = nn.BatchNorm2d(24)
        self.c = nn.Conv2d(24, 8, 1)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        return self.c(torch.relu(self.bn_b(self.b(x))))


def schedule(round_to, weights, fraction=0.5):
    return {"version": 1, "input_shape": [3, 8, 8],
            "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": fraction, "round_to": round_to,
                              "weights": weights}},
            "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}


@pytest.mark.usefixtures("one_thread")
def test_grouped_conv_loses_as_many_per_group_and_keeps_a_multiple():
    torch.manual_seed(0)
    model = Grouped().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # 50% of each group of 6 is 3 per group, 12 kept; round_to 8 keeps 16: 2 per group go
    sched = compressor.dict_config(model, None, schedule(8, ["a.weight", "b.weight"]),
                                   example_input=x)
    sched.on_epoch_begin(0)
    zero = (model.b.weight.detach().flatten(1).abs().sum(1) == 0).view(4, 6).sum(1)
    assert zero.tolist() == [2, 2, 2, 2]
    with torch.no_grad():
        masked = model(x)
    contract_model(model, x, store=sched)
    assert model.b.out_channels == 16 and model.b.in_channels == 16 and model.b.groups == 4
    with torch.no_grad():
        assert_same_function(model(x), masked)


@pytest.mark.parametrize("value,match", [
    (0, "round_to: must be a positive integer"),
    (2.5, "must be a positive integer"),
    (True, "must be a positive integer"),
    ("8", "must be a positive integer"),
])
def test_bad_round_to_is_refused(value, match):
    with pytest.raises(ComponentArgError, match=match) as info:
        L1RankedStructureParameterPruner("p", "Filters", 0.3, ["w"], round_to=value)
    assert info.value.key == "round_to"


def test_round_to_and_group_size_together_are_refused():
    with pytest.raises(ComponentArgError, match="round_to.*or group_size.*not both") as info:
        L1RankedStructureParameterPruner("p", "Filters", 0.3, ["w"], round_to=8, group_size=2)
    assert info.value.key == "round_to"


def test_bad_round_to_in_yaml_names_the_key():
    with pytest.raises(ScheduleError, match=r"pruners\.p\.round_to.*positive integer"):
        compressor.dict_config(Grouped(), None, schedule(-8, ["a.weight"]))
