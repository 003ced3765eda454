"""Thinning: the thinned network computes the masked network's function, training continues with
the same optimizer, recipes replay from checkpoints, and every refusal says what and where."""
import copy
import random
import warnings

import pytest
import torch
from torch import nn

from compressor.errors import ComponentArgError, ScheduleError, ThinningError
from compressor.masks import MaskStore
from compressor.models import ARCHITECTURES, create_model, list_architectures
from compressor.registry import EXTENSIONS
from compressor.thinning import (StructureRemover, analyze, contract_model, coupled_filter_groups,
                                 remove_channels, remove_filters, replay, thin)
from compressor.thinning.execute import apply_ops
from helpers import assert_same_function, train
from helpers.models import Untraceable
from helpers.thinning import n_params, randomize_bn, zero_structures

SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28), "imagenet": (3, 64, 64)}


# Small tensors (one intra-op thread), and thinned == masked is an exact claim: every test here
# runs in float64 (see assert_same_function).
pytestmark = pytest.mark.usefixtures("one_thread", "float64")


# ---- (a) every CIFAR / MNIST model of the zoo, resnet18 and mobilenet -------------------------

ZOO = sorted(a for a in list_architectures(include_torchvision=False)
             if ARCHITECTURES[a].dataset in ("cifar10", "mnist")) + ["resnet18", "mobilenet"]


def small_shape(arch):
    """A small input the architecture runs on (ImageNet nets 64x64, fully convolutional CIFAR
    nets 16x16, the others their dataset's size)."""
    shape = SHAPES[ARCHITECTURES[arch].dataset]
    if ARCHITECTURES[arch].dataset == "cifar10" and arch.startswith(
            ("resnet", "preact", "plain", "mobilenet")):
        return (shape[0], 16, 16)
    return shape


@pytest.mark.parametrize("arch", ZOO)
def test_zoo_thinned_equals_masked(arch):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    randomize_bn(model)
    shape = small_shape(arch)
    zero_structures(model, shape, 0.35, seed=1)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x)
    before = n_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = remove_filters(model, shape)
    assert result.changed and n_params(model) < before
    assert result.nonzero_bias_removed == 0
    with torch.no_grad():
        assert_same_function(model(x), ref)


@pytest.mark.parametrize("arch", ["resnet20_cifar", "preact_resnet20_cifar", "mobilenet_cifar",
                                  "vgg11_bn_cifar", "lenet_300_100"])
def test_zoo_remove_channels_equals_masked(arch):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    randomize_bn(model)
    shape = small_shape(arch)
    zero_structures(model, shape, 0.35, seed=2, mode="channels")
    x = torch.randn(2, *shape)
    with torch.no_grad():
        ref = model(x)
    before = n_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = remove_channels(model, shape)
    assert result.changed and n_params(model) < before
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_coupled_filter_groups_resnet20():
    model = create_model("resnet20_cifar")
    groups = coupled_filter_groups(model, (3, 32, 32))
    assert groups[0] == ["conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight",
                         "layer1.2.conv2.weight"]
    assert groups[1] == ["layer2.0.conv2.weight", "layer2.0.downsample.0.weight",
                         "layer2.1.conv2.weight", "layer2.2.conv2.weight"]
    assert len(groups) == 3
    assert coupled_filter_groups(model) == groups   # without an example input: guessed


