"""Structured pruners: exact counts, the structures each criterion picks, coupling, dependents,
activation hooks, N:M patterns, every argument error, and Distiller schedules end to end."""
import gc
import math

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st
from torch import nn

import compressor
from compressor.errors import ComponentArgError, ScheduleError
from compressor.graph import following_activations
from compressor.models import create_model
from compressor.pruners import (ActivationAPoZRankedFilterPruner, ActivationMeanRankedFilterPruner_AGP,
                                BernoulliFilterPruner, BNGammaRankedFilterPruner,
                                GradientRankedFilterPruner, L1RankedStructureParameterPruner,
                                L1RankedStructureParameterPruner_AGP, L2RankedStructureParameterPruner,
                                NMSparsityPruner, PruneContext, RandomLevelStructureParameterPruner,
                                RandomRankedFilterPruner, RandomRankedFilterPruner_AGP,
                                RankedStructureParameterPruner, StructuredAutomatedGradualPruner,
                                nm_mask, structures_to_prune)
from compressor.pruners import coupling
from compressor.registry import PRUNERS
from compressor.schedules import agp_sparsity

from helpers import TinyNet, assert_same_function, make_batches, train


def ctx(event=0, n_events=1, current=None, **args):
    return PruneContext(epoch=event, event=event, n_events=n_events, current=current or {}, args=args)


def filters(values):
    """A (len(values), 2, 1, 1) conv weight whose filter f has mean |w| = values[f]."""
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).repeat(1, 2, 1, 1)


def pruned_filters(mask):
    return [i for i in range(mask.shape[0]) if not mask[i].any()]


def params_of(model, pruner=None):
    return dict(compressor.unwrap(model).named_parameters()) if model is not None else None


# -- count rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction,n,group_size,rounding,expected", [
    (0.5, 10, 1, math.floor, 5),
    (0.3, 10, 1, math.floor, 3),          # not 2: float noise is rounded away
    (0.55, 10, 1, math.floor, 5),
    (0.55, 10, 1, math.ceil, 6),
    (0.05, 10, 1, math.floor, 0),         # too few structures: nothing pruned
    (0.7, 10, 4, math.floor, 4),          # floor(7 / 4) * 4
    (0.99, 10, 1, math.floor, 9),
    (0.99, 4, 1, math.ceil, 3),           # all 4 but fraction != 1 -> n - group_size
    (0.9, 8, 4, math.ceil, 4),            # ceil(7.2)=8 -> all -> 8 - 4
    (1.0, 8, 1, math.floor, 8),           # only an explicit 1.0 empties a layer
])
def test_count_rule(fraction, n, group_size, rounding, expected):
    assert structures_to_prune(fraction, n, group_size, rounding) == expected


@settings(max_examples=200, deadline=None)
@given(fraction=st.floats(0, 0.999), n=st.integers(1, 300), gs=st.integers(1, 8))
def test_count_rule_properties(fraction, n, gs):
    k = structures_to_prune(fraction, n, gs)
    assert 0 <= k < n or (k == 0 and n <= gs)
    assert k % gs == 0 or k == n - gs
    assert k <= math.floor(fraction * n + 1e-6)


# -- criteria on hand-made tensors --------------------------------------------------------------
def test_l1_prunes_the_lowest_mean_abs_filters_exactly():
    w = filters([0.5, -0.1, 0.3, 0.05, 0.9, 0.2])
    p = L1RankedStructureParameterPruner("p", "Filters", 0.5, ["w"])
    mask = p.masks({"w": w}, ctx())["w"]
    assert pruned_filters(mask) == [1, 3, 5]
    assert mask.dtype == torch.bool and mask.shape == w.shape


def test_l1_and_l2_rank_differently():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]]).view(2, 4, 1, 1)
    # mean |w|: 1.0 vs 0.75;  ||w||_2 / 4: 0.5 vs 0.75
    l1 = L1RankedStructureParameterPruner("a", "Filters", 0.5, ["w"]).masks({"w": w}, ctx())["w"]
    l2 = L2RankedStructureParameterPruner("b", "Filters", 0.5, ["w"]).masks({"w": w}, ctx())["w"]
    assert pruned_filters(l1) == [1] and pruned_filters(l2) == [0]


def test_ties_prune_exactly_k_earliest_first():
    w = filters([1.0, 1.0, 1.0, 1.0])
    mask = L1RankedStructureParameterPruner("p", "3D", 0.5, ["w"]).masks({"w": w}, ctx())["w"]
    assert pruned_filters(mask) == [0, 1]


