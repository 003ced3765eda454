"""torchvision's CNN-style patterns thin exactly (issue 12), reproduced without torchvision.

Each test builds a small module written the way torchvision writes the pattern (stochastic depth,
ConvNeXt's layer scale, ViT's class token and position embedding, ShuffleNet's channel shuffle
and chunk, a width stored as a module attribute), zeroes random removable channels, thins it and
checks the thinned network computes the masked network's function (float64, the bound of
``helpers.exact``); where a pattern must be refused, the dry run names the op and what would help.
"""
import warnings

import pytest
import torch
import torch.fx
from torch import nn

from compressor.errors import ThinningError
from compressor.graph import analyze_graph
from compressor.graph.analyzer import Analyzer
from compressor.graph.shapes import propagate_shapes
from compressor.thinning import analyze, contract_model, recipes_of, remove_channels, replay
from compressor.thinning.recipe import Recipe
from helpers import assert_same_function
from helpers.thinning import n_params, randomize_bn, zero_structures

pytestmark = pytest.mark.usefixtures("one_thread", "float64")


# ---- stochastic depth, as torchvision.ops writes it ---------------------------------------------

def stochastic_depth(input, p, mode, training=True):
    """torchvision.ops.stochastic_depth's computation: per sample ("row") or per batch, 0 or
    1/(1-p) in training, the identity in eval."""
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


# torchvision wraps its function for torch.fx (a leaf call_function whose target lives in
# torchvision.ops.stochastic_depth); the graph's tables know it by that qualified name.
stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


def traced_stochastic_depth(input, p, mode, training=True):
    """The same computation, not wrapped: torch.fx traces into it."""
    if not training or p == 0.0:
        return input
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(1.0 - p)
    return input * noise.div_(1.0 - p)


class StochasticDepth(nn.Module):
    def __init__(self, p, mode, wrapped=True):
        super().__init__()
        self.p, self.mode, self.wrapped = p, mode, wrapped

    def forward(self, x):
        f = stochastic_depth if self.wrapped else traced_stochastic_depth
        return f(x, self.p, self.mode, self.training)


StochasticDepth.__module__ = "torchvision.ops.stochastic_depth"


class MBConvLike(nn.Module):
    """EfficientNet's residual block: expand, depthwise, project, stochastic depth, add."""

    def __init__(self, c=8, wrapped=True, mode="row"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU())
        self.block = nn.Sequential(nn.Conv2d(c, 4 * c, 1), nn.BatchNorm2d(4 * c), nn.SiLU(),
                                   nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c),
                                   nn.BatchNorm2d(4 * c), nn.SiLU(),
                                   nn.Conv2d(4 * c, c, 1), nn.BatchNorm2d(c))
        self.stochastic_depth = StochasticDepth(0.2, mode, wrapped)
        self.head = nn.Sequential(nn.Conv2d(c, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(12, 5))

    def forward(self, x):
        x = self.stem(x)
        r = self.stochastic_depth(self.block(x))
        r += x
        return self.head(r)


def thin_and_compare(model, shape, frac=0.4, seed=1, **zero_kw):
    """Zero random removable classes, thin with contract_model, compare to the masked outputs;
    returns the thinning result."""
    model.eval()
    randomize_bn(model)
    zero_structures(model, shape, frac, seed=seed, **zero_kw)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = model(x)
    before = n_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = contract_model(model, shape)
    assert result.changed and n_params(model) < before
    with torch.no_grad():
        assert_same_function(model(x), ref)
    return result


def layers_blocked(model, shape):
    return analyze(model, shape).blocked


@pytest.mark.parametrize("wrapped,mode", [(True, "row"), (True, "batch"), (False, "row")])
def test_stochastic_depth_keeps_channels(wrapped, mode):
    torch.manual_seed(0)
    model = MBConvLike(wrapped=wrapped, mode=mode)
    model.train()   # traced in training mode: the traced-into form multiplies by its noise
    assert not any("stochastic" in why or "cannot be followed" in why
                   for why in layers_blocked(model, (3, 8, 8)).values())
    result = thin_and_compare(model, (3, 8, 8))
    assert "block.6" in result.removed   # the residual stream lost channels


def test_stochastic_depth_module_as_a_leaf():
    """A tracer that keeps StochasticDepth as one leaf: the module table knows it by name."""
    torch.manual_seed(0)
    model = MBConvLike().eval()

    class Leafy(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, StochasticDepth) or super().is_leaf_module(m, name)

    gm = torch.fx.GraphModule(model, Leafy().trace(model))
    assert any(n.op == "call_module" and n.target == "stochastic_depth" for n in gm.graph.nodes)
    g = Analyzer(model, gm, propagate_shapes(model, gm, (3, 8, 8))).run()
    thinnable, blocked, _ = g.layer_status()
    assert "block.6" in thinnable and not any("stochastic" in w for w in blocked.values())