@torch.no_grad()
def test_masks_from_coupled_groups_thin_exactly():
    """What a structured pruner does: one filter mask per coupled group, BN after each conv."""
    from compressor.graph import conv_bn_pairs
    torch.manual_seed(0)
    model = create_model("resnet20_cifar").eval()
    randomize_bn(model)
    params = dict(model.named_parameters())
    groups = coupled_filter_groups(model, (3, 32, 32))
    grouped = {n for g in groups for n in g}
    convs = [n for n, p in params.items() if p.dim() == 4]
    bns = conv_bn_pairs(model)
    rng = torch.Generator().manual_seed(3)
    for members in groups + [[n] for n in convs if n not in grouped]:
        n_out = params[members[0]].shape[0]
        drop = torch.randperm(n_out, generator=rng)[: n_out // 3]
        for name in members:
            params[name][drop] = 0
            bn = bns[name]
            bn.weight[drop] = 0
            bn.bias[drop] = 0
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    result = remove_filters(model, (3, 32, 32))
    assert result.removed["layer1.0.conv2"] == (5, 16)
    assert model.conv1.out_channels == 11
    assert_same_function(model(x), ref)


def test_wrapped_model_and_training_flags():
    torch.manual_seed(0)
    inner = create_model("resnet20_cifar").train()
    zero_structures(inner, (3, 16, 16), 0.3, seed=14)
    model = nn.DataParallel(inner)
    result = remove_filters(model, (3, 16, 16))
    assert result.changed and len(inner.thinning_recipes) == 1
    assert all(m.training for m in inner.modules())
    model(torch.randn(2, 3, 16, 16)).sum().backward()


def test_contract_model_does_both_in_one_recipe():
    torch.manual_seed(0)
    model = create_model("vgg11_bn_cifar").eval()
    randomize_bn(model)
    zero_structures(model, (3, 32, 32), 0.2, seed=12)
    zero_structures(model, (3, 32, 32), 0.2, seed=13, mode="channels")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    probe = copy.deepcopy(model)
    n_filters = sum(r for r, _ in remove_filters(probe, (3, 32, 32)).removed.values())
    result = contract_model(model, (3, 32, 32))
    assert sum(r for r, _ in result.removed.values()) > n_filters
    assert len(model.thinning_recipes) == 1 and model.thinning_recipes[0]["kind"] == "contract_model"
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_remove_filters_twice_is_a_noop_the_second_time():
    torch.manual_seed(0)
    model = create_model("simplenet_cifar").eval()
    zero_structures(model, (3, 32, 32), 0.4, seed=0)
    assert remove_filters(model, (3, 32, 32)).changed
    again = remove_filters(model, (3, 32, 32))
    assert not again.changed and again.recipe is None
    assert len(model.thinning_recipes) == 1


# ---- building blocks the zoo lacks ----------------------------------------------------------

class Blocks(nn.Module):
    """Concatenation, a grouped and a depthwise-multiplier conv, conv1d-free linear head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.g = nn.Conv2d(10, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 3 * 5, 4)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = torch.relu(self.bn2(self.dw(self.g(y))))
        y = nn.functional.max_pool2d(y, 2)
        return self.fc(y.flatten(1))


def test_cat_grouped_depthwise_and_non_square_flatten():
    torch.manual_seed(0)
    model = Blocks().eval()
    randomize_bn(model)
    with torch.no_grad():
        model.a.weight[[1, 4]] = 0          # cat positions 1 and 4 (group 0 of self.g)
        model.a.bias[[1, 4]] = 0
        model.b.weight[[2]] = 0             # cat position 8 (group 1)
        model.b.bias[[2]] = 0
        model.bn.weight[[1, 4, 8]] = 0
        model.bn.bias[[1, 4, 8]] = 0
    x = torch.randn(2, 3, 6, 10)
    with torch.no_grad():
        ref = model(x)
    result = remove_filters(model, (3, 6, 10))
    # self.g keeps its 2 groups with the same count in each: 1 removed per group, not 2 + 1
    assert model.g.in_channels == 8 and model.g.groups == 2 and model.g.weight.shape[1] == 4
    assert result.removed["a"] == (1, 6) and result.removed["b"] == (1, 4)
    with torch.no_grad():
        assert_same_function(model(x), ref)

    with torch.no_grad():  # grouped filters go one per group; depthwise filters follow in pairs
        model.g.weight[[3, 5, 7]] = 0
        model.g.bias[[3, 5, 7]] = 0
        model.dw.weight[[6, 7, 10, 11, 14, 15]] = 0
        model.bn2.weight[[6, 7, 10, 11, 14, 15]] = 0
        model.bn2.bias[[6, 7, 10, 11, 14, 15]] = 0
        ref = model(x)
    result = remove_filters(model, (3, 6, 10))
    assert result.removed["g"] == (2, 8)   # 1 zero filter in group 0, 2 in group 1: 1 + 1
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (6, 12, 6)
    assert model.fc.in_features == 12 * 3 * 5
    with torch.no_grad():
        assert_same_function(model(x), ref)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 6, 3)
        self.bn = nn.BatchNorm1d(6)
        self.c2 = nn.ConvTranspose1d(6, 5, 3)
        self.fc = nn.Linear(5 * 11, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.c2(torch.relu(self.bn(self.c1(x)))), 1))


def test_conv1d_and_transposed_conv():
    torch.manual_seed(0)
    model = Conv1dNet().eval()
    randomize_bn(model)
    zero_structures(model, (2, 11), 0.5, seed=4)
    x = torch.randn(3, 2, 11)
    with torch.no_grad():
        ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # c1 may keep one zero filter
        assert remove_filters(model, (2, 11)).changed
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_shape_formulas_match_pytorch():
    """The shapes computed without running conv / pool / linear layers equal the real ones."""
    from compressor.graph.shapes import module_shape as _module_shape
    rng = random.Random(0)
    checked = 0
    for _ in range(400):
        n = rng.choice([1, 2, 3])
        size = [rng.randint(1, 9) for _ in range(n)]
        k = [rng.randint(1, 4) for _ in range(n)]
        s = [rng.randint(1, 3) for _ in range(n)]
        p = [rng.randint(0, kk // 2) for kk in k]
        d = [rng.randint(1, 2) for _ in range(n)]
        out = tuple(rng.choice([None, rng.randint(1, 4)]) for _ in range(n)) if n > 1 else 3
        mod = rng.choice([
            lambda: [nn.Conv1d, nn.Conv2d, nn.Conv3d][n - 1](2, 3, k, s, p, d),
            lambda: [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d][n - 1](k, s, p, d,
                                                                       ceil_mode=rng.random() < .5),
            lambda: [nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d][n - 1](k, s, p,
                                                                       ceil_mode=rng.random() < .5),
            lambda: [nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d][n - 1](out),
            lambda: [nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d][n - 1](out),
            lambda: nn.Linear(size[-1], 5)])()
        x = torch.zeros(1, 2, *size)
        try:
            real = tuple(mod(x).shape)
        except RuntimeError:
            continue
        got = _module_shape(mod, tuple(x.shape))
        assert got in (None, real), (mod, x.shape)
        checked += got is not None
    assert checked > 200


# ---- (c) training continues with the same optimizer ------------------------------------------

class ResNetLet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 3, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv3(x)), (2, 3))
        return self.fc(torch.flatten(x, 1))


def _steps(model, opt, store, batches):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if store is not None:
            store.apply_after_step()


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 7, generator=g), torch.randint(0, 5, (4,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
], ids=["sgd-momentum", "adam", "adamw-amsgrad"])
def test_training_continues_with_the_same_optimizer(make_opt, float64):
    torch.manual_seed(0)
    model = ResNetLet().train()
    masks = zero_structures(model, (3, 6, 7), 0.4, seed=5)
    store = MaskStore(model)
    for name, m in masks.items():
        store.set(name, m)
    opt = make_opt(model.parameters())
    _steps(model, opt, store, _batches(2, 0))

    dense = copy.deepcopy(model)                      # the masked run, continued densely
    dense_opt = make_opt(dense.parameters())
    dense_opt.load_state_dict(copy.deepcopy(opt.state_dict()))   # torch shares tensors
    dense_store = MaskStore(dense)
    for name, m in store.masks.items():
        dense_store.set(name, m)

    ids = [id(p) for p in model.parameters()]
    result = remove_filters(model, (3, 6, 7), optimizer=opt, store=store)
    assert result.changed and [id(p) for p in model.parameters()] == ids
    assert all(store.masks[n].shape == store.params[n].shape for n in store.masks)

    built = ResNetLet().train()                        # built thin from the start
    replay(built, model.thinning_recipes)
    built.load_state_dict(model.state_dict())
    built_opt = make_opt(built.parameters())
    built_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    later = _batches(3, 1)
    _steps(model, opt, store, later)
    _steps(dense, dense_opt, dense_store, later)
    _steps(built, built_opt, None, later)
    thin_params = dict(model.named_parameters())
    tensors = result.recipe["tensors"]
    for name, p in dense.named_parameters():
        expect = apply_ops(p.detach(), tensors[name]["ops"]) if name in tensors else p.detach()
        # float64: only summation order differs (~1e-16 relative per operation, measured
        # <1e-13 after Adam's steps); a wrong optimizer state would differ at the lr's scale.
        assert thin_params[name].dtype == torch.float64
        torch.testing.assert_close(thin_params[name].detach(), expect, rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(model.named_parameters(), built.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)


# ---- (d) checkpoints replay the recipes -----------------------------------------------------

def test_checkpoint_replay(tmp_path):
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    from compressor.scheduler import CompressionScheduler
    torch.manual_seed(0)
    model = create_model("resnet20_cifar").eval()
    randomize_bn(model)
    masks = zero_structures(model, (3, 32, 32), 0.3, seed=6)
    sched = CompressionScheduler(model)
    for name, m in masks.items():
        sched.store.set(name, m)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    remove_filters(model, (3, 32, 32), optimizer=opt, store=sched)
    zero_structures(model, (3, 32, 32), 0.3, seed=7, mode="channels")
    remove_channels(model, (3, 32, 32), optimizer=opt, store=sched)   # a second recipe
    assert len(model.thinning_recipes) == 2
    path = save_checkpoint(str(tmp_path / "thin.pth.tar"), model, opt, sched, arch="resnet20_cifar")
    raw = torch.load(path, weights_only=True)
    assert raw["thinning_recipes"] == model.thinning_recipes

    dense = create_model("resnet20_cifar").eval()
    dense_opt = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9)
    dense, sched2, _, _ = load_checkpoint(dense, path, dense_opt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_function(dense(x), model(x))
    assert dense.thinning_recipes == model.thinning_recipes
    assert {n: m.shape for n, m in sched2.store.masks.items()} == \
        {n: m.shape for n, m in sched.store.masks.items()}


def test_replay_refuses_a_model_it_does_not_fit():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    zero_structures(model, (3, 32, 32), 0.3, seed=8)
    remove_filters(model, (3, 32, 32))
    other = create_model("resnet32_cifar")
    other_state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ThinningError, match="recipe expects"):
        replay(create_model("resnet20_cifar"), model.thinning_recipes * 2)
    with pytest.raises(ThinningError, match="no module"):
        replay(nn.Sequential(nn.Conv2d(3, 3, 1)), model.thinning_recipes)
    assert all(torch.equal(v, other_state[k]) for k, v in other.state_dict().items())


# ---- (e) refusals and warnings --------------------------------------------------------------

def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, snap):
    state = model.state_dict()
    return state.keys() == snap.keys() and all(torch.equal(state[k], snap[k]) for k in snap)


def test_removing_everything_keeps_one_channel_and_warns():
    torch.manual_seed(0)
    model = ResNetLet().eval()
    with torch.no_grad():
        model.conv3.weight.zero_()
        model.conv3.bias.zero_()
    x = torch.randn(2, 3, 6, 7)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match=r"conv3.*every filter of 'conv3.weight' is removable"):
        remove_filters(model, (3, 6, 7))
    assert model.conv3.out_channels == 1 and model.fc.in_features == 6
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_untraceable_model():
    model = Untraceable()
    snap = _snapshot(model)
    with pytest.raises(ThinningError, match=r"cannot thin Untraceable: torch.fx cannot trace"):
        remove_filters(model, (3, 8, 8))
    with pytest.raises(ThinningError, match="cannot trace"):
        analyze(model, (3, 8, 8))
    with pytest.raises(ThinningError, match="cannot trace"):
        coupled_filter_groups(model)
    assert _unchanged(model, snap)


class MeanHead(nn.Module):
    """conv1's channels are averaged away by x.mean(1); conv2's path is fine."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(1 * 4 * 4 + 2 * 4 * 4, 2)

    def forward(self, x):
        a = self.conv1(x).mean(1, keepdim=True)
        b = self.conv3(torch.relu(self.conv2(x)))
        return self.fc(torch.cat([a, b], 1).flatten(1))


class FixedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 16))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(torch.relu(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.conv2(torch.sigmoid(self.conv1(x))).mean((2, 3)))


@pytest.mark.parametrize("cls, shape, layer, pattern", [
    (MeanHead, (3, 4, 4), "conv1", r"Tensor.mean over the channel dimension at node 'mean'"),
    (FixedView, (3, 4, 4), "conv", r"Tensor.view has the fixed size 16 at the channel dimension"),
    (Twice, (4, 5, 5), "conv", r"module 'conv' is called 2 times"),
    (Gate, (3, 5, 5), "conv1", r"sigmoid at node 'sigmoid' maps a removed \(zero\) channel"),
])
def test_unsupported_ops_are_refused_before_any_change(cls, shape, layer, pattern):
    torch.manual_seed(0)
    model = cls()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, *shape)).sum().backward()
    opt.step()
    with torch.no_grad():
        model.get_submodule(layer).weight[0] = 0
        model.get_submodule(layer).bias[0] = 0
    snap = _snapshot(model)
    momenta = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    with pytest.raises(ThinningError, match=rf"cannot thin {layer}: .*{pattern}"):
        remove_filters(model, shape, optimizer=opt)
    assert _unchanged(model, snap) and not hasattr(model, "thinning_recipes")
    assert all(torch.equal(opt.state[p]["momentum_buffer"], momenta[n])
               for n, p in model.named_parameters())
    report = analyze(model, shape)
    assert layer in report.blocked or layer in report.partial or report.error
    assert report.error is not None and layer in report.error


