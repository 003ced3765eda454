"""The typed thinning recipe: ``to_dict``/``from_dict`` give and read exactly the plain-data layout
checkpoints hold; recipes written by today's code equal, key order included, the ones the code
before the typed recipe wrote for the same thinning (``fixtures/recipes_before_typing.json``,
never regenerated); malformed recipes are refused with one line; the record of a model's recipes
lives in ``compressor.thinning`` (``recipes_of``) and ``model.thinning_recipes`` is a read-only
view of it."""
import copy
import io
import json
import pathlib

import pytest
import torch
from torch import nn

from compressor.checkpoint import load_checkpoint, save_checkpoint
from compressor.checkpoint_distiller import to_recipes
from compressor.errors import ThinningError
from compressor.models import create_model
from compressor.thinning import Recipe, RecipeError, recipes_of, replay, thin
from compressor.thinning.recipe import SliceOp

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "recipes_before_typing.json"
SHAPE = (3, 32, 32)


@torch.no_grad()
def _zero_filters(model, name, rows):
    model.get_submodule(name).weight[rows] = 0


@torch.no_grad()
def _zero_inputs(model, name, cols):
    model.get_submodule(name).weight[:, cols] = 0


@torch.no_grad()
def _zero_bn(model, name, channels):
    bn = model.get_submodule(name)
    bn.weight[channels] = 0
    bn.bias[channels] = 0


def resnet_two_passes():
    """resnet20: inner filters and input channels zeroed, contracted; then more, contracted again."""
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    _zero_filters(model, "layer1.0.conv1", [0, 3, 7])
    _zero_filters(model, "layer2.1.conv1", [2, 4])
    _zero_inputs(model, "layer3.0.conv2", [1, 2])
    thin(model, "contract_model", SHAPE)
    _zero_filters(model, "layer1.1.conv1", [5, 6])
    thin(model, "remove_filters", SHAPE)
    return model


def preact_selecting():
    """preact_resnet20: batch-norm channels zeroed on the residual stream: a version-2 recipe."""
    torch.manual_seed(0)
    model = create_model("preact_resnet20_cifar").eval()
    _zero_bn(model, "layer1.0.pre_bn", [0, 3, 5])
    _zero_bn(model, "layer2.1.pre_bn", [1, 30])
    thin(model, "contract_model", SHAPE)
    return model