@pytest.mark.parametrize("group_type,kwargs,shape,scale_dim,expected_zero", [
    ("Channels", None, (3, 4, 1, 1), 1, lambda m: [c for c in range(4) if not m[:, c].any()]),
    ("Rows", None, (3, 4), 1, lambda m: [j for j in range(4) if not m[:, j].any()]),
    ("Cols", None, (4, 3), 0, lambda m: [i for i in range(4) if not m[i].any()]),
    ("Channels", None, (3, 4), 1, lambda m: [j for j in range(4) if not m[:, j].any()]),
])
def test_channels_rows_cols(group_type, kwargs, shape, scale_dim, expected_zero):
    scale = torch.tensor([0.4, 0.1, 0.3, 0.2])
    view = [1] * len(shape)
    view[scale_dim] = 4
    w = torch.ones(shape) * scale.view(view)
    mask = L1RankedStructureParameterPruner("p", group_type, 0.5, ["w"], kwargs=kwargs).masks(
        {"w": w}, ctx())["w"]
    assert expected_zero(mask) == [1, 3]


def test_2d_kernels_and_blocks():
    w = torch.ones(2, 2, 2, 2)
    w[0, 1] *= 0.1
    w[1, 0] *= 0.2
    mask = L1RankedStructureParameterPruner("p", "2D", 0.5, ["w"]).masks({"w": w}, ctx())["w"]
    zero_kernels = [(f, c) for f in range(2) for c in range(2) if not mask[f, c].any()]
    assert zero_kernels == [(0, 1), (1, 0)]

    w = torch.ones(2, 8, 1, 2)                 # 1x4x1x1 blocks: 2 per filter-column, 8 in all
    w[0, 4:8, 0, 1] = 0.01
    w[1, 0:4, 0, 0] = 0.02
    p = L1RankedStructureParameterPruner("p", "Blocks", 0.25, ["w"], kwargs={"block_shape": [1, 4, 1, 1]})
    mask = p.masks({"w": w}, ctx())["w"]
    assert int((~mask).sum()) == 8
    assert not mask[0, 4:8, 0, 1].any() and not mask[1, 0:4, 0, 0].any()


def test_group_size_rounds_the_count():
    w = filters([0.1 * i for i in range(1, 9)])
    p = L1RankedStructureParameterPruner("p", "Filters", 0.7, ["w"], group_size=4)
    assert pruned_filters(p.masks({"w": w}, ctx())["w"]) == [0, 1, 2, 3]
    p = L1RankedStructureParameterPruner("p", "Filters", 0.55, ["w"], rounding_fn="ceil")
    assert len(pruned_filters(p.masks({"w": w}, ctx())["w"])) == 5


def test_fraction_to_prune_is_desired_sparsity():
    w = filters([0.3, 0.1, 0.2, 0.4])
    p = L1RankedStructureParameterPruner("p", "Filters", fraction_to_prune=0.5, weights=["w"])
    assert pruned_filters(p.masks({"w": w}, ctx())["w"]) == [1, 2]


def test_zero_fraction_returns_no_mask():
    p = L1RankedStructureParameterPruner("p", "Filters", 0.0, ["w"])
    assert p.masks({"w": filters([1.0, 2.0])}, ctx()) == {}


def test_masked_structures_count_first_so_targets_are_exact():
    # random scores would pick other filters each step; already-masked ones are counted first
    w = filters([1.0] * 10)
    p = RandomRankedFilterPruner_AGP("r", 0.2, 0.6, "Filters", ["w"])
    current = None
    for event in range(3):
        c = ctx(event, 3, current={"w": current} if current is not None else None)
        mask = p.masks({"w": w}, c)["w"]
        current = mask if current is None else mask & current
        k = structures_to_prune(agp_sparsity(0.2, 0.6, event, 3), 10)
        assert len(pruned_filters(current)) == k