def test_blocked_layers_do_not_stop_the_rest():
    torch.manual_seed(0)
    model = MeanHead().eval()
    report = analyze(model, (3, 4, 4))
    assert "mean over the channel dimension" in report.blocked["conv1"]
    assert "conv2" in report.thinnable and "conv3" in report.thinnable
    with torch.no_grad():
        model.conv2.weight[1] = 0
        model.conv2.bias[1] = 0
        x = torch.randn(2, 3, 4, 4)
        ref = model(x)
    remove_filters(model, (3, 4, 4))
    assert model.conv2.out_channels == 3 and model.conv3.in_channels == 3
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_a_gate_that_is_not_zero_preserving_still_allows_channel_removal():
    torch.manual_seed(0)
    model = Gate().eval()
    with torch.no_grad():
        model.conv2.weight[:, 1] = 0                 # nobody reads conv1's channel 1
        x = torch.randn(2, 3, 5, 5)
        ref = model(x)
    result = remove_channels(model, (3, 5, 5))
    assert result.removed == {"conv1": (1, 4)}
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_optimizer_state_that_cannot_be_sliced():
    torch.manual_seed(0)
    model = ResNetLet()
    zero_structures(model, (3, 6, 7), 0.5, seed=9)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    x, y = _batches(1, 0)[0]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    snap = _snapshot(model)
    with pytest.raises(ThinningError, match=r"cannot thin the state of LBFGS: its '\w+'"):
        remove_filters(model, (3, 6, 7), optimizer=opt)
    assert _unchanged(model, snap)


