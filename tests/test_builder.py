"""Building schedulers: class lookup, argument checks, weight-name matching, nothing half-applied."""
import re

import pytest
import torch
from torch import nn

import compressor
from compressor.builder import match_names
from compressor.errors import ScheduleError

from helpers import TinyNet

NAMES = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight", "conv2.bias",
         "fc.weight", "fc.bias"]


@pytest.mark.parametrize("pattern,expected", [
    ("conv1.weight", ["conv1.weight"]),
    ("module.conv1.weight", ["conv1.weight"]),            # Distiller's DataParallel prefix
    ("conv*.weight", ["conv1.weight", "conv2.weight"]),   # glob
    ("*", NAMES),                                          # Distiller's '*' default = everything
    ("re:conv\\d\\.(weight|bias)", ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]),
    ("module.conv?.weight", ["conv1.weight", "conv2.weight"]),
    ("conv3.weight", []),
])
def test_match_names(pattern, expected):
    assert match_names(pattern, NAMES) == expected


def test_prefixed_model_names_match_plain_schedule_names():
    prefixed = ["module." + n for n in NAMES]
    assert match_names("fc.weight", prefixed) == ["module.fc.weight"]
    assert match_names("features.module.0.weight", ["features.0.weight"]) == ["features.0.weight"]


def schedule(pruners="", policies="", extra=""):
    return f"version: 1\npruners:\n{pruners}\n{extra}policies:\n{policies}\n"


AGP = ("  agp:\n    class: AutomatedGradualPruner\n    initial_sparsity: 0.05\n"
       "    final_sparsity: 0.8\n    weights: [module.conv2.weight, fc.weight]\n")
AGP_POLICY = "  - pruner: {instance_name: agp}\n    starting_epoch: 0\n    ending_epoch: 4\n    frequency: 1\n"