def test_random_is_seeded_and_exact():
    w = filters([1.0] * 20)
    a = RandomRankedFilterPruner("r", "Filters", 0.3, ["w"]).masks({"w": w}, ctx(2, 5))["w"]
    b = RandomRankedFilterPruner("r", "Filters", 0.3, ["w"]).masks({"w": w}, ctx(2, 5))["w"]
    c = RandomRankedFilterPruner("r", "Filters", 0.3, ["w"], seed=7).masks({"w": w}, ctx(2, 5))["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(pruned_filters(a)) == 6


def test_bernoulli_drops_with_probability_and_scales_only_with_double_copies():
    w = filters([1.0] * 400)
    p = BernoulliFilterPruner("b", "Filters", 0.25, ["w"])
    mask = p.masks({"w": w}, ctx())["w"]
    assert mask.dtype == torch.bool
    dropped = len(pruned_filters(mask))
    assert 60 < dropped < 140
    assert torch.equal(mask, BernoulliFilterPruner("b", "Filters", 0.25, ["w"]).masks({"w": w}, ctx())["w"])
    scaled = p.masks({"w": w}, ctx(use_double_copies=True))["w"]
    kept = 400 - len(pruned_filters(scaled))
    assert scaled.max().item() == pytest.approx(400 / kept)


def test_random_level_draws_in_range_and_is_repeatable():
    w = filters([0.01 * i for i in range(1, 101)])
    p = RandomLevelStructureParameterPruner("r", "Filters", [0.2, 0.4], ["w"])
    counts = [len(pruned_filters(p.masks({"w": w}, ctx(e, 10))["w"])) for e in range(10)]
    assert all(20 <= k <= 40 for k in counts) and len(set(counts)) > 1
    again = [len(pruned_filters(p.masks({"w": w}, ctx(e, 10))["w"])) for e in range(10)]
    assert counts == again
    assert pruned_filters(p.masks({"w": w}, ctx(0, 10))["w"]) == list(range(counts[0]))


def test_noise_makes_some_rankings_random():
    w = filters([0.01 * i for i in range(1, 41)])
    p = L1RankedStructureParameterPruner("p", "Filters", 0.25, ["w"], noise=1.0)
    masks = [p.masks({"w": w}, ctx(e, 5))["w"] for e in range(5)]
    assert all(len(pruned_filters(m)) == 10 for m in masks)
    assert any(pruned_filters(m) != list(range(10)) for m in masks)


def test_generic_classes_take_a_criterion_by_name():
    w = filters([0.5, 0.1, 0.3, 0.2])
    p = RankedStructureParameterPruner("p", "Filters", 0.5, ["w"], criterion="l2")
    assert pruned_filters(p.masks({"w": w}, ctx())["w"]) == [1, 3]
    q = StructuredAutomatedGradualPruner("q", 0.0, 0.5, "Filters", ["w"], criterion="Random")
    assert len(pruned_filters(q.masks({"w": w}, ctx(1, 2))["w"])) == 2


# -- AGP forms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,group_type", [
    (L1RankedStructureParameterPruner_AGP, "Filters"),
    (PRUNERS.get("L2RankedStructureParameterPruner_AGP"), "Channels"),
    (RandomRankedFilterPruner_AGP, "3D"),
])
def test_agp_forms_follow_the_schedule_and_reach_the_target_on_the_last_event(cls, group_type):
    w = torch.rand(20, 20, 1, 1) + 0.01
    p = cls("a", 0.1, 0.6, group_type, ["w"])
    for event in range(6):
        mask = p.masks({"w": w}, ctx(event, 6))["w"]
        dim = 0 if group_type != "Channels" else 1
        zero = int((mask.sum(dim=tuple(d for d in range(4) if d != dim)) == 0).sum())
        assert zero == structures_to_prune(agp_sparsity(0.1, 0.6, event, 6), 20)
    assert zero == 12


# -- BN gamma, Taylor ----------------------------------------------------------------------------
def test_bn_gamma_ranks_by_the_following_batch_norm(tiny):
    with torch.no_grad():
        tiny.bn1.weight.copy_(torch.tensor([0.5, -0.01, 0.3, 0.02, -0.9, 0.4, 0.05, 0.6]))
    p = BNGammaRankedFilterPruner("s", "Filters", 0.5, ["conv1.weight"], model=tiny)
    masks = p.masks(params_of(tiny, p), ctx())
    assert pruned_filters(masks["conv1.weight"]) == [1, 2, 3, 6]   # |gamma| .01 .3 .02 .05
    with pytest.raises(ComponentArgError, match="no BatchNorm directly consumes") as info:
        BNGammaRankedFilterPruner("s", "Filters", 0.5, ["conv2.weight"], model=tiny)
    assert info.value.key == "weights"


def test_taylor_uses_abs_sum_of_weight_times_grad():
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU())
    w = model[0].weight
    with torch.no_grad():
        w.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]).view(4, 1, 1, 1))
    w.grad = torch.tensor([0.5, -0.01, 3.0, -0.4]).view(4, 1, 1, 1)   # w*g: .5, -.02, -3, -.2
    p = GradientRankedFilterPruner("g", "Filters", 0.5, ["0.weight"], model=model)
    mask = p.masks({"0.weight": w}, ctx())["0.weight"]
    assert pruned_filters(mask) == [1, 3]     # Distiller's signed rule would prune 2 and 3


def test_taylor_accumulates_over_the_minibatches_since_the_last_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4, 2))
    p = GradientRankedFilterPruner("g", "Filters", 0.5, ["0.weight"], model=model,
                                   group_dependency="Independent")
    expected = torch.zeros(6)
    for i in range(3):
        model.zero_grad()
        model(torch.randn(5, 1, 2, 2)).pow(2).sum().backward()
        w = model[0].weight
        expected += (w.detach() * w.grad).sum(dim=(1, 2, 3)).abs()
    scores = p.criterion.scores("0.weight", model[0].weight, p.granularity, ctx())
    assert torch.allclose(scores, expected / 3)
    p.masks(params_of(model, p), ctx(0, 2))
    assert p.criterion.count == {}                    # forgotten after the step
    p.masks(params_of(model, p), ctx(1, 2))
    assert not p.criterion._hooked                    # last event: hooks removed
    assert not model[0].weight._post_accumulate_grad_hooks


