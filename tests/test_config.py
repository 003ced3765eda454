"""Schedule parsing: every user mistake gives one located message (file:line key: what, valid)."""
import re
import textwrap

import pytest

from compressor import config
from compressor.errors import ScheduleError

GOOD = """\
version: 1
pruners:
  p1:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.5
    weights: [conv1.weight]
lr_schedulers:
  lr:
    class: StepLR
    step_size: 2
policies:
  - pruner:
      instance_name: p1
    starting_epoch: 0
    ending_epoch: 10
    frequency: 2
  - lr_scheduler: {instance_name: lr}
    epochs: [0, 1, 2]
"""


def test_good_schedule_parses_with_policies_in_order():
    s = config.loads(GOOD, "g.yaml")
    assert [p.kind for p in s.policies] == ["pruner", "lr_scheduler"]
    assert s.policies[0].firing_epochs() == [0, 2, 4, 6, 8]      # ending_epoch is exclusive
    assert s.policies[1].firing_epochs() == [0, 1, 2]
    assert s.components["pruners"]["p1"].args["final_sparsity"] == 0.5


def test_frequency_defaults_to_one():
    s = config.loads(GOOD.replace("    frequency: 2\n", ""), "g.yaml")
    assert s.policies[0].firing_epochs() == list(range(10))


def test_load_reads_a_file(write_yaml):
    path = write_yaml(GOOD)
    assert config.load(path).path == path


def test_unsafe_yaml_tags_are_refused():
    with pytest.raises(ScheduleError, match=r"x\.yaml:1: YAML syntax error: .*python/object"):
        config.loads("!!python/object/apply:os.system ['echo hi']\n", "x.yaml")


