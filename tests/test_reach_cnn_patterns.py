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


# ---- channel shuffle and chunk, as torchvision's ShuffleNetV2 writes them -----------------------

def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


def conv_bn(cin, cout, k=1, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class ShuffleUnit(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(*conv_bn(inp, inp, 3, stride, inp, relu=False),
                                         *conv_bn(inp, bf))
        self.branch2 = nn.Sequential(*conv_bn(inp if stride > 1 else bf, bf),
                                     *conv_bn(bf, bf, 3, stride, bf, relu=False), *conv_bn(bf, bf))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetLike(nn.Module):
    def __init__(self, c0=6, c=12, units=3):
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn(3, c0, 3))
        self.stage = nn.Sequential(ShuffleUnit(c0, c, 2), *[ShuffleUnit(c, c, 1)
                                                              for _ in range(units - 1)])
        self.conv5 = nn.Sequential(*conv_bn(c, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.conv5(self.stage(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


def test_channel_shuffle_and_chunk_thin_exactly():
    torch.manual_seed(0)
    model = ShuffleNetLike()
    report = analyze(model, (3, 8, 8))
    assert list(report.blocked) == ["fc"]   # every layer but the classifier is thinnable
    removed = {}
    for seed in range(4):   # chunk balancing may keep some zero channels: several draws
        m = ShuffleNetLike()
        m.load_state_dict(model.state_dict())
        removed.update(thin_and_compare(m, (3, 8, 8), frac=0.5, seed=seed).removed)
    assert any(name.startswith("stage.2.branch2") for name in removed)
    assert any(name.startswith("stage.0.branch1") for name in removed)


def test_shuffle_couples_one_channel_of_every_group():
    """Channel k of each group is one class, so every group keeps the same size."""
    torch.manual_seed(0)
    g = analyze_graph(ShuffleNetLike(units=1), (3, 8, 8))
    b1 = next(p for p in g.producers if p.module == "stage.0.branch1.2")
    b2 = next(p for p in g.producers if p.module == "stage.0.branch2.5")
    assert g.roots(b1.ids) == g.roots(b2.ids)


def test_chunk_parts_lose_the_same_count():
    """Zero only channels of the first half: the chunk after them must keep the halves equal, so
    those channels stay (zero) and the function is unchanged."""
    torch.manual_seed(0)
    model = ShuffleNetLike(units=2).eval()
    randomize_bn(model)
    g = analyze_graph(model, (3, 8, 8))
    # stage.1 splits stage.0's shuffled output; zero the classes of its first half only
    first_half = set(g.roots(g.balanced[0].ids[:len(g.balanced[0].ids) // 2]))
    second = set(g.roots(g.balanced[0].ids[len(g.balanced[0].ids) // 2:]))
    only_first = sorted(first_half - second)
    assert only_first
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in g.producers:
            for i, r in enumerate(g.roots(p.ids)):
                if r == only_first[0]:
                    params[p.weight].select(p.out_dim, i).zero_()
        for f in g.followers:
            for i, r in enumerate(g.roots(f.ids)):
                if r == only_first[0]:
                    for t in f.tensors:
                        if t in params:
                            params[t][i] = 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    result = contract_model(model, (3, 8, 8))
    with torch.no_grad():
        assert_same_function(model(x), ref)
    assert not any(n.startswith("stage.0") for n in result.removed)


class FixedShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        x = x.view(x.size(0), 2, 4, 8, 8).transpose(1, 2).reshape(x.size(0), -1, 8, 8)
        return self.b(x)


class FixedSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x1, x2 = self.a(x).split([3, 5], dim=1)
        return self.b(x1) + x2.sum(1, keepdim=True)


def test_fixed_group_size_and_fixed_split_are_refused_with_the_op():
    blocked = layers_blocked(FixedShuffle(), (3, 8, 8))
    assert "fixed size 4 for the channels per group" in blocked["a"]
    assert "Tensor.view" in blocked["a"]
    blocked = layers_blocked(FixedSplit(), (3, 8, 8))
    assert "Tensor.split" in blocked["a"] and "fixed sizes [3, 5]" in blocked["a"]


# ---- MaxViT's grid partition: torch.swapaxes / swapdims away from the channels -------------------

class PartitionSwap(nn.Module):
    """MaxViT's window/grid partition in miniature: (B, C, H, W) -> (B, G, P, C) tokens, the
    partition axes swapped with ``torch.swapaxes`` (and back with ``Tensor.swapdims``), a linear
    layer over the channels, then back to (B, C, H, W) and a residual add."""

    def __init__(self, c=8, p=2):
        super().__init__()
        self.p = p
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c))
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5))

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        p = self.p
        t = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        t = t.reshape(b, (h // p) * (w // p), p * p, c)
        t = torch.swapaxes(t, -2, -3)
        t = t + self.mlp(t)
        t = t.swapdims(-2, -3)
        t = t.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.head(t + x)


def test_swapaxes_and_swapdims_move_the_channel_dim():
    torch.manual_seed(0)
    model = PartitionSwap()
    assert list(analyze(model, (3, 4, 4)).blocked) == ["head.2"]
    result = thin_and_compare(model, (3, 4, 4), frac=0.4, seed=3)
    assert {"stem.0", "mlp.0", "mlp.2"} <= set(result.removed)


# ---- parameters read directly: ConvNeXt's layer scale, ViT's class token and position embedding --

class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class CNBlockLike(nn.Module):
    """ConvNeXt's block (its LayerNorm replaced by a batch norm, see the LayerNorm tests)."""

    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 7, padding=3, groups=c), nn.BatchNorm2d(c),
                                   Permute([0, 2, 3, 1]), nn.Linear(c, 4 * c), nn.GELU(),
                                   nn.Linear(4 * c, c), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.stochastic_depth = StochasticDepth(0.1, "row")

    def forward(self, x):
        result = self.layer_scale * self.block(x)
        return self.stochastic_depth(result) + x


class ConvNeXtLike(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 2, 2), nn.BatchNorm2d(c))
        self.blocks = nn.Sequential(CNBlockLike(c), CNBlockLike(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_layer_scale_is_sliced_with_its_channels():
    torch.manual_seed(0)
    model = ConvNeXtLike()
    assert list(analyze(model, (3, 8, 8)).blocked) == ["head.2"]
    result = thin_and_compare(model, (3, 8, 8), frac=0.4, seed=2)
    c = model.stem[0].out_channels
    assert c < 8 and "blocks.1.block.5" in result.removed
    assert model.blocks[0].layer_scale.shape == (c, 1, 1)
    kinds = result.typed_recipe.tensors["blocks.0.layer_scale"].ops
    assert [o.dim for o in kinds] == [0]


def test_layer_scale_mask_and_optimizer_state_are_sliced_and_the_recipe_replays():
    from compressor.masks import MaskStore
    torch.manual_seed(0)
    model = ConvNeXtLike().eval()
    randomize_bn(model)
    masks = zero_structures(model, (3, 8, 8), 0.4, seed=2)
    masks["blocks.0.layer_scale"] = torch.ones_like(model.blocks[0].layer_scale)
    store = MaskStore(model)
    for name, m in masks.items():
        store.set(name, m)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contract_model(model, (3, 8, 8), optimizer=opt, store=store)
    scale = model.blocks[0].layer_scale
    assert store.masks["blocks.0.layer_scale"].shape == scale.shape
    assert opt.state[scale]["exp_avg"].shape == scale.shape
    fresh = ConvNeXtLike()
    replay(fresh, [Recipe.from_dict(r.to_dict()) for r in recipes_of(model)])
    fresh.load_state_dict(model.state_dict())
    assert fresh.blocks[1].layer_scale.shape == model.blocks[1].layer_scale.shape


class ViTLike(nn.Module):
    """torchvision's VisionTransformer input path: patches, reshape to the width its attribute
    holds, class token joined along the tokens, position embedding added (an MLP stands in for
    the encoder, whose LayerNorm and attention are other tests' subject)."""

    def __init__(self, c=8, patch=4, image=8, zero=()):
        super().__init__()
        self.hidden_dim, self.patch_size = c, patch
        self.conv_proj = nn.Conv2d(3, c, patch, patch)
        self.class_token = nn.Parameter(torch.rand(1, 1, c))
        self.pos_embedding = nn.Parameter(torch.rand(1, (image // patch) ** 2 + 1, c))
        with torch.no_grad():   # channels whose entries are zero, as a pruner would leave them
            for k in zero:
                self.class_token[..., k] = 0
                self.pos_embedding[..., k] = 0
        self.mlp = nn.Sequential(nn.Linear(c, 16), nn.GELU(), nn.Linear(16, c))
        self.head = nn.Linear(c, 5)

    def _process_input(self, x):
        n, _, h, w = x.shape
        p = self.patch_size
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, (h // p) * (w // p))
        return x.permute(0, 2, 1)

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = x + self.pos_embedding
        x = x + self.mlp(x)
        return self.head(x[:, 0])


def test_class_token_position_embedding_and_width_attribute_thin_exactly():
    torch.manual_seed(0)
    model = ViTLike(zero=(0, 2, 3, 5, 6))
    report = analyze(model, (3, 8, 8))
    assert list(report.blocked) == ["head"]
    assert "joins 'class_token', not zero" in report.partial["conv_proj"]   # non-zero channels
    result = thin_and_compare(model, (3, 8, 8), frac=0.6, seed=3)
    c = model.conv_proj.out_channels
    assert c < 8 and model.hidden_dim == c
    assert model.pos_embedding.shape == (1, 5, c) and model.class_token.shape == (1, 1, c)
    assert result.typed_recipe.modules[""].attrs == {"hidden_dim": c}
    assert [o.dim for o in result.typed_recipe.tensors["pos_embedding"].ops] == [2]
    fresh = ViTLike()   # a checkpoint's plain-data recipe replays on a dense model
    replay(fresh, [r.to_dict() for r in recipes_of(model)])
    fresh.load_state_dict(model.state_dict())
    assert fresh.hidden_dim == c
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_same_function(fresh(x), model(x))


def test_added_parameter_keeps_non_zero_channels_unless_no_layer_reads_them():
    """Entries that are not zero make the channel non-zero: removal by zero filters is refused
    (it would change the function), removal of channels no layer reads is still exact."""
    torch.manual_seed(0)
    model = ViTLike().eval()
    with torch.no_grad():   # every filter of channel 1 is zero
        model.conv_proj.weight[1] = 0
        model.conv_proj.bias[1] = 0
        model.mlp[2].weight[1] = 0
        model.mlp[2].bias[1] = 0
        model.class_token[..., 1] = 0   # only the position embedding is not zero there
    with pytest.raises(ThinningError, match=r"cannot thin conv_proj: .*adds 'pos_embedding', not "
                                            r"zero for this channel \(zero its entries"):
        from compressor.thinning import remove_filters
        remove_filters(model, (3, 8, 8))
    with torch.no_grad():   # now no layer reads channel 1
        model.mlp[0].weight[:, 1] = 0
        model.head.weight[:, 1] = 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    result = remove_channels(model, (3, 8, 8))
    assert result.removed["conv_proj"] == (1, 8)
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_width_attribute_ambiguous_or_missing_is_refused_with_the_op():
    model = ViTLike()
    model.other_width = 8   # two attributes hold 8: which one is the width is not known
    blocked = analyze(model, (3, 8, 8)).blocked
    assert "Tensor.reshape has the fixed size 8 at the channel dimension" in blocked["conv_proj"]
    assert "one integer attribute of 'the model'" in blocked["conv_proj"]


# ---- LayerNorm over the channels: refused with the reason ----------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's: permute, F.layer_norm over the channels, permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 4, 1), LayerNorm2d(4), nn.Conv2d(4, 4, 1)
        self.c, self.d = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.b(self.norm(self.a(x)))   # over the channels: mixes them
        z = nn.functional.layer_norm(self.c(y), (8, 8))   # over space: each channel alone
        return self.d(z)


def test_layer_norm_over_channels_is_refused_with_why_and_over_space_is_followed():
    report = analyze(Norms(), (3, 8, 8))
    assert "F.layer_norm normalizes over the channel dimension (a removed channel would still " \
           "count in its mean and variance)" in report.blocked["a"]
    assert "c" in report.thinnable