def test_taylor_without_any_gradient_skips_the_step():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU())
    p = GradientRankedFilterPruner("g", "Filters", 0.5, ["0.weight"], model=model)
    assert p.masks(params_of(model, p), ctx()) == {}


# -- activation criteria -------------------------------------------------------------------------
class ActNet(nn.Module):
    """conv (4 filters, biases set so channels differ) -> relu, then a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            # channel means after relu of (x + b), x ~ N(0, 1): increasing with b
            self.conv.bias.copy_(torch.tensor([0.5, -2.0, 2.0, -0.5]))

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def _forward(model, n, train=True):
    model.train(train)
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        model(torch.randn(3, 1, 4, 4, generator=g))


def test_activation_module_is_found_in_the_graph_not_by_name():
    assert following_activations(ActNet()) == {"conv.weight": "act"}
    model = create_model("resnet20_cifar")
    found = following_activations(model)
    assert found["layer1.0.conv1.weight"] == "layer1.0.relu1"
    assert found["layer1.0.conv2.weight"] == "layer1.0.relu2"        # through bn2 and the sum
    assert found["layer2.0.downsample.0.weight"] == "layer2.0.relu2"


def test_apoz_hooks_collect_training_batches_and_prune_the_most_often_zero():
    model = ActNet()
    p = ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"], model=model)
    assert len(model.act._forward_hooks) == 1
    _forward(model, 3)
    _forward(model, 2, train=False)                 # validation passes are not counted
    stats = p.criterion.collector.stats["act"]
    assert stats["count"] == 3 * 3 * 4 * 4
    mask = p.masks(params_of(model, p), ctx(0, 2))["conv.weight"]
    assert pruned_filters(mask) == [1, 3]            # the most negative biases: most zeros
    assert p.criterion.collector.stats == {}         # reset after the step
    assert len(model.act._forward_hooks) == 1
    _forward(model, 1)
    p.masks(params_of(model, p), ctx(1, 2))
    assert len(model.act._forward_hooks) == 0        # removed after the last event


def test_mean_activation_prunes_the_lowest_means_and_skips_without_data():
    model = ActNet()
    p = ActivationMeanRankedFilterPruner_AGP("m", 0.5, 0.5, "Filters", ["conv.weight"], model=model)
    assert p.masks(params_of(model, p), ctx(0, 3)) == {}     # no batches yet: nothing to rank
    _forward(model, 4)
    mask = p.masks(params_of(model, p), ctx(1, 3))["conv.weight"]
    assert pruned_filters(mask) == [1, 3]


def test_activation_stats_survive_state_dict_and_hooks_die_with_the_pruner():
    model = ActNet()
    p = ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"], model=model)
    _forward(model, 2)
    state = p.state_dict()
    q = ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"], model=model)
    q.load_state_dict(state)
    assert q.criterion.collector.stats["act"]["count"] == p.criterion.collector.stats["act"]["count"]
    del p, q
    gc.collect()
    assert len(model.act._forward_hooks) == 0


def test_activation_pruner_needs_a_hookable_activation():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    with pytest.raises(ComponentArgError, match="no activation module .* follows this convolution"):
        ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"], model=Functional())
    with pytest.raises(ComponentArgError, match="needs the model") as info:
        ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"])
    assert info.value.key == "model"


# -- coupling -------------------------------------------------------------------------------------
def test_leader_gives_every_listed_weight_the_leaders_mask():
    a = filters([0.1, 0.9, 0.2, 0.8])
    b = filters([0.9, 0.1, 0.8, 0.2]).repeat(1, 3, 2, 2)    # other shape, same number of filters
    p = L1RankedStructureParameterPruner("p", "Filters", 0.5, ["a", "b"], group_dependency="Leader")
    masks = p.masks({"a": a, "b": b}, ctx())
    assert pruned_filters(masks["a"]) == pruned_filters(masks["b"]) == [0, 2]
    with pytest.raises(ComponentArgError, match="has 4 Filters groups but 'c'") as info:
        p = L1RankedStructureParameterPruner("p", "Filters", 0.5, ["a", "c"], group_dependency="Leader")
        p.check({"a": a, "c": torch.ones(6, 2, 1, 1)})
    assert info.value.key == "group_dependency"


class Residual(nn.Module):
    """Two convs feeding one sum (each with a BN), then a conv that is not coupled."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(2, 4, 1, bias=True)
        self.bn_b = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv_c = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.conv_c(self.relu(self.bn_a(self.conv_a(x)) + self.bn_b(self.conv_b(x))))