def test_example_input_that_does_not_run():
    with pytest.raises(ThinningError, match=r"forward pass on the example input of shape \(2, 3, 5, 5\)"):
        remove_filters(create_model("simplenet_cifar"), (3, 5, 5))


def test_example_input_forms():
    torch.manual_seed(0)
    model = create_model("simplenet_cifar").eval()
    zero_structures(model, (3, 32, 32), 0.4, seed=11)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert remove_filters(model, "cifar10").changed        # a dataset name, as Distiller's
    with torch.no_grad():
        assert_same_function(model(x), ref)
    with pytest.raises(TypeError, match="Distiller's remove_filters"):
        remove_filters(model, {"conv1.weight": None})
    with pytest.raises(ThinningError, match="unknown dataset 'cifar100'"):
        remove_filters(model, "cifar100")


def test_report_text():
    report = analyze(create_model("resnet20_cifar"), (3, 32, 32))
    text = report.text()
    assert "Coupled groups (3)" in text and "fc: its channels are part of the model's output" in text
    assert report.thinnable[0] == "conv1" and report.blocked == {
        "fc": "its channels are part of the model's output"}
    pre = analyze(create_model("preact_resnet20_cifar"), (3, 32, 32))
    assert "pads constant channels" in pre.partial["layer2.0.conv2"]