BAD = [
    # (what, yaml text, expected message regex)
    ("syntax", "pruners:\n  p: [\n", r"s\.yaml:3: YAML syntax error"),
    ("empty", "", r"s\.yaml: the schedule is empty"),
    ("not a mapping", "- 1\n", r"s\.yaml:1: the schedule must be a mapping"),
    ("unknown top key", "pruner: {}\npolicies: []\n",
     r"s\.yaml:1 pruner: unknown top-level key \(did you mean 'pruners'\?\); valid: version"),
    ("two quantizers", "quantizers:\n  a: {class: DorefaQuantizer}\n  b: {class: DorefaQuantizer}\npolicies: []\n",
     r"s\.yaml:1 quantizers: one quantizer per schedule \(as in Distiller\); found 2: a, b"),
    ("duplicate key", "pruners: {}\npruners: {}\npolicies: []\n", r"s\.yaml:2: YAML syntax error: .*duplicate key 'pruners' \(first on line 1\)"),
    ("missing policies", "pruners: {}\n", r"s\.yaml:1: missing 'policies'"),
    ("policies not a list", "policies: {a: 1}\n", r"s\.yaml:1 policies: 'policies' must be a list"),
    ("unknown class", "pruners:\n  p:\n    class: AutomatedGradualPrunr\n    weights: [a]\npolicies: []\n",
     r"s\.yaml:3 pruners\.p\.class: unknown pruner class 'AutomatedGradualPrunr' \(did you mean 'AutomatedGradualPruner'"),
    ("missing class", "pruners:\n  p:\n    weights: [a]\npolicies: []\n",
     r"s\.yaml:2 pruners\.p: missing 'class'"),
    ("component not mapping", "pruners:\n  p: 3\npolicies: []\n",
     r"s\.yaml:2 pruners\.p: a component must be a mapping"),
    ("undefined instance", "pruners:\n  fine: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: fin}\n    epochs: [0]\n",
     r"s\.yaml:4 policies\[0\]\.pruner\.instance_name: 'fin' is not defined in 'pruners' \(did you mean 'fine'\?\); defined: fine"),
    ("two kinds", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\nregularizers: {}\npolicies:\n  - pruner: {instance_name: p}\n    regularizer: {instance_name: p}\n    epochs: [0]\n",
     r"s\.yaml:5 policies\[0\]: a policy names 2 components"),
    ("no kind", "policies:\n  - epochs: [0]\n", r"s\.yaml:2 policies\[0\]: a policy names no component"),
    ("unknown policy key", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    epoch: [0]\n",
     r"s\.yaml:5 policies\[0\]\.epoch: unknown policy key \(did you mean 'epochs'\?\)"),
    ("end before start", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    starting_epoch: 5\n    ending_epoch: 5\n",
     r"s\.yaml:6 policies\[0\]\.ending_epoch: ending_epoch \(5\) must be greater than starting_epoch \(5\); ending_epoch is exclusive"),
    ("frequency < 1", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    starting_epoch: 0\n    ending_epoch: 5\n    frequency: 0\n",
     r"s\.yaml:7 policies\[0\]\.frequency: must be >= 1; got 0"),
    ("negative epoch", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    starting_epoch: -1\n    ending_epoch: 5\n",
     r"s\.yaml:5 policies\[0\]\.starting_epoch: must be >= 0; got -1"),
    ("non-int epoch", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    starting_epoch: one\n    ending_epoch: 5\n",
     r"s\.yaml:5 policies\[0\]\.starting_epoch: must be an integer epoch; got 'one'"),
    ("missing range", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    starting_epoch: 0\n",
     r"s\.yaml:4 policies\[0\]: missing ending_epoch"),
    ("both forms", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    epochs: [1]\n    starting_epoch: 0\n",
     r"s\.yaml:5 policies\[0\]\.epochs: give either 'epochs' or starting_epoch"),
    ("unsorted epochs", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    epochs: [3, 1]\n",
     r"s\.yaml:5 policies\[0\]\.epochs: epochs must be strictly increasing"),
    ("bad epoch item", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner: {instance_name: p}\n    epochs:\n      - 1\n      - x\n",
     r"s\.yaml:7 policies\[0\]\.epochs\[1\]: epochs must be integers >= 0; item 1 is 'x'"),
    ("unknown policy arg", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner:\n      instance_name: p\n      args:\n        keep_mask: true\n        mask_on_forward: true\n    epochs: [0]\n",
     r"s\.yaml:8 policies\[0\]\.pruner\.args\.mask_on_forward: unknown pruner policy arg \(did you mean 'mask_on_forward_only'\?\)"),
    ("bad arg type", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner:\n      instance_name: p\n      args: {mini_batch_pruning_frequency: 1.5}\n    epochs: [0]\n",
     r"s\.yaml:6 policies\[0\]\.pruner\.args\.mini_batch_pruning_frequency: must be int; got 1\.5"),
    ("mask_gradients alone", "pruners:\n  p: {class: LevelPruner, levels: {'*': 0.1}}\npolicies:\n  - pruner:\n      instance_name: p\n      args: {mask_gradients: true}\n    epochs: [0]\n",
     r"s\.yaml:6 policies\[0\]\.pruner\.args\.mask_gradients: mask_gradients needs mask_on_forward_only"),
    ("lr policy args", "lr_schedulers:\n  lr: {class: StepLR, step_size: 1}\npolicies:\n  - lr_scheduler: {instance_name: lr, args: {keep_mask: true}}\n    epochs: [0]\n",
     r"s\.yaml:4 policies\[0\]\.lr_scheduler\.args\.keep_mask: unknown lr_scheduler policy arg; valid: none"),
]


@pytest.mark.parametrize("what,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_schedules_give_one_located_message(what, text, expected):
    with pytest.raises(ScheduleError) as info:
        config.loads(text, "s.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert re.search(expected, message), message


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ScheduleError, match=r"nope\.yaml: schedule file not found"):
        config.load(tmp_path / "nope.yaml")


def test_schedule_larger_than_the_bound_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("policies: []\n" + "#" * config.MAX_FILE_BYTES + "\n")
    with pytest.raises(ScheduleError, match=r"big\.yaml: the schedule is larger than 1000000 characters"):
        config.load(path)


def test_error_line_is_bounded_however_long_the_value():
    text = "policies:\n  - pruner: {instance_name: p}\n    epochs: '" + "x" * 100_000 + "'\n"
    with pytest.raises(ScheduleError) as info:
        config.loads(text.replace("pruner: {instance_name: p}", "extension: {instance_name: e}")
                     .replace("policies:", "extensions: {e: {class: FilterRemover}}\npolicies:"), "s.yaml")
    message = str(info.value)
    assert "\n" not in message and len(message) < config.MAX_MESSAGE + 100


def test_non_finite_numbers_refused_in_a_dict_schedule_even_with_a_cycle():
    sched = {"pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05,
                               "final_sparsity": float("inf"), "weights": ["w"]}},
             "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}
    sched["pruners"]["p"]["self"] = sched      # a mapping built in Python may contain itself
    with pytest.raises(ScheduleError, match=r"pruners\.p\.final_sparsity: must be a finite number; got inf"):
        config.from_dict(sched)