def test_automatic_coupling_prunes_coupled_filters_together(monkeypatch):
    monkeypatch.setattr(coupling, "coupled_filter_groups", lambda model: [["conv_a.weight", "conv_b.weight"]])
    model = Residual()
    with torch.no_grad():
        model.conv_a.weight.copy_(filters([0.1, 0.5, 0.2, 0.1]).view(4, 2, 1, 1))
        model.conv_b.weight.copy_(filters([0.3, 0.0, 0.5, 0.05]).view(4, 2, 1, 1))   # sums .4 .5 .7 .15
    p = L1RankedStructureParameterPruner("p", "Filters", 0.5, ["conv_a.weight"], model=model)
    assert p.param_names == ["conv_a.weight", "conv_b.weight", "bn_a.weight", "bn_a.bias",
                             "conv_b.bias", "bn_b.weight", "bn_b.bias"]
    masks = p.masks(params_of(model, p), ctx())
    assert pruned_filters(masks["conv_a.weight"]) == pruned_filters(masks["conv_b.weight"]) == [0, 3]
    for dep in ("bn_a.weight", "bn_a.bias", "conv_b.bias", "bn_b.weight", "bn_b.bias"):
        assert masks[dep].tolist() == [False, True, True, False]
    # an explicit Independent dependency keeps Distiller's per-weight behaviour
    q = L1RankedStructureParameterPruner("q", "Filters", 0.5, ["conv_a.weight"], model=model,
                                         group_dependency="Independent")
    assert pruned_filters(q.masks(params_of(model, q), ctx())["conv_a.weight"]) == [0, 3] and \
        "conv_b.weight" not in q.param_names


def test_coupling_only_applies_to_filters(monkeypatch):
    monkeypatch.setattr(coupling, "coupled_filter_groups", lambda model: [["conv_a.weight", "conv_b.weight"]])
    p = L1RankedStructureParameterPruner("p", "Channels", 0.5, ["conv_c.weight"], model=Residual())
    assert p.param_names == ["conv_c.weight"]


def test_real_coupling_on_resnet20_prunes_every_conv_feeding_the_sum():
    from compressor.thinning import coupled_filter_groups  # noqa: F401  (the real one)
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    p = L1RankedStructureParameterPruner("p", "Filters", 0.25, ["layer1.0.conv2.weight"], model=model)
    members = ["conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight", "layer1.2.conv2.weight"]
    assert sorted(p.units[0].members) == sorted(members)
    masks = p.masks(params_of(model, p), ctx())
    chosen = pruned_filters(masks["conv1.weight"])
    assert len(chosen) == 4
    for m in members:
        assert pruned_filters(masks[m]) == chosen
    for bn in ("bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"):
        for suffix in ("weight", "bias"):
            assert [i for i, k in enumerate(masks[f"{bn}.{suffix}"].tolist()) if not k] == chosen
    # ranked by the sum of the members' mean |w|
    total = sum(dict(model.named_parameters())[m].detach().abs().mean(dim=(1, 2, 3)) for m in members)
    assert chosen == sorted(torch.argsort(total)[:4].tolist())


# -- dependents: the masked network already computes the thinned one ------------------------------
def test_filter_masks_zero_bias_and_batch_norm_so_the_channel_is_exactly_zero(tiny):
    scheduler = compressor.dict_config(tiny, None, {
        "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                          "desired_sparsity": 0.5, "weights": ["conv1.weight", "conv2.weight"]}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]})
    with torch.no_grad():
        tiny.bn1.bias.fill_(0.7)
        tiny.conv2.bias.fill_(0.3)
    scheduler.on_epoch_begin(0)
    masks = scheduler.masks
    assert set(masks) == {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight",
                          "conv2.bias"}
    seen = {}
    tiny.relu1.register_forward_hook(lambda m, i, o: seen.__setitem__("relu1", o))
    tiny.relu2.register_forward_hook(lambda m, i, o: seen.__setitem__("relu2", o))
    tiny.train()
    tiny(torch.randn(4, 1, 8, 8))
    for layer, act in (("conv1", "relu1"), ("conv2", "relu2")):
        dead = pruned_filters(masks[f"{layer}.weight"])
        assert dead and seen[act][:, dead].abs().max() == 0


def test_masked_resnet20_computes_what_the_thinned_one_does(float64):
    from compressor import thinning
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):       # non-trivial beta and statistics
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    scheduler = compressor.dict_config(model, None, {
        "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                          "desired_sparsity": 0.5,
                          "weights": ["module.layer1.0.conv2.weight", "module.layer2.0.conv1.weight"]}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]})
    scheduler.on_epoch_begin(0)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        masked = model(x)
    thinning.remove_filters(model, torch.randn(1, 3, 8, 8))
    assert model.conv1.weight.shape[0] == 8 and model.layer2[0].conv1.weight.shape[0] == 16
    with torch.no_grad():
        assert_same_function(model(x), masked)      # float64: exact up to rounding