def test_thin_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid: remove_filters, remove_channels, contract_model"):
        thin(ResNetLet(), "remove_layers", (3, 6, 7))


# ---- the YAML extension ----------------------------------------------------------------------

def test_extension_is_registered_with_aliases():
    for name in ("StructureRemover", "FilterRemover", "ChannelRemover"):
        assert EXTENSIONS.get(name) is StructureRemover


def test_extension_argument_errors():
    with pytest.raises(ComponentArgError, match=r"thinning_func_str: unknown thinning function "
                                                r"'remove_filter' \(did you mean 'remove_filters'"):
        StructureRemover("t", "remove_filter")
    with pytest.raises(ComponentArgError, match="dataset: unknown dataset 'cifar'"):
        StructureRemover("t", "remove_filters", dataset="cifar")
    with pytest.raises(ComponentArgError, match="input_shape: must be the shape of one input"):
        StructureRemover("t", "remove_filters", input_shape=[3, -1])
    assert StructureRemover("t", "contract_model", arch="resnet20_cifar",
                            dataset="cifar10").input_shape == (3, 32, 32)


def test_schedule_with_a_bad_thinning_function():
    from compressor import dict_config
    model = ResNetLet()
    sched = {"version": 1, "extensions": {"thinner": {"class": "FilterRemover",
                                                      "thinning_func_str": "remove_all"}},
             "policies": [{"extension": {"instance_name": "thinner"}, "epochs": [1]}]}
    with pytest.raises(ScheduleError, match=r"thinning_func_str.*valid: contract_model, "
                                            r"remove_channels, remove_filters"):
        dict_config(model, torch.optim.SGD(model.parameters(), lr=0.1), sched)


def test_schedule_thins_during_training():
    from compressor import dict_config
    torch.manual_seed(0)
    model = ResNetLet().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = dict_config(model, opt, {
        "version": 1,
        "extensions": {"thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                   "arch": "whatever", "input_shape": [3, 6, 7]}},
        "policies": [{"extension": {"instance_name": "thinner"}, "epochs": [1]}]})
    masks = zero_structures(model, (3, 6, 7), 0.5, seed=10)
    for name, m in masks.items():
        sched.store.set(name, m)
    shapes = {}
    train(model, opt, sched, _batches(3, 2), epochs=3, metrics=None,
          before_epoch_end=lambda epoch: shapes.__setitem__(epoch, n_params(model)))
    assert shapes[1] < shapes[0] and shapes[2] == shapes[1]
    assert len(model.thinning_recipes) == 1
    state = sched.state_dict()
    policy_state = next(iter(state["policies"].values()))
    assert policy_state == {"done_epoch": 1, "n_thinned": 1}