def test_builds_a_scheduler_with_policies(write_yaml, tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    sched = compressor.file_config(tiny, opt, write_yaml(schedule(AGP, AGP_POLICY)))
    assert isinstance(sched, compressor.CompressionScheduler)
    assert sched.ordered[0].pruner.weights == ["conv2.weight", "fc.weight"]
    assert [len(sched.policies[e]) for e in range(5)] == [1, 1, 1, 1, 0]


BAD = [
    ("weight matches nothing",
     AGP.replace("fc.weight", "fc1.weight"), AGP_POLICY, "",
     r"s\.yaml:7 pruners\.agp\.weights\[1\]: 'fc1\.weight' matches no parameter of the model \(did you mean 'fc\.weight'"),
    ("sparsity >= 1", AGP.replace("0.8", "1.0"), AGP_POLICY, "",
     r"s\.yaml:6 pruners\.agp\.final_sparsity: must be in \[0\.0, 1\.0\); got 1\.0"),
    ("final < initial", AGP.replace("0.8", "0.01"), AGP_POLICY, "",
     r"s\.yaml:6 pruners\.agp\.final_sparsity: \(0\.01\) must be >= initial_sparsity \(0\.05\)"),
    ("unknown parameter", AGP + "    group_type: Filters\n", AGP_POLICY, "",
     r"s\.yaml:8 pruners\.agp\.group_type: AutomatedGradualPruner has no parameter 'group_type'; valid: initial_sparsity, final_sparsity, weights"),
    ("missing parameter", AGP.replace("    final_sparsity: 0.8\n", ""), AGP_POLICY, "",
     r"s\.yaml:3 pruners\.agp: AutomatedGradualPruner needs final_sparsity"),
    ("wrong type", AGP.replace("0.8", "high"), AGP_POLICY, "",
     r"s\.yaml:6 pruners\.agp\.final_sparsity: must be a number; got 'high'"),
    ("threshold dict key matches nothing",
     "  m:\n    class: MagnitudeParameterPruner\n    thresholds:\n      conv9.weight: 0.1\n",
     "  - pruner: {instance_name: m}\n    epochs: [0]\n", "",
     r"s\.yaml:6 pruners\.m\.thresholds\.conv9\.weight: 'conv9\.weight' matches no parameter"),
    ("level out of range",
     "  l:\n    class: SparsityLevelParameterPruner\n    levels:\n      conv1.weight: 1.5\n",
     "  - pruner: {instance_name: l}\n    epochs: [0]\n", "",
     r"s\.yaml:6 pruners\.l\.levels\.conv1\.weight: must be in \[0\.0, 1\.0\); got 1\.5"),
    ("lr scheduler bad arg", AGP,
     AGP_POLICY + "  - lr_scheduler: {instance_name: lr}\n    epochs: [0]\n",
     "lr_schedulers:\n  lr:\n    class: StepLR\n    step: 3\n",
     r"s\.yaml:\d+ lr_schedulers\.lr\.step: StepLR has no parameter 'step' \(did you mean 'step_size'\?\)"),
]


@pytest.mark.parametrize("what,pruners,policies,extra,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_components_give_one_located_message(write_yaml, tiny, what, pruners, policies, extra, expected):
    path = write_yaml(schedule(pruners, policies, extra), "s.yaml")
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(ScheduleError) as info:
        compressor.file_config(tiny, opt, path)
    assert "\n" not in str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)       # nothing half-applied
    assert opt.param_groups[0]["lr"] == 0.1


def test_failed_schedule_leaves_a_passed_in_scheduler_unchanged(write_yaml, tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    sched = compressor.file_config(tiny, opt, write_yaml(schedule(AGP, AGP_POLICY)))
    bad = write_yaml(schedule(AGP.replace("fc.weight", "nope"), AGP_POLICY), "bad.yaml")
    with pytest.raises(ScheduleError):
        compressor.file_config(tiny, opt, bad, scheduler=sched)
    assert len(sched.ordered) == 1


def test_explicit_names_override_the_star_default(write_yaml, tiny):
    text = schedule("  l:\n    class: LevelPruner\n    levels: {'*': 0.0, conv2.weight: 0.5, 'fc.*': 0.25}\n",
                    "  - pruner: {instance_name: l}\n    epochs: [0]\n")
    sched = compressor.file_config(tiny, None, write_yaml(text))
    values = sched.ordered[0].pruner.values
    assert values["conv2.weight"] == 0.5 and values["fc.weight"] == 0.25 and values["conv1.weight"] == 0.0


def test_lr_scheduler_needs_an_optimizer(write_yaml, tiny):
    text = schedule("", "  - lr_scheduler: {instance_name: lr}\n    epochs: [0]\n",
                    "lr_schedulers:\n  lr: {class: StepLR, step_size: 1}\n")
    with pytest.raises(ScheduleError, match=r"lr_schedulers\.lr: an lr_scheduler needs the optimizer"):
        compressor.file_config(tiny, None, write_yaml(text))


def test_one_lr_scheduler_cannot_serve_two_policies(write_yaml, tiny):
    text = schedule("", "  - lr_scheduler: {instance_name: lr}\n    epochs: [0]\n"
                        "  - lr_scheduler: {instance_name: lr}\n    epochs: [1]\n",
                    "lr_schedulers:\n  lr: {class: StepLR, step_size: 1}\n")
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with pytest.raises(ScheduleError, match=r"policies\[1\]: lr_scheduler 'lr' is already used by policies\[0\]"):
        compressor.file_config(tiny, opt, write_yaml(text))


def test_dict_config_and_dataparallel_prefix(tiny):
    wrapped = nn.DataParallel(tiny)
    sched = compressor.dict_config(wrapped, None, {
        "pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"module.fc.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    assert compressor.sparsity(tiny.fc.weight) == pytest.approx(0.5)


def test_a_failing_lr_scheduler_leaves_the_optimizer_as_it_was(tiny):
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    with pytest.raises(ScheduleError, match=r"lr_schedulers\.b\.bogus: StepLR has no parameter 'bogus'"):
        compressor.dict_config(tiny, opt, {
            "lr_schedulers": {"a": {"class": "LinearLR", "start_factor": 0.5},
                              "b": {"class": "StepLR", "step_size": 1, "bogus": 2}},
            "policies": [{"lr_scheduler": {"instance_name": "a"}, "epochs": [0]},
                         {"lr_scheduler": {"instance_name": "b"}, "epochs": [1]}]})
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]


def test_policy_levels_are_matched_like_weight_names_and_checked(tiny):
    sched = compressor.dict_config(tiny, None, {
        "pruners": {"l": {"class": "LevelPruner", "levels": {"fc.weight": 0.1}}},
        "policies": [{"pruner": {"instance_name": "l", "args": {"levels": {"module.fc.weight": 0.5}}},
                      "epochs": [0]}]})
    sched.on_epoch_begin(0)
    assert compressor.sparsity(tiny.fc.weight) == pytest.approx(0.5)
    with pytest.raises(ScheduleError, match=r"policies\[0\]\.pruner\.args\.levels\.fc\.weight: must be a sparsity in \[0, 1\); got 1\.5"):
        compressor.dict_config(tiny, None, {
            "pruners": {"l": {"class": "LevelPruner", "levels": {"fc.weight": 0.1}}},
            "policies": [{"pruner": {"instance_name": "l", "args": {"levels": {"fc.weight": 1.5}}},
                          "epochs": [0]}]})
    with pytest.raises(ScheduleError, match=r"levels\.fc9\.weight: 'fc9\.weight' matches no parameter"):
        compressor.dict_config(tiny, None, {
            "pruners": {"l": {"class": "LevelPruner", "levels": {"fc.weight": 0.1}}},
            "policies": [{"pruner": {"instance_name": "l", "args": {"levels": {"fc9.weight": 0.5}}},
                          "epochs": [0]}]})