# -- fold_batchnorm ------------------------------------------------------------------------------
def test_ranking_uses_folded_weights_with_fold_batchnorm(tiny):
    with torch.no_grad():
        tiny.conv1.weight.fill_(1.0)
        tiny.conv1.weight[0].fill_(0.5)                              # smallest raw filter
        tiny.bn1.weight.copy_(torch.tensor([4.0, 1, 1, 1, 1, 1, 1, 0.01]))   # filter 7 folds smallest
    def run(args):
        model = TinyNet()
        model.load_state_dict(tiny.state_dict())
        s = compressor.dict_config(model, None, {
            "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": 0.125, "weights": ["conv1.weight"]}},
            "policies": [{"pruner": {"instance_name": "p", "args": args}, "epochs": [0]}]})
        s.on_epoch_begin(0)
        return pruned_filters(s.masks["conv1.weight"])
    assert run({}) == [0]
    assert run({"fold_batchnorm": True}) == [7]


# -- N:M -----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), extra=st.integers(1, 4), rows=st.integers(1, 5), blocks=st.integers(1, 4),
       seed=st.integers(0, 1000))
def test_nm_keeps_exactly_n_largest_of_every_m(n, extra, rows, blocks, seed):
    m = n + extra
    w = torch.randn(rows, blocks * m, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(w, n, m)
    per_block = mask.view(rows, blocks, m)
    assert (per_block.sum(-1) == n).all()                       # exactly m - n zeros per block
    a = w.abs().view(rows, blocks, m)
    kept_min = torch.where(per_block, a, torch.full_like(a, math.inf)).amin(-1)
    cut_max = torch.where(~per_block, a, torch.full_like(a, -math.inf)).amax(-1)
    assert (kept_min >= cut_max).all()


def test_nm_on_convolutions_runs_along_input_channels():
    w = torch.randn(3, 8, 2, 2)
    mask = NMSparsityPruner("nm", 2, 4, ["w"]).masks({"w": w}, ctx())["w"]
    blocks = mask.permute(0, 2, 3, 1).reshape(-1, 4)
    assert (blocks.sum(1) == 2).all()
    with pytest.raises(ComponentArgError, match=r"parameter 'w' of shape \(3, 6, 2, 2\) has 6 inputs"):
        NMSparsityPruner("nm", 2, 4, ["w"]).check({"w": torch.ones(3, 6, 2, 2)})


# -- argument errors ------------------------------------------------------------------------------
L1 = L1RankedStructureParameterPruner


@pytest.mark.parametrize("make,key,match", [
    (lambda: L1("p", "Filters", 1.0, ["w"]), "desired_sparsity", r"must be in \[0\.0, 1\.0\); got 1\.0"),
    (lambda: L1("p", "Filters", -0.1, ["w"]), "desired_sparsity", r"must be in \[0\.0, 1\.0\)"),
    (lambda: L1("p", "Filters", "half", ["w"]), "desired_sparsity", "must be a number"),
    (lambda: L1("p", "Filters", fraction_to_prune=1.5, weights=["w"]), "fraction_to_prune", r"\[0\.0, 1\.0\)"),
    (lambda: L1("p", "Filters", weights=["w"]), "desired_sparsity", "is required"),
    (lambda: L1("p", "Filters", 0.1, ["w"], fraction_to_prune=0.1), "fraction_to_prune", "not both"),
    (lambda: L1("p", "Filters", 0.1), "weights", "is required"),
    (lambda: L1("p", "Filters", 0.1, []), "weights", "non-empty list"),
    (lambda: L1("p", "Filtres", 0.1, ["w"]), "group_type", "unknown group type 'Filtres' \\(did you mean 'Filters'"),
    (lambda: L1("p", "4D", 0.1, ["w"]), "group_type", "'4D' is not supported here; valid: 2D, 3D, Blocks"),
    (lambda: L1("p", "Blocks", 0.1, ["w"]), "kwargs", "needs kwargs: {block_shape"),
    (lambda: L1("p", "Blocks", 0.1, ["w"], kwargs={"block_shape": [0, 1]}), "kwargs.block_shape", "positive integers"),
    (lambda: L1("p", "Filters", 0.1, ["w"], kwargs={"block_shape": [1, 2]}), "kwargs.block_shape", "only used with"),
    (lambda: L1("p", "Filters", 0.1, ["w"], kwargs={"shape": 1}), "kwargs.shape", "unknown key; valid: block_shape"),
    (lambda: L1("p", "Filters", 0.1, ["w"], group_dependency="Follower"), "group_dependency", "valid: Leader, Independent"),
    (lambda: L1("p", "Filters", 0.1, ["w"], noise=2), "noise", r"\[0\.0, 1\.0\]"),
    (lambda: L1("p", "Filters", 0.1, ["w"], group_size=0), "group_size", "positive integer"),
    (lambda: L1("p", "Filters", 0.1, ["w"], rounding_fn="up"), "rounding_fn", "floor, ceil, round"),
    (lambda: L1("p", "Filters", 0.1, ["w"], seed=1.5), "seed", "must be an integer"),
    (lambda: L1RankedStructureParameterPruner_AGP("p", 0.5, 0.2, "Filters", ["w"]), "final_sparsity", "must be >= initial"),
    (lambda: L1RankedStructureParameterPruner_AGP("p", 0.1, 1.0, "Filters", ["w"]), "final_sparsity", r"\[0\.0, 1\.0\)"),
    (lambda: ActivationAPoZRankedFilterPruner("p", "Channels", 0.1, ["w"]), "group_type", "valid: 3D, Filters"),
    (lambda: RankedStructureParameterPruner("p", "Channels", 0.1, ["w"], criterion="BNGamma"), "group_type", "valid: 3D, Filters"),
    (lambda: RankedStructureParameterPruner("p", "Filters", 0.1, ["w"], criterion="L3"), "criterion", "unknown criterion 'L3'.*valid: APoZ"),
    (lambda: RandomLevelStructureParameterPruner("p", "Filters", 0.3, ["w"]), "sparsity_range", r"\[low, high\]"),
    (lambda: RandomLevelStructureParameterPruner("p", "Filters", [0.4, 0.2], ["w"]), "sparsity_range", "must be <= high"),
    (lambda: RandomLevelStructureParameterPruner("p", "Filters", [0.1, 1.0], ["w"]), "sparsity_range", r"\[0\.0, 1\.0\)"),
    (lambda: NMSparsityPruner("nm", 4, 4, ["w"]), "n", "must be smaller than m"),
    (lambda: NMSparsityPruner("nm", 0, 4, ["w"]), "n", "integer >= 1"),
    (lambda: NMSparsityPruner("nm", 1, 1, ["w"]), "m", "integer >= 2"),
    (lambda: NMSparsityPruner("nm", 1, 4, []), "weights", "non-empty"),
    (lambda: L1("p", "Filters", 0.1, ["nope.weight"], model=TinyNet()), "weights", "'nope.weight' is not a parameter"),
])
def test_bad_arguments_name_the_argument(make, key, match):
    with pytest.raises(ComponentArgError, match=match) as info:
        make()
    assert info.value.key == key


@pytest.mark.parametrize("group_type,name,shape,valid", [
    ("Rows", "conv1.weight", "(8, 1, 3, 3)", "valid for rank 4: 2D, 3D, Blocks, Channels, Filters"),
    ("Filters", "fc.weight", "(10, 64)", "valid for rank 2: Blocks, Channels, Cols, Rows"),
    ("Cols", "conv2.weight", "(16, 8, 3, 3)", "valid for rank 4: 2D, 3D, Blocks, Channels, Filters"),
])
def test_group_type_that_does_not_fit_names_parameter_shape_and_valid_types(tiny, group_type, name, shape, valid):
    p = L1("p", group_type, 0.5, [name])
    params = dict(tiny.named_parameters())
    with pytest.raises(ComponentArgError) as info:
        p.check({name: params[name]})
    assert info.value.key == "group_type"
    assert f"parameter '{name}' of shape {shape}" in info.value.reason and valid in info.value.reason


def test_blocks_that_do_not_divide_and_single_groups_are_rejected():
    p = L1("p", "Blocks", 0.5, ["w"], kwargs={"block_shape": [1, 3, 1, 1]})
    with pytest.raises(ComponentArgError, match=r"does not divide parameter 'w' of shape \(2, 8, 1, 1\)"):
        p.check({"w": torch.ones(2, 8, 1, 1)})
    with pytest.raises(ComponentArgError, match="into a single group"):
        L1("p", "Filters", 0.5, ["w"]).check({"w": torch.ones(1, 8, 1, 1)})


def test_yaml_errors_are_located_and_change_nothing(write_yaml, tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    path = write_yaml("""
version: 1
pruners:
  fc_rows:
    class: L1RankedStructureParameterPruner
    group_type: Rows
    desired_sparsity: 0.5
    weights: [module.conv1.weight]
policies:
  - pruner: {instance_name: fc_rows}
    epochs: [0]
""")
    with pytest.raises(ScheduleError) as info:
        compressor.file_config(tiny, None, path)
    msg = str(info.value)
    assert f"{path}:6 pruners.fc_rows.group_type" in msg
    assert "group type 'Rows' does not fit parameter 'conv1.weight' of shape (8, 1, 3, 3)" in msg
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in before.items())
    bad = write_yaml("""
pruners:
  p: {class: L1RankedStructureParameterPruner_AGP, initial_sparsity: 0.1, final_sparsity: 1.0,
      group_type: Filters, weights: [conv1.weight]}
policies:
  - {pruner: {instance_name: p}, starting_epoch: 0, ending_epoch: 4, frequency: 2}
""", "bad.yaml")
    with pytest.raises(ScheduleError, match=r"bad\.yaml:3 pruners\.p\.final_sparsity: must be in \[0\.0, 1\.0\)"):
        compressor.file_config(tiny, None, bad)


# -- Distiller's schedule end to end --------------------------------------------------------------
RESNET20_FILTERS_AGP = """
version: 1
pruners:
  low_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity : 0.10
    final_sparsity: 0.50
    group_type: Filters
    weights: [module.layer2.0.conv1.weight, module.layer2.1.conv1.weight]
  fine_pruner:
    class: AutomatedGradualPruner
    initial_sparsity : 0.05
    final_sparsity: 0.70
    weights: [module.layer3.1.conv1.weight, module.layer3.1.conv2.weight]
  fc_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity : 0.05
    final_sparsity: 0.50
    group_type: Rows
    weights: [module.fc.weight]
  leader_pruner:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.10
    final_sparsity: 0.25
    group_type: Filters
    group_dependency: Leader
    weights: [module.layer3.0.conv2.weight, module.layer3.0.downsample.0.weight,
              module.layer3.1.conv2.weight, module.layer3.2.conv2.weight]
lr_schedulers:
  pruning_lr:
    class: StepLR
    step_size: 50
    gamma: 0.10
policies:
  - pruner:
      instance_name : low_pruner
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - pruner:
      instance_name : fine_pruner
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - pruner:
      instance_name : fc_pruner
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - pruner:
      instance_name : leader_pruner
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - lr_scheduler:
      instance_name: pruning_lr
    starting_epoch: 0
    ending_epoch: 400
    frequency: 1
"""


def test_distiller_resnet20_filter_agp_schedule_trains_with_pruned_filters_staying_zero():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = compressor.dict_config(model, optimizer, yaml.safe_load(RESNET20_FILTERS_AGP))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
               for _ in range(2)]

    def still_zero(epoch, i):
        for name in ("layer2.0.conv1", "layer2.1.conv1"):
            conv = model.get_submodule(name)
            dead = (conv.weight.abs().sum(dim=(1, 2, 3)) == 0)
            bn = model.get_submodule(name.replace("conv", "bn"))
            assert (bn.weight[dead] == 0).all() and (bn.bias[dead] == 0).all()

    train(model, optimizer, scheduler, batches, epochs=2, after_step=still_zero)
    for name in ("layer2.0.conv1.weight", "layer2.1.conv1.weight"):
        w = dict(model.named_parameters())[name]
        assert int((w.abs().sum(dim=(1, 2, 3)) == 0).sum()) == 16          # 50 % of 32 on the last event
    assert int((model.fc.weight.abs().sum(dim=0) == 0).sum()) == 32       # Rows = fc input features
    leader = [pruned_filters(dict(model.named_parameters())[n]) for n in
              ("layer3.0.conv2.weight", "layer3.0.downsample.0.weight", "layer3.1.conv2.weight",
               "layer3.2.conv2.weight")]
    assert len(leader[0]) == 16 and all(x == leader[0] for x in leader)


