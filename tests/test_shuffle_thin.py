"""ShuffleNet-V2's unit thinned with any channels removed (``graph.shuffle``, ``thinning.shuffle``).

Inside torchvision's ``InvertedResidual`` (known by its qualified name; here a hand-built unit
written as torchvision writes it and named so) the channel shuffle is followed as a permutation
and ``chunk(2)`` as two ranges with no balance; thinning makes the unit its thin subclass, which
splits at stored sizes and applies the shuffle as a stored index. Checked in float64 with the
bound of ``helpers.exact``: random removal sets (halves of unequal sizes), thinning twice,
``replay`` and a checkpoint into a freshly built dense model, the structured pruner at 30 %, and
torchvision's ShuffleNet-V2 where torchvision imports.
"""
import warnings

import pytest
import torch
from torch import nn

import compressor
from compressor.errors import ThinningError
from compressor.graph import analyze_graph
from compressor.thinning import analyze, contract_model, recipes_of, replay
from compressor.thinning.recipe import Recipe, RecipeError
from compressor.thinning.shuffle import set_shuffle
from helpers import assert_same_function
from helpers.thinning import n_params, randomize_bn, zero_structures

pytestmark = pytest.mark.usefixtures("one_thread", "float64")

SHAPE = (3, 16, 16)


# ---- torchvision's ShuffleNet-V2 unit, written as torchvision writes it -------------------------

def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