def test_alias_expansion_is_counted_not_the_text():
    # 4 levels of 10 aliases: 10**4 leaves expanded from a few hundred bytes: under the bound
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 4)]
    with pytest.raises(ScheduleError, match="unknown top-level key"):   # parsed, then validated
        config.loads("\n".join(lines) + "\npolicies: []\n")
    lines.append(f"a5: [{', '.join(['*a3'] * 10)}]")                    # 10**5 leaves: over it
    with pytest.raises(ScheduleError, match="expands to more than 100000 nodes"):
        config.loads("\n".join(lines) + "\npolicies: []\n")


def test_merge_key_may_override_a_merged_key_but_a_key_twice_is_a_duplicate():
    text = textwrap.dedent("""\
        pruners:
          base: &base {class: AutomatedGradualPruner, initial_sparsity: 0.05, final_sparsity: 0.5,
                       weights: [conv1.weight]}
          deeper:
            <<: *base
            final_sparsity: 0.8
        policies:
          - pruner: {instance_name: deeper}
            epochs: [0]
        """)
    parsed = config.loads(text, "s.yaml")
    deeper = parsed.components["pruners"]["deeper"]
    assert deeper.args["final_sparsity"] == 0.8 and deeper.args["initial_sparsity"] == 0.05
    assert config.line_of(deeper.raw, "final_sparsity") == 6     # the override's own line
    twice = text.replace("final_sparsity: 0.8", "final_sparsity: 0.8\n    final_sparsity: 0.9")
    with pytest.raises(ScheduleError, match=r"s\.yaml:7: .*duplicate key 'final_sparsity' \(first on line 6\)"):
        config.loads(twice, "s.yaml")


@pytest.mark.parametrize("text,expected", [
    ("pruners:\n  p: {class: AutomatedGradualPruner, initial_sparsity: 0.1, final_sparsity: 0.5,\n"
     "      weights: [fc1.weight, 're:fc(']}\npolicies: []\n",
     r"s\.yaml:3 pruners\.p\.weights\[1\]: invalid regular expression 're:fc\(': missing \)"),
    ("pruners:\n  p: {class: LevelPruner, levels: {'re:[': 0.5}}\npolicies: []\n",
     r"s\.yaml:2 pruners\.p\.levels\.re:\[: invalid regular expression 're:\[': unterminated"),
    ("pruners:\n  p: {class: AutomatedGradualPruner, initial_sparsity: 0.1, final_sparsity: 0.5,\n"
     "      weights: [fc1.weight]}\npolicies:\n  - pruner:\n      instance_name: p\n"
     "      args: {levels: {'re:+x': 0.5}}\n    epochs: [0]\n",
     r"s\.yaml:7 policies\[0\]\.pruner\.args\.levels\.re:\+x: invalid regular expression"),
])
def test_an_invalid_regex_is_a_located_error_at_load(text, expected):
    with pytest.raises(ScheduleError) as info:
        config.loads(text, "s.yaml")
    assert "\n" not in str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)


def test_valid_regexes_still_load():
    text = ("pruners:\n  p: {class: LevelPruner, levels: {'re:fc\\d\\.weight': 0.5}}\n"
            "policies:\n  - pruner: {instance_name: p}\n    epochs: [0]\n")
    assert config.loads(text, "s.yaml").components["pruners"]["p"].args["levels"] == {r"re:fc\d\.weight": 0.5}


@pytest.mark.parametrize("key,what", [("[a, b]", "list"), ("{a: 1}", "mapping")])
def test_a_collection_as_a_mapping_key_is_a_located_error(key, what):
    with pytest.raises(ScheduleError, match=rf"s\.yaml:3: .*a {what} cannot be a mapping key"):
        config.loads(f"policies: []\npruners:\n  ? {key}\n  : 1\n", "s.yaml")
