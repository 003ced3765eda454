"""The typed thinning recipe: ``to_dict``/``from_dict`` give and read exactly the plain-data layout
checkpoints hold; recipes written by today's code equal, key order included, the ones the code
before the typed recipe wrote for the same thinning (``fixtures/recipes_before_typing.json``,
never regenerated); malformed recipes are refused with one line; the record of a model's recipes
lives in ``compressor.thinning`` (``recipes_of``) and ``model.thinning_recipes`` is a read-only
view of it."""
import json
import pathlib

import torch
from torch import nn

from compressor.models import create_model
from compressor.thinning import thin

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