def test_dropfilter_schedule_masks_only_the_forward_pass(tiny):
    """Distiller's drop-filter recipe: Bernoulli masks every few minibatches, weights restored."""
    optimizer = torch.optim.SGD(tiny.parameters(), lr=0.0)
    scheduler = compressor.dict_config(tiny, optimizer, {
        "pruners": {"drop": {"class": "BernoulliFilterPruner_AGP", "initial_sparsity": 0.5,
                             "final_sparsity": 0.5, "group_type": "Filters", "weights": ["conv2.weight"]}},
        "policies": [{"pruner": {"instance_name": "drop", "args": {
            "mini_batch_pruning_frequency": 2, "discard_masks_at_minibatch_end": True,
            "use_double_copies": True, "mask_on_forward_only": True}},
            "starting_epoch": 0, "ending_epoch": 2, "frequency": 1}]})
    before = tiny.conv2.weight.detach().clone()
    seen = []
    tiny.conv2.register_forward_hook(lambda m, i, o: seen.append(int((m.weight.abs().sum((1, 2, 3)) == 0).sum())))
    train(tiny, optimizer, scheduler, make_batches(4), epochs=2)
    assert torch.equal(tiny.conv2.weight, before)        # lr 0: restored after every step
    assert scheduler.masks == {}                           # discarded at each minibatch end
    assert seen[0] > 0 and 0 in seen                       # dropped on pruning minibatches only


def test_criteria_that_need_the_graph_report_an_untraceable_model():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 1)
            self.act = nn.ReLU()

        def forward(self, x):
            if x.sum() > 0:                   # data-dependent control flow: torch.fx gives up
                x = -x
            return self.act(self.conv(x))

    with pytest.warns(UserWarning, match="filter coupling not found"), \
            pytest.raises(ComponentArgError, match="needs the model's graph: cannot trace Untraceable") as info:
        ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"], model=Untraceable())
    assert info.value.key == "model"
    with pytest.warns(UserWarning, match="filter coupling not found"):
        p = L1RankedStructureParameterPruner("p", "Filters", 0.5, ["conv.weight"], model=Untraceable())
    assert p.param_names == ["conv.weight", "conv.bias"]