def depthwise_conv(i, o, kernel_size, stride=1, padding=0, bias=False):
    return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                depthwise_conv(inp, inp, kernel_size=3, stride=self.stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if (self.stride > 1) else branch_features, branch_features,
                      kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            depthwise_conv(branch_features, branch_features, kernel_size=3, stride=self.stride,
                           padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0,
                      bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        out = channel_shuffle(out, 2)
        return out


# the graph knows the unit by torchvision's qualified name (it imports no torchvision)
InvertedResidual.__module__ = "torchvision.models.shufflenetv2"
InvertedResidual.__qualname__ = "InvertedResidual"


class ShuffleNetTV(nn.Module):
    """conv1, two stages (a stride-2 unit, then stride-1 units), conv5, pooling, classifier."""

    def __init__(self, c0=8, widths=(16, 32), repeats=(3, 2), classes=5):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0),
                                   nn.ReLU(inplace=True))
        stages, inp = [], c0
        for w, r in zip(widths, repeats):
            stages.append(nn.Sequential(InvertedResidual(inp, w, 2),
                                        *[InvertedResidual(w, w, 1) for _ in range(r - 1)]))
            inp = w
        self.stage2, self.stage3 = stages
        self.conv5 = nn.Sequential(nn.Conv2d(inp, 24, 1, 1, 0, bias=False), nn.BatchNorm2d(24),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.conv5(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


def build(seed=0):
    torch.manual_seed(seed)
    model = ShuffleNetTV().eval()
    randomize_bn(model, seed)
    return model


def units(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, InvertedResidual)}


def thin_and_compare(model, x, **kw):
    with torch.no_grad():
        ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "keeping channel 0" notes
        result = contract_model(model, SHAPE, **kw)
    with torch.no_grad():
        assert_same_function(model(x), ref)
    return result


# ---- the analysis -------------------------------------------------------------------------------

def test_the_shuffle_is_a_permutation_inside_the_unit():
    """No class spans channel k of both halves, no chunk must stay balanced, and every layer but
    the classifier is thinnable."""
    model = build()
    g = analyze_graph(model, SHAPE)
    assert not g.balanced
    assert set(g.shuffles) == set(units(model))
    half = 8
    rec = g.shuffles["stage2.0"]
    assert rec.parts is None and rec.perm[:4] == [0, half, 1, half + 1]
    assert [len(p) for p in g.shuffles["stage2.1"].parts] == [half, half]
    b1 = next(p for p in g.producers if p.module == "stage2.0.branch1.2")
    b2 = next(p for p in g.producers if p.module == "stage2.0.branch2.5")
    assert not set(g.roots(b1.ids)) & set(g.roots(b2.ids))
    # every class of a stage's stream holds one filter of the layer that made the channel
    owners = {}
    for p in g.producers:
        if "branch1.0" in p.module or "branch2.3" in p.module:
            continue   # depthwise: they continue their input's classes
        for r in g.roots(p.ids):
            owners.setdefault(r, []).append(p.module)
    assert all(len(v) == 1 for v in owners.values())
    assert list(analyze(model, SHAPE).blocked) == ["fc"]


def test_a_unit_of_another_class_keeps_todays_rules():
    """The same forward in a class of another name: shuffle columns coupled, chunk balanced."""
    class OtherUnit(InvertedResidual):
        pass

    OtherUnit.__module__, OtherUnit.__qualname__ = __name__, "OtherUnit"
    model = build()
    model.stage2[1].__class__ = OtherUnit
    g = analyze_graph(model, SHAPE)
    assert "stage2.1" not in g.shuffles and len(g.balanced) == 1


# ---- exactness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["filters", "channels"])
def test_random_removals_thin_exactly(seed, mode):
    model = build(seed)
    x = torch.randn(2, *SHAPE)
    zero_structures(model, SHAPE, frac=0.4, seed=seed, mode=mode)
    before = n_params(model)
    result = thin_and_compare(model, x)
    assert result.changed and n_params(model) < before
    shuffles = result.recipe["shuffles"]
    assert result.recipe["version"] == 3
    for name, mod in units(model).items():
        if name in shuffles:
            assert type(mod).__name__ == "ThinInvertedResidual"
            assert mod.split_sizes == (tuple(shuffles[name]["split"])
                                       if "split" in shuffles[name] else None)
            assert mod.shuffle_index.tolist() == shuffles[name]["index"]


def test_halves_of_unequal_sizes_and_the_stream_thin():
    """Across draws: a unit splits into unequal halves, and the last convolution of every
    stride-1 unit (the stream's own channels) loses channels."""
    splits, lost = [], set()
    for seed in range(6):
        model = build(seed)
        x = torch.randn(2, *SHAPE)
        zero_structures(model, SHAPE, frac=0.4, seed=seed)
        result = thin_and_compare(model, x)
        splits += [tuple(s["split"]) for s in result.recipe["shuffles"].values() if "split" in s]
        lost |= set(result.removed)
    assert any(a != b for a, b in splits)
    assert {"stage2.1.branch2.5", "stage2.2.branch2.5", "stage3.1.branch2.5",
            "stage2.0.branch1.2", "stage3.0.branch1.2"} <= lost


def test_a_half_may_lose_every_channel():
    """The first half of a stride-1 unit passes on untouched: all of it may go (an empty part)."""
    model = build(3)
    x = torch.randn(2, *SHAPE)
    g = analyze_graph(model, SHAPE)
    first = set(g.roots(g.shuffles["stage2.2"].parts[0]))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in g.producers:
            for i, r in enumerate(g.roots(p.ids)):
                if r in first:
                    params[p.weight].select(p.out_dim, i).zero_()
        for f in g.followers:
            for i, r in enumerate(g.roots(f.ids)):
                if r in first:
                    for t in f.tensors:
                        if t in params:
                            params[t][i] = 0
    result = thin_and_compare(model, x)
    assert result.recipe["shuffles"]["stage2.2"]["split"][0] == 0


def test_thinning_twice_and_the_analysis_of_a_thinned_model():
    model = build(1)
    x = torch.randn(2, *SHAPE)
    zero_structures(model, SHAPE, frac=0.3, seed=1)
    thin_and_compare(model, x)
    g = analyze_graph(model, SHAPE)   # the thin units' forward: split_at / permute_channels
    assert set(g.shuffles) == set(units(model)) and not g.balanced
    assert all(r.bad is None and r.perm is not None for r in g.shuffles.values())
    assert list(analyze(model, SHAPE).blocked) == ["fc"]
    zero_structures(model, SHAPE, frac=0.3, seed=11)
    before = n_params(model)
    thin_and_compare(model, x)
    assert n_params(model) < before
    assert len(recipes_of(model)) == 2


# ---- recipes and checkpoints --------------------------------------------------------------------

def test_replay_and_checkpoint_rebuild_the_thin_units(tmp_path):
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    model = build(2)
    x = torch.randn(2, *SHAPE)
    dense_keys = list(model.state_dict())
    zero_structures(model, SHAPE, frac=0.4, seed=2)
    thin_and_compare(model, x)
    zero_structures(model, SHAPE, frac=0.3, seed=12)
    thin_and_compare(model, x)
    assert list(model.state_dict()) == dense_keys   # the index is not a state_dict entry
    with torch.no_grad():
        out = model(x)

    fresh = build(5)
    replay(fresh, [r.to_dict() for r in recipes_of(model)])
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_same_function(fresh(x), out)

    path = save_checkpoint(str(tmp_path / "shuffle.pth.tar"), model)
    loaded, _, _, _ = load_checkpoint(build(7), path)
    for name, mod in units(loaded).items():
        ref = dict(model.named_modules())[name]
        assert type(mod) is type(ref)
        assert getattr(mod, "split_sizes", None) == getattr(ref, "split_sizes", None)
    with torch.no_grad():
        assert_same_function(loaded(x), out)


def test_a_shuffle_entry_must_name_a_unit():
    model = build()
    recipe = {"version": 3, "modules": {}, "tensors": {},
              "shuffles": {"conv5.0": {"index": [1, 0]}}}
    with pytest.raises(ThinningError, match=r"module 'conv5.0' \(Conv2d\) is not a shuffle unit"):
        replay(model, [recipe])
    recipe["shuffles"] = {"stage2.1": {"index": list(range(16))}}
    with pytest.raises(ThinningError, match="the shuffle of 'stage2.1' must have two split sizes"):
        replay(model, [recipe])
    assert type(model.stage2[1]) is InvertedResidual   # nothing changed


@pytest.mark.parametrize("entry", [{"index": [0, 0, 1]}, {"index": [0, 1], "split": [1, -1]},
                                   {"index": [1, 0], "other": 1}, [0, 1]])
def test_a_malformed_shuffle_entry_is_refused(entry):
    with pytest.raises(RecipeError, match="bad shuffle for 'stage2.0' \\(expected 'index', a "
                                          "permutation of 0..n-1"):
        Recipe.from_dict({"version": 3, "modules": {}, "tensors": {},
                          "shuffles": {"stage2.0": entry}})


def test_set_shuffle_keeps_parameters_and_names():
    model = build()
    unit = model.stage2[1]
    params = list(unit.parameters())
    set_shuffle(unit, [8, 8], list(range(16)))   # the identity: equals a plain concatenation
    assert list(unit.parameters()) == params
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        x1, x2 = x.chunk(2, dim=1)
        assert_same_function(unit(x), torch.cat((x1, unit.branch2(x2)), 1))


# ---- the structured pruner ----------------------------------------------------------------------

def schedule(weights, fraction):
    return {"version": 1, "input_shape": list(SHAPE),
            "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": fraction, "weights": weights}},
            "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_pruner_takes_its_share_of_every_layer(seed):
    """With the shuffle a permutation, each class of a stream is one filter of the layer that made
    it (plus the next stage's depthwise filter reading it): every dense layer loses its 30 %
    (floor), every zeroed filter is thinned, and the function is kept."""
    model = build(seed)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    sched = compressor.dict_config(model, None, schedule([f"{n}.weight" for n in convs], 0.3))
    sched.on_epoch_begin(0)
    mods = dict(model.named_modules())
    before = {n: mods[n].out_channels for n in convs}
    x = torch.randn(2, *SHAPE)
    thin_and_compare(model, x, store=sched)
    for n in convs:
        m = mods[n]
        assert int((m.weight.detach().flatten(1).abs().sum(1) == 0).sum()) == 0
        if m.groups == 1:
            assert before[n] - m.out_channels == int(0.3 * before[n]), n
        else:
            assert m.out_channels < before[n], n


# ---- torchvision ----------------------------------------------------------------------------------

def test_torchvision_shufflenet_v2_thins_every_layer_exactly():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.shufflenet_v2_x0_5(num_classes=10).eval()
    randomize_bn(model)
    shape = (3, 64, 64)
    report = analyze(model, shape)
    assert list(report.blocked) == ["fc"]
    zero_structures(model, shape, frac=0.3, seed=0)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = contract_model(model, shape)
    with torch.no_grad():
        assert_same_function(model(x), ref)
    assert len(result.recipe["shuffles"]) == 16
    assert all(type(m).__name__ == "ThinInvertedResidual" for m in model.modules()
               if type(m).__name__.endswith("InvertedResidual"))
