"""Pruner side of reach (issue 12): filters that feed or are a grouped convolution are pruned in
equal numbers per group (so thinning removes every one of them, exactly), the ``weights: thinnable``
selector takes the dry run's thinnable layers, and a schedule that thins refuses, when built, a
filter pruner that lists a layer thinning would refuse."""
import os

import pytest
import torch
from torch import nn

import compressor
from compressor.errors import ScheduleError
from compressor.graph import analyze_graph
from compressor.graph.grouping import balanced_cells
from compressor.thinning import analyze, contract_model
from compressor_apps.compress_classifier import main

from helpers import assert_same_function
from helpers.thinning import randomize_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ResNeXtBlock(nn.Module):
    """A ResNeXt bottleneck as torchvision writes it: 1x1, grouped 3x3, 1x1, projection shortcut."""

    def __init__(self, width=16, groups=4, out=24):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.down = nn.Conv2d(8, out, 1, bias=False)
        self.bnd = nn.BatchNorm2d(out)
        self.fc = nn.Linear(out, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y)) + self.bnd(self.down(x))
        return self.fc(torch.relu(y).mean((2, 3)))


class Blocked(nn.Module):
    """conv2's channels go through cumsum (mixes channels: blocked); fc is the classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.conv2(x).cumsum(1)
        x = torch.relu(self.conv3(x))
        return self.fc(torch.relu(self.fc1(x.mean((2, 3)))))


def schedule(weights, group_type="Filters", sparsity=0.4, thin=False, **pruner):
    d = {"version": 1, "input_shape": [3, 8, 8],
         "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": group_type,
                           "desired_sparsity": sparsity, "weights": weights, **pruner}},
         "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}
    if thin:
        d["extensions"] = {"t": {"class": "FilterRemover", "thinning_func_str": "contract_model"}}
        d["policies"].append({"extension": {"instance_name": "t"}, "epochs": [1]})
    return d


def zero_filters(w):
    return (w.detach().flatten(1).abs().sum(1) == 0).nonzero().flatten().tolist()


# -- grouped convolutions -----------------------------------------------------------------------
def test_the_graph_gives_the_groups_of_filters_that_feed_or_are_a_grouped_conv():
    g = analyze_graph(ResNeXtBlock(), (3, 8, 8))
    cells = balanced_cells(g)
    assert set(cells) == {"conv1.weight", "conv2.weight"}   # feeds / is the grouped conv
    for w in cells.values():
        assert w == [i // 4 for i in range(16)]


def test_grouped_ranking_prunes_equal_counts_per_group_and_thins_exactly(float64):
    torch.manual_seed(0)
    m = ResNeXtBlock().eval()
    randomize_bn(m)
    with torch.no_grad():   # group 0 of both layers has the smallest filters: a layer-wide
        for conv in (m.conv1, m.conv2):   # ranking would take all 4 of group 0 and 2 of group 1
            conv.weight[:4] *= 1e-3
    convs = ["conv1.weight", "conv2.weight", "conv3.weight", "down.weight"]
    sched = compressor.dict_config(m, None, schedule(convs, sparsity=0.4))
    sched.on_epoch_begin(0)
    for name in ("conv1.weight", "conv2.weight"):
        zero = zero_filters(dict(m.named_parameters())[name])
        # count rule per group: floor(0.4 * 4) = 1 of each group of 4 (4 in all, not floor(6.4))
        assert [sum(1 for f in zero if f // 4 == g) for g in range(4)] == [1, 1, 1, 1], name
    zeroed = {n: len(zero_filters(p)) for n, p in m.named_parameters() if p.dim() == 4}
    widths = {n: p.shape[0] for n, p in m.named_parameters() if p.dim() == 4}
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
    contract_model(m, (3, 8, 8))
    with torch.no_grad():
        assert_same_function(m(x), ref)
    after = {n: p.shape[0] for n, p in m.named_parameters() if p.dim() == 4}
    for n in ("conv1.weight", "conv2.weight", "conv3.weight", "down.weight"):
        assert after[n] == widths[n] - zeroed[n], n   # every pruned filter was removed
    assert m.conv2.groups == 4 and m.conv2.weight.shape == (12, 3, 3, 3)


def test_explicit_dependencies_keep_their_written_ranking():
    """group_dependency: Independent ranks each listed weight as written (no group cells)."""
    m = ResNeXtBlock().eval()
    with torch.no_grad():
        m.conv2.weight[:4] *= 1e-3
    sched = compressor.dict_config(m, None, schedule(["conv2.weight"], sparsity=0.25,
                                                     group_dependency="Independent"))
    sched.on_epoch_begin(0)
    assert zero_filters(m.conv2.weight) == [0, 1, 2, 3]


# -- the thinnable selector ---------------------------------------------------------------------
@pytest.mark.parametrize("weights,group_type,expected", [
    ("thinnable", "Filters", ["conv1.weight", "conv3.weight"]),
    (["thinnable"], "3D", ["conv1.weight", "conv3.weight"]),
    ("thinnable", "Cols", ["fc1.weight"]),                      # never the classifier fc
    (["thinnable:conv3*"], "Filters", ["conv3.weight"]),
    (["conv2.weight", "thinnable"], "Filters", ["conv2.weight", "conv1.weight", "conv3.weight"]),
])
def test_thinnable_selects_the_dry_runs_thinnable_layers(weights, group_type, expected):
    m = Blocked()
    report = analyze(m, (3, 8, 8))
    assert report.thinnable == ["conv1", "conv3", "fc1"] and "conv2" in report.blocked
    assert report.blocked["fc"] == "its channels are part of the model's output"
    sched = compressor.dict_config(m, None, schedule(weights, group_type))
    assert sched.ordered[0].pruner.weights == expected


@pytest.mark.parametrize("weights,group_type,message", [
    ("thinnable", "Channels", r"pruners\.p\.weights: the 'thinnable' selector picks layers by their "
                              r"output channels; use it with group_type Filters \(convolutions\) or "
                              r"Cols \(linear layers\), not 'Channels'"),
    (["thinnable:fc9*"], "Cols", r"pruners\.p\.weights\[0\]: 'thinnable:fc9\*' selects no layer: "
                                 r"the thinning analysis finds no thinnable layer matching 'fc9\*' "
                                 r"for group_type Cols"),
    (["thinnable:"], "Filters", r"weights\[0\]: 'thinnable:' needs a pattern after ':'"),
])
def test_selector_errors_name_the_entry(weights, group_type, message):
    with pytest.raises(ScheduleError, match=message):
        compressor.dict_config(Blocked(), None, schedule(weights, group_type))


def test_a_parameter_spelled_like_a_selector_is_refused_as_ambiguous():
    m = Blocked()
    m.thinnable = nn.Parameter(torch.ones(3, 3, 1, 1))
    with pytest.raises(ScheduleError, match=r"'thinnable' is both a selector and a parameter of "
                                            r"the model; write the parameter as 're:thinnable'"):
        compressor.dict_config(m, None, schedule("thinnable"))


# -- refused when built, not after training -------------------------------------------------------
def test_a_schedule_that_thins_refuses_a_blocked_layer_when_built(write_yaml):
    path = write_yaml("""version: 1
