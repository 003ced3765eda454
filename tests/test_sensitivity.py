"""Sensitivity analysis: what is pruned at each level, exact restoration, outputs, ratios, errors."""
import copy
import importlib.util
import math
import sys

import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import compressor
from compressor import config
from compressor.errors import CompressorError
from compressor.pruners.structured import structures_to_prune
from compressor.sensitivity import (COLUMNS, SensitivityError, evaluator, group_type_for,
                                    perform_sensitivity_analysis, ratios_from_sensitivity,
                                    ratios_to_schedule, sensitivities_to_csv, sensitivities_to_png,
                                    sensitivity_range, sensitivity_table)

from helpers import TinyNet, make_batches

LEVELS = [0.0, 0.25, 0.5, 0.75]
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def l1_fn(model):
    """A deterministic stand-in for evaluation: the L1 norm of every weight (and a count of zeros)."""
    l1 = float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if n.endswith("weight")))
    zeros = float(sum(int((p == 0).sum()) for p in model.parameters()))
    return l1, zeros, -l1


class Recorder:
    """A test_fn that records the model's parameters at each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, model):
        self.calls.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return l1_fn(model)


def bits(model):
    """Every tensor of the state dict as raw bytes (distinguishes -0.0 from 0.0)."""
    return {k: v.detach().clone().contiguous().reshape(-1).view(torch.uint8)
            for k, v in model.state_dict().items()}


def same_bits(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():   # distinct, non-zero batch-norm parameters and buffers
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.5, 0.5)
        model.bn1.running_mean.uniform_(-0.1, 0.1)
    return model


# -- what is pruned -----------------------------------------------------------------------------
def test_element_levels_prune_exactly_that_tensor(net):
    rec = Recorder()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    df = perform_sensitivity_analysis(net, None, LEVELS, rec, "element")
    assert list(df.columns) == list(COLUMNS)
    assert list(df["parameter"].unique()) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert df["sparsity"].tolist() == LEVELS * 3
    # the dense network is measured once, then one call per (weight, level > 0)
    assert len(rec.calls) == 1 + 3 * 3
    pruned = iter(rec.calls[1:])
    for name in ["conv1.weight", "conv2.weight", "fc.weight"]:
        w = before[name]
        for s in LEVELS[1:]:
            seen = next(pruned)
            k = math.floor(s * w.numel() + 1e-6)
            assert int((seen[name] == 0).sum()) == k
            kept = seen[name] != 0   # the k smallest magnitudes went
            assert w[~kept].abs().max() <= w[kept].abs().min()
            assert all(torch.equal(seen[o], before[o]) for o in before if o != name)
    dense = df[df["sparsity"] == 0.0]
    assert (dense["top1"] == l1_fn(net)[0]).all()


def test_filter_levels_use_l1_ranking_and_zero_the_dependents(net):
    rec = Recorder()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    perform_sensitivity_analysis(net, ["conv1.weight", "fc.weight"], [0.5], rec, "filter")
    conv1, fc = rec.calls
    w = before["conv1.weight"]
    k = structures_to_prune(0.5, 8)
    gone = w.abs().mean(dim=(1, 2, 3)).argsort()[:k]
    dead = torch.zeros(8, dtype=torch.bool)
    dead[gone] = True
    assert (conv1["conv1.weight"][dead] == 0).all() and (conv1["conv1.weight"][~dead] != 0).all()
    for dep in ("conv1.bias", "bn1.weight", "bn1.bias"):   # the filter is gone, not just its weights
        assert (conv1[dep][dead] == 0).all() and torch.equal(conv1[dep][~dead], before[dep][~dead])
    # a Linear weight with 'filter': output neurons (stored rows) and their bias entries
    rows = (fc["fc.weight"] == 0).all(dim=1)
    assert int(rows.sum()) == 5 and int((fc["fc.weight"] == 0).sum()) == 5 * 64
    assert (fc["fc.bias"][rows] == 0).all()
    assert group_type_for("filter", (10, 64)) == "Cols"


def test_filter_without_dependents_prunes_the_weight_only(net):
    rec = Recorder()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    perform_sensitivity_analysis(net, ["conv1.weight"], [0.0, 0.5], rec, "filter", dependents=False)
    seen = rec.calls[1]
    assert int((seen["conv1.weight"] == 0).all(dim=(1, 2, 3)).sum()) == 4
    assert all(torch.equal(seen[n], before[n]) for n in before if n != "conv1.weight")


def test_channel_levels_and_single_channel_layers_are_skipped(net):
    rec = Recorder()
    df = perform_sensitivity_analysis(net, None, [0.0, 0.5], rec, "channel")
    assert list(df["parameter"].unique()) == ["conv2.weight", "fc.weight"]   # conv1 has 1 input channel
    conv2, fc = rec.calls[1], rec.calls[2]
    assert int((conv2["conv2.weight"] == 0).all(dim=(0, 2, 3)).sum()) == 4
    assert int((fc["fc.weight"] == 0).all(dim=0).sum()) == 32
    assert torch.equal(conv2["conv2.bias"], net.conv2.bias)   # input channels have no dependents


def test_analysis_prunes_what_the_generated_schedule_prunes(net):
    rec = Recorder()
    perform_sensitivity_analysis(net, ["conv2.weight"], [0.25], rec, "filter")
    twin = copy.deepcopy(net)
    text = ratios_to_schedule({"conv2.weight": 0.25}, "filter", model=twin)
    compressor.dict_config(twin, None, yaml.safe_load(text)).on_epoch_begin(0)
    seen, = rec.calls
    assert torch.equal(seen["conv2.weight"] == 0, twin.conv2.weight == 0)
    assert torch.equal(seen["conv2.bias"] == 0, twin.conv2.bias == 0)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.0, 0.99), min_size=1, max_size=4), st.sampled_from(["element", "filter",
                                                                               "channel"]))
def test_model_is_bit_identical_afterwards(levels, group):
    torch.manual_seed(1)
    model = TinyNet()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = -0.0
        model.conv2.weight[1] = 0.0      # already-pruned filter
    model.train()
    model.bn1.eval()
    want = bits(model)
    perform_sensitivity_analysis(model, None, levels, l1_fn, group)
    assert same_bits(bits(model), want)
    assert model.training and not model.bn1.training and model.conv1.training


def test_weights_are_restored_when_test_fn_fails(net):
    want = bits(net)
    calls = []

    def failing(model):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation broke")
        return l1_fn(model)

    with pytest.raises(RuntimeError, match="evaluation broke"):
        perform_sensitivity_analysis(net, None, LEVELS, failing, "filter")
    assert same_bits(bits(net), want)


def test_evaluator_and_epochstats_and_progress(net):
    batches = make_batches(2)
    seen = []
    df = perform_sensitivity_analysis(net, ["fc.weight"], [0.0, 0.9], evaluator(batches), "element",
                                      progress=lambda *a: seen.append(a))
    assert [(p, s) for p, s, _ in seen] == [("fc.weight", 0.0), ("fc.weight", 0.9)]
    assert df[["top1", "top5"]].ge(0).all().all() and df["top5"].ge(df["top1"]).all()
    from compressor.training import evaluate
    stats_df = perform_sensitivity_analysis(
        net, ["fc.weight"], [0.0, 0.9], lambda m: evaluate(m, batches, nn.CrossEntropyLoss()))
    pd.testing.assert_frame_equal(df, stats_df)


def test_wrapped_model_names(net):
    wrapped = nn.DataParallel(net)
    df = perform_sensitivity_analysis(wrapped, ["conv1.weight"], [0.5], l1_fn)
    assert df["parameter"].tolist() == ["module.conv1.weight"]
    rec = Recorder()
    perform_sensitivity_analysis(wrapped, None, [0.5], rec, "filter")
    conv1 = rec.calls[0]
    dead = (conv1["module.conv1.weight"] == 0).all(dim=(1, 2, 3))
    assert int(dead.sum()) == 4
    assert (conv1["module.conv1.bias"][dead] == 0).all() and (conv1["module.bn1.weight"][dead] == 0).all()


# -- outputs ------------------------------------------------------------------------------------
def test_csv_header_and_rows(net, tmp_path):
    df = perform_sensitivity_analysis(net, ["conv1.weight", "fc.weight"], [0.0, 0.5], l1_fn)
    path = sensitivities_to_csv(df, tmp_path / "sensitivity.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "parameter,sparsity,top1,top5,loss"
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["conv1.weight", "0.0"], ["conv1.weight", "0.5"],
                                                      ["fc.weight", "0.0"], ["fc.weight", "0.5"]]
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, df, check_exact=False)
    assert ratios_from_sensitivity(back, 1e9) == {"conv1.weight": 0.5, "fc.weight": 0.5}
    assert not list(tmp_path.glob(".*.tmp"))


def test_table(net):
    df = perform_sensitivity_analysis(net, ["fc.weight", "conv1.weight"], [0.0, 0.25], l1_fn)
    table = sensitivity_table(df)
    assert list(table.index) == ["fc.weight", "conv1.weight"]
    assert list(table.columns) == [0.0, 0.25]
    assert table.loc["fc.weight", 0.25] == df.iloc[1]["top1"]
    assert sensitivity_table(df, "loss").loc["conv1.weight", 0.0] == df.iloc[2]["loss"]


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is an optional extra")
def test_png_written(net, tmp_path):
    df = perform_sensitivity_analysis(net, None, [0.0, 0.5], l1_fn)
    path = sensitivities_to_png(df, tmp_path / "sensitivity.png", metric="top5")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_says_how_to_install(net, tmp_path, monkeypatch):
    df = perform_sensitivity_analysis(net, ["fc.weight"], [0.0, 0.5], l1_fn)
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(SensitivityError, match=r"needs matplotlib: pip install \"compressor\[plot\]\""):
        sensitivities_to_png(df, tmp_path / "sensitivity.png")
    assert not (tmp_path / "sensitivity.png").exists()


# -- ratios and schedules -----------------------------------------------------------------------
def frame(curves, metric="top1"):
    rows = []
    for name, values in curves.items():
        for s, v in values:
            rows.append({"parameter": name, "sparsity": s, "top1": v, "top5": v, "loss": v})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_ratios_rule():
    df = frame({"a": [(0.0, 90.0), (0.2, 89.5), (0.4, 89.0), (0.6, 85.0), (0.8, 88.9)],   # noisy recovery
                "b": [(0.4, 80.0), (0.0, 91.0), (0.2, 90.8)],                               # any order
                "c": [(0.0, 70.0), (0.2, 60.0)]})
    assert ratios_from_sensitivity(df, 1.0) == {"a": 0.4, "b": 0.2, "c": 0.0}
    assert ratios_from_sensitivity(df, 0.0) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert ratios_from_sensitivity(df, 100.0) == {"a": 0.8, "b": 0.4, "c": 0.2}
    levels = [0.0, 0.2, 0.4, 0.6, 0.8, 0.9]   # the table of docs/sensitivity.md
    docs = frame({"conv1.weight": zip(levels, [99.1, 98.9, 97.8, 93.5, 71.2, 40.1]),
                  "conv2.weight": zip(levels, [99.1, 99.1, 99.0, 98.7, 96.9, 90.3]),
                  "fc1.weight": zip(levels, [99.1, 99.1, 99.1, 99.0, 98.8, 98.1]),
                  "fc2.weight": zip(levels, [99.1, 90.2, 71.0, 52.3, 30.4, 20.0])})
    assert ratios_from_sensitivity(docs, 1.0) == {"conv1.weight": 0.2, "conv2.weight": 0.6,
                                                  "fc1.weight": 0.9, "fc2.weight": 0.0}
    loss = frame({"a": [(0.0, 1.0), (0.5, 1.05), (0.7, 1.5)]})
    assert ratios_from_sensitivity(loss, 0.1, metric="loss") == {"a": 0.5}   # loss may rise by 0.1


@pytest.mark.parametrize("group", ["element", "filter", "channel"])
def test_generated_schedule_loads_and_builds(net, group):
    df = perform_sensitivity_analysis(net, None, LEVELS, l1_fn, group)
    ratios = ratios_from_sensitivity(df, 1e9)
    assert set(ratios.values()) == {0.75}
    ratios[next(iter(ratios))] = 0.5
    text = ratios_to_schedule(ratios, group, model=net)
    config.loads(text)
    twin = copy.deepcopy(net)
    sched = compressor.dict_config(twin, None, yaml.safe_load(text))
    sched.on_epoch_begin(0)
    for name, ratio in ratios.items():
        w = dict(twin.named_parameters())[name]
        if group == "element":
            assert int((w == 0).sum()) == math.floor(ratio * w.numel())
        else:
            dim = 0 if group == "filter" else 1
            dims = tuple(d for d in range(w.dim()) if d != dim)
            n = w.shape[dim]
            assert int((w == 0).all(dim=dims).sum()) == structures_to_prune(ratio, n)


def test_schedule_shape():
    text = ratios_to_schedule({"module.a.weight": 0.5, "b.weight": 0.5, "c.weight": 0.25,
                               "d.weight": 0.0}, "filter", pruner_class="L2RankedStructureParameterPruner",
                              epoch=3)
    data = yaml.safe_load(text)
    assert data["pruners"] == {
        "filters_pruner_50": {"class": "L2RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": 0.5, "weights": ["module.a.weight", "b.weight"]},
        "filters_pruner_25": {"class": "L2RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": 0.25, "weights": ["c.weight"]}}
    assert data["policies"] == [{"pruner": {"instance_name": "filters_pruner_50"}, "epochs": [3]},
                                {"pruner": {"instance_name": "filters_pruner_25"}, "epochs": [3]}]
    element = yaml.safe_load(ratios_to_schedule({"a.weight": 0.3, "b.weight": 0.0}, "element"))
    assert element["pruners"]["sensitivity_pruner"] == {"class": "SparsityLevelParameterPruner",
                                                        "levels": {"a.weight": 0.3}}
    odd = yaml.safe_load(ratios_to_schedule({"null": 0.5, "we'ird: name": 0.5, "0.weight": 0.5}, "element"))
    assert odd["pruners"]["sensitivity_pruner"]["levels"] == {"null": 0.5, "we'ird: name": 0.5,
                                                              "0.weight": 0.5}


def test_sensitivity_range():
    levels = sensitivity_range()
    assert len(levels) == 19 and levels[0] == 0.0 and levels[-1] == 0.9 and levels[6] == 0.3
    assert sensitivity_range(0.0, 1.0, 0.1) == [round(0.1 * i, 10) for i in range(10)]


# -- errors -------------------------------------------------------------------------------------
ERRORS = [
    (lambda m: perform_sensitivity_analysis(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), None, [0.5], l1_fn),
     r"^Sequential has no prunable weights: sensitivity analysis prunes convolution and Linear weights"),
    (lambda m: perform_sensitivity_analysis(m, ["conv3.weight"], [0.5], l1_fn),
     r"^'conv3\.weight' is not a parameter of TinyNet \(did you mean 'conv2\.weight' or 'conv1\.weight' "
     r"or 'fc\.weight'\?\); prunable weights: conv1\.weight, conv2\.weight, fc\.weight$"),
    (lambda m: perform_sensitivity_analysis(m, ["conv1.bias"], [0.5], l1_fn),
     r"^'conv1\.bias' has shape \(8,\) \(rank 1\): sensitivity analysis prunes weights of rank 2 or 4"),
    (lambda m: perform_sensitivity_analysis(m, [], [0.5], l1_fn), r"^params is empty"),
    (lambda m: perform_sensitivity_analysis(m, None, [0.5], l1_fn, "filters"),
     r"^unknown sensitivity group 'filters' \(did you mean 'filter'\?\); valid: element, filter, channel$"),
    (lambda m: perform_sensitivity_analysis(m, ["conv1.weight"], [0.5], l1_fn, "channel"),
     r"^group 'channel' cannot rank 'conv1\.weight' of shape \(8, 1, 3, 3\): it has a single input "
     r"channel; use group 'element' for it, or leave it out$"),
    (lambda m: perform_sensitivity_analysis(nn.Sequential(nn.Conv2d(1, 4, 3)), None, [0.5], l1_fn,
                                            "channel"),
     r"^group 'channel' fits none of the weights: each has a single input channel "
     r"\(0\.weight \(4, 1, 3, 3\)\)$"),
    (lambda m: perform_sensitivity_analysis(m, None, [0.5, 1.0], l1_fn),
     r"^sparsity 1\.0 must be a number in \[0, 1\)$"),
    (lambda m: perform_sensitivity_analysis(m, None, [], l1_fn), r"^sparsities is empty"),
    (lambda m: perform_sensitivity_analysis(m, None, 0.5, l1_fn), r"^sparsities must be a sequence"),
    (lambda m: perform_sensitivity_analysis(m, None, [0.5], None), r"^test_fn must be a function"),
    (lambda m: perform_sensitivity_analysis(m, None, [0.5], lambda _: 1.0),
     r"^test_fn must return \(top1, top5, loss\)"),
    (lambda m: sensitivity_table(frame({"a": [(0.0, 1.0)]}), "top-1"),
     r"^unknown metric 'top-1' \(did you mean 'top1'.*\?\); valid: top1, top5, loss$"),
    (lambda m: sensitivity_table(pd.DataFrame({"parameter": ["a"], "top1": [1.0]})),
     r"^not a sensitivity DataFrame: missing column\(s\) sparsity, top5, loss"),
    (lambda m: sensitivities_to_csv([], "x.csv"),
     r"^expected the DataFrame of perform_sensitivity_analysis; got list$"),
    (lambda m: ratios_from_sensitivity(frame({"a": [(0.0, 1.0)]}), -1), r"^max_drop must be a number >= 0"),
    (lambda m: ratios_from_sensitivity(frame({"a": [(0.5, 1.0)]}), 1),
     r"^'a' has no dense measurement \(sparsity 0\.0\) to compare with; include 0\.0"),
    (lambda m: ratios_to_schedule({"a": 0.0}, "element"), r"^every ratio is 0: nothing to prune"),
    (lambda m: ratios_to_schedule({"a": 1.5}, "element"),
     r"^ratio of 'a' 1\.5 must be a number in \[0, 1\)$"),
    (lambda m: ratios_to_schedule({"a": 0.5}, "filter", pruner_class="L1RankedStructurePruner"),
     r"^unknown pruner class 'L1RankedStructurePruner' \(did you mean 'L1RankedStructureParameterPruner'"),
    (lambda m: ratios_to_schedule({"a": 0.5}, "element", pruner_class="AutomatedGradualPruner"),
     r"^pruner_class 'AutomatedGradualPruner' does not take levels, which a 'element' schedule sets; "
     r"use SparsityLevelParameterPruner$"),
    (lambda m: ratios_to_schedule({"fc.weigth": 0.5}, "filter", model=m),
     r"^'fc\.weigth' is not a parameter of TinyNet \(did you mean 'fc\.weight'"),
    (lambda m: sensitivity_range(0.0, 0.9, 0), r"^sensitivity range: step must be > 0; got 0$"),
    (lambda m: sensitivity_range(0.5, 0.5, 0.1), r"^sensitivity range: stop \(0\.5\) must be greater"),
]


@pytest.mark.parametrize("call,message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_errors(net, call, message):
    want = bits(net)
    with pytest.raises(SensitivityError, match=message) as info:
        call(net)
    assert isinstance(info.value, CompressorError) and "\n" not in str(info.value)
    assert same_bits(bits(net), want)


def test_a_range_of_more_than_the_bounded_levels_is_refused_before_listing_them():
    from compressor.sensitivity.checks import MAX_LEVELS
    assert len(sensitivity_range(0.0, 1.0, 0.001)) == MAX_LEVELS == 1000
    with pytest.raises(SensitivityError, match=r"0 to 1 in steps of 1e-09 is 1,000,000,000 levels; at most 1000"):
        sensitivity_range(0.0, 1.0, 1e-9)