def grouped_and_depthwise():
    """A plain conv feeding a grouped and a depthwise conv: grouped ops, balanced groups."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 3))
    _zero_filters(model, "0", [1, 2, 5])
    thin(model, "remove_filters", (4, 12, 12))
    _zero_filters(model, "3", [0, 4])
    _zero_filters(model, "5", [0, 1, 8, 9])
    thin(model, "contract_model", (4, 12, 12))
    return model


SETUPS = {"resnet_two_passes": resnet_two_passes, "preact_selecting": preact_selecting,
          "grouped_and_depthwise": grouped_and_depthwise}


def test_recipes_equal_the_ones_written_before_the_recipe_was_typed():
    before = json.loads(FIXTURE.read_text())
    for name, make in SETUPS.items():
        now = [r.to_dict() for r in recipes_of(make())]
        # same content and the same key order: json of both is the same text
        assert json.dumps(now) == json.dumps(before[name]), name


def test_plain_data_round_trips_exactly():
    for recipes in json.loads(FIXTURE.read_text()).values():
        for data in recipes:
            recipe = Recipe.from_dict(data)
            assert json.dumps(recipe.to_dict()) == json.dumps(data)
            assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_typed_parts_say_what_the_keys_said():
    data = json.loads(FIXTURE.read_text())["grouped_and_depthwise"][0]
    recipe = Recipe.from_dict(data)
    grouped = recipe.tensors["3.weight"].ops[0]
    assert isinstance(grouped, SliceOp) and (grouped.dim, grouped.groups) == (1, 2)
    assert recipe.tensors["0.weight"].ops[0].groups is None
    assert recipe.modules["0"].attrs == {"out_channels": 6} and recipe.selections is None
    sel = Recipe.from_dict(json.loads(FIXTURE.read_text())["preact_selecting"][0])
    assert sel.version == 2 and sel.selections["layer1.0.pre_bn"].in_channels == 16


def test_the_recipe_in_a_checkpoint_is_plain_data(tmp_path):
    model = preact_selecting()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model)
    raw = torch.load(path, weights_only=True)   # nothing but plain data and tensors
    assert raw["thinning_recipes"] == [r.to_dict() for r in recipes_of(model)]
    assert json.dumps(raw["thinning_recipes"]) == \
        json.dumps(json.loads(FIXTURE.read_text())["preact_selecting"])


MALFORMED = [
    ([], r"not a thinning recipe \(expected a dict with 'tensors' and 'modules'\); got list"),
    ({"tensors": {}}, r"not a thinning recipe"),
    ({"version": 4, "tensors": {}, "modules": {}}, r"recipe version 4 is not one this library knows"),
    ({"version": True, "tensors": {}, "modules": {}}, r"recipe version True"),
    ({"tensors": {}, "modules": {}, "evil": 1}, r"unknown recipe entries evil; valid: version"),
    ({"kind": 5, "tensors": {}, "modules": {}}, r"'kind' must be a thinning function name"),
    ({"tensors": {}, "modules": {"conv": {"out_channels": "8"}}},
     r"module 'conv' must map attribute names to integers"),
    ({"tensors": {"w": {"shape": [4, "x"], "ops": []}}, "modules": {}},
     r"tensor 'w' must have 'shape' \(a list of sizes\) and 'ops'"),
    ({"tensors": {"w": {"shape": [4], "ops": [{"dim": -1, "index": [0]}]}}, "modules": {}},
     r"recipe op on 'w' \(.*\) has a bad dim -1"),
    ({"tensors": {"w": {"shape": [4], "ops": [{"dim": 0, "index": [0.5]}]}}, "modules": {}},
     r"recipe op on 'w' \(.*\): 'index' must be a list of non-negative integers"),
    ({"tensors": {"w": {"shape": [4, 4], "ops": [{"dim": 1, "groups": 2, "index": [[0]]}]}},
      "modules": {}}, r"recipe op on 'w' \(.*\): bad grouped selection"),
    ({"tensors": {}, "modules": {}, "selections": {"bn": {"in_channels": 4, "index": [4]}}},
     r"bad channel selection for 'bn'"),
    ({"tensors": {1: {"shape": [4], "ops": []}}, "modules": {}}, r"names must be strings, got 1"),
]


def test_malformed_recipes_are_refused_in_one_line():
    for data, pattern in MALFORMED:
        with pytest.raises(RecipeError, match=pattern) as e:
            Recipe.from_dict(data, "ckpt.pth.tar: thinning recipe 1")
        assert "\n" not in str(e.value) and str(e.value).count("ckpt.pth.tar") == 1


def test_a_hostile_checkpoint_recipe_fails_loading_before_any_change(tmp_path):
    model = create_model("resnet20_cifar")
    bad = {"version": 1, "tensors": {"conv1.weight": {"shape": [16, 3, 3, 3], "ops": [
        {"dim": 0, "index": "__import__('os')"}]}}, "modules": {}}
    path = str(tmp_path / "bad.pth.tar")
    torch.save({"state_dict": model.state_dict(), "thinning_recipes": [bad]}, path)
    with pytest.raises(ThinningError, match=r"recipe op on 'conv1.weight' .*'index' must be"):
        load_checkpoint(model, path)
    assert model.conv1.out_channels == 16 and not recipes_of(model)


def test_the_record_lives_in_thinning_and_the_model_shows_a_plain_data_mirror(tmp_path):
    model = resnet_two_passes()
    recipes = recipes_of(model)
    assert isinstance(recipes, tuple) and [type(r) for r in recipes] == [Recipe, Recipe]
    mirror = model.thinning_recipes   # what Distiller-era code read
    assert mirror == [r.to_dict() for r in recipes] and mirror[0]["kind"] == "contract_model"
    mirror[0]["kind"] = "changed"     # never read back: the record and checkpoints keep the truth
    model.thinning_recipes.append({"junk": 1})
    assert recipes_of(model)[0].kind == "contract_model" and len(recipes_of(model)) == 2
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model)
    assert torch.load(path, weights_only=True)["thinning_recipes"] == \
        [r.to_dict() for r in recipes]
    buffer = io.BytesIO()   # the mirror is plain data: it saves and loads with weights_only
    torch.save({"recipes": model.thinning_recipes}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["recipes"] == model.thinning_recipes
    assert recipes_of(nn.Linear(2, 2)) == () and not hasattr(nn.Linear(2, 2), "thinning_recipes")


def test_a_copy_of_a_thinned_model_keeps_its_own_record():
    model = grouped_and_depthwise()
    twin = copy.deepcopy(model)
    assert [r.to_dict() for r in recipes_of(twin)] == [r.to_dict() for r in recipes_of(model)]
    _zero_filters(twin, "0", [0, 3])   # one per group of the grouped conv after it
    thin(twin, "remove_filters", (4, 12, 12))
    assert (len(recipes_of(twin)), len(recipes_of(model))) == (3, 2)


def test_replay_takes_typed_recipes_and_plain_data_alike():
    source = resnet_two_passes()
    typed, plain = create_model("resnet20_cifar"), create_model("resnet20_cifar")
    replay(typed, recipes_of(source))
    replay(plain, source.thinning_recipes)
    assert recipes_of(typed) == recipes_of(plain) == recipes_of(source)
    assert typed.layer1[0].conv1.out_channels == source.layer1[0].conv1.out_channels == 13


def test_distiller_recipes_map_to_typed_recipes_without_a_kind():
    model = create_model("resnet20_cifar")
    keep = [i for i in range(16) if i not in (2, 9)]
    distiller = {"format": "distiller",
                 "modules": {"layer1.0.conv1": {"out_channels": 14},
                             "layer1.0.conv2": {"in_channels": 14},
                             "layer1.0.bn1": {"num_features": 14,
                                              "running_mean": {"dim": 0, "index": keep},
                                              "running_var": {"dim": 0, "index": keep}}},
                 "parameters": {"layer1.0.conv1.weight": [{"dim": 0, "index": keep}],
                                "layer1.0.bn1.weight": [{"dim": 0, "index": keep}],
                                "layer1.0.bn1.bias": [{"dim": 0, "index": keep}],
                                "layer1.0.conv2.weight": [{"dim": 1, "index": keep}]}}
    (recipe,) = to_recipes(model, [distiller], "d.pth")
    assert isinstance(recipe, Recipe) and recipe.kind is None
    assert list(recipe.to_dict()) == ["version", "modules", "tensors"]
    replay(model, [recipe])
    assert model.layer1[0].conv1.out_channels == 14 and len(recipes_of(model)) == 1