input_shape: [3, 8, 8]
pruners:
  p:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.5
    weights: [conv1.weight,
              conv2.weight]
extensions:
  t:
    class: FilterRemover
    thinning_func_str: remove_filters
policies:
  - pruner: {instance_name: p}
    epochs: [0]
  - extension: {instance_name: t}
    epochs: [1]
""")
    m = Blocked()
    before = {n: p.clone() for n, p in m.state_dict().items()}
    with pytest.raises(ScheduleError) as e:
        compressor.file_config(m, None, path)
    assert str(e.value) == (
        f"{path}:9 pruners.p.weights[1]: 'conv2.weight' cannot be thinned: Tensor.cumsum cannot "
        f"be followed at node 'cumsum' (in the model's forward); this schedule thins (extension "
        f"'t' (remove_filters)), so its pruned filters could not be removed: leave conv2 out of "
        f"weights, or select layers with 'weights: thinnable'")
    assert all(torch.equal(p, before[n]) for n, p in m.state_dict().items())


def test_the_refusal_needs_a_schedule_that_thins():
    compressor.dict_config(Blocked(), None, schedule(["conv2.weight"]))   # no thinning: fine
    with pytest.raises(ScheduleError, match=r"'conv2\.weight' cannot be thinned: .*\(thins=True"):
        compressor.dict_config(Blocked(), None, schedule(["conv2.weight"]), thins=True)
    # the classifier's zero neurons are kept quietly by thinning: not refused
    compressor.dict_config(Blocked(), None, schedule(["fc.weight"], "Cols", thin=True))


# -- through the app ------------------------------------------------------------------------------
@pytest.mark.slow          # trains LeNet-5 for 2 epochs with the app in-process (~10 s)
def test_a_thinnable_schedule_runs_through_the_app(tmp_path, write_yaml):
    path = write_yaml("""version: 1
pruners:
  filters: {class: L1RankedStructureParameterPruner, group_type: Filters, desired_sparsity: 0.5,
            weights: thinnable}
  neurons: {class: L1RankedStructureParameterPruner, group_type: Cols, desired_sparsity: 0.5,
            weights: thinnable}
extensions:
  thinner: {class: FilterRemover, thinning_func_str: remove_filters, dataset: mnist}
policies:
  - pruner: {instance_name: filters}
    epochs: [0]
  - pruner: {instance_name: neurons}
    epochs: [0]
  - extension: {instance_name: thinner}
    epochs: [1]
""")
    out = tmp_path / "runs"
    assert main(["--arch", "lenet5", "--dataset", "digits", "-b", "64", "--etrs", "0.2",
                 "--epochs", "2", "--lr", "0.05", "--no-progress-bar", "--compress", path,
                 "-o", str(out)]) == 0
    (folder,) = [d for d in out.iterdir() if d.is_dir()]
    ckpt = compressor.checkpoint.read_checkpoint(str(folder / "checkpoint.pth.tar"))
    shapes = {n: tuple(t.shape) for n, t in ckpt["state_dict"].items()}
    assert shapes["conv1.weight"][0] == 10 and shapes["conv2.weight"][0] == 25
    assert shapes["fc1.weight"][0] == 250 and shapes["fc2.weight"][0] == 10   # classifier kept
