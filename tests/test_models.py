"""Tests of compressor.models: every architecture builds, runs, traces with torch.fx, and carries
the parameter names and counts that Distiller's schedules and torchvision's weights expect."""
from __future__ import annotations

import sys
import types
from collections import Counter

import pytest
import torch
import torch.fx
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.models import (ARCHITECTURES, ModelZooError, UnknownArchError, create_model,
                               dataset_of, input_shape, list_architectures, num_classes,
                               register_model)
from compressor.models import registry, torchvision_models
from compressor.models.resnet_imagenet import ResNet

NATIVE = list_architectures(include_torchvision=False)

# ImageNet models whose output shape is checked at 224x224 (resnet50 is forwarded at 224 only
# there). The rest cost 8-23 GMACs at 224, so they run at 64x64 only: every ImageNet model ends in
# adaptive pooling, so the layers and shapes checked are the same.
FULL_SIZE_IMAGENET = {"alexnet", "mobilenet", "mobilenet_025", "mobilenet_050", "mobilenet_075",
                      "resnet18", "resnet34", "resnet50"}
SMALL_IMAGENET = (3, 64, 64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Intra-op threads fight other processes on small CI machines (a 50x slowdown seen on a
    loaded 2-core box); these tiny batches gain nothing from them. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(arch: str) -> nn.Module:
    """Build without allocating or initialising weights: for counts, names and shapes."""
    with torch.device("meta"):
        return create_model(arch)


# ---- every architecture ------------------------------------------------------------------------

def test_zoo_has_the_distiller_names():
    expected = (["simplenet_mnist", "simplenet_v2_mnist", "lenet5", "lenet_300_100",
                 "simplenet_cifar", "plain20_cifar", "plain20_cifar_nobn", "mobilenet_cifar",
                 "resnet18", "resnet34", "resnet50", "mobilenet", "mobilenet_025",
                 "mobilenet_050", "mobilenet_075", "alexnet"]
                + [f"resnet{d}_cifar" for d in (20, 32, 44, 56, 110)]
                + [f"preact_resnet{d}_cifar{s}" for d in (20, 32, 44, 56, 110)
                   for s in ("", "_conv_ds")]
                + [f"vgg{d}{bn}_cifar" for d in (11, 13, 16, 19) for bn in ("", "_bn")])
    assert set(expected) <= set(NATIVE)


@pytest.mark.parametrize("arch", NATIVE)
def test_builds_runs_and_traces(arch):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    ds = dataset_of(arch)
    assert ds == ARCHITECTURES[arch].dataset
    classes = num_classes(ds)
    if ds == "imagenet":
        batch, small = 1, SMALL_IMAGENET
        if arch in FULL_SIZE_IMAGENET:
            with torch.no_grad():
                assert model(torch.randn(1, *input_shape(ds))).shape == (1, classes)
    else:
        batch, small = 2, input_shape(ds)
    x = torch.randn(batch, *small)

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        expected, got = model(x), traced(x)
    assert expected.shape == (batch, classes)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # No module is used twice (each ReLU is its own), so hooks and graph passes see every call once.
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    assert [t for t, c in calls.items() if c > 1] == []


# ---- parameter counts ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch, count", [
    ("lenet5", 431_080),            # 520 + 25,050 + 400,500 + 5,010 (Han et al.'s Caffe LeNet-5)
    ("simplenet_mnist", 431_080),   # the same network
    ("lenet5_bn", 431_220),         # lenet5 + 2 x (20 + 50) batch-norm gamma and beta
    ("lenet_300_100", 266_610),     # 235,500 + 30,100 + 1,010
    ("simplenet_v2_mnist", 26_080),  # 520 + 25,050 + 510
    ("simplenet_cifar", 62_006),    # 456 + 2,416 + 48,120 + 10,164 + 850
    # resnet20_cifar: stem 432 + bn 32; layer1 3 x (2 x 2,304 + 2 x 32) = 14,016;
    # layer2 (4,608 + 9,216 + 128 + ds 512 + 64) + 2 x (2 x 9,216 + 128) = 51,648;
    # layer3 (18,432 + 36,864 + 256 + ds 2,048 + 128) + 2 x (2 x 36,864 + 256) = 205,696;
    # fc 650. Total 272,474.
    ("resnet20_cifar", 272_474),
    ("plain20_cifar", 269_722),     # resnet20_cifar less its two downsample (conv+bn) = 2,752
    ("vgg16_cifar", 14_719_818),    # torchvision vgg16 features (14,714,688) + Linear 512->10
    ("mobilenet", 4_231_976),       # MobileNet v1 1.0 as published
    # torchvision's counts:
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808), ("resnext50_32x4d", 25_028_904),
    ("resnext101_32x8d", 88_791_336), ("wide_resnet50_2", 68_883_240),
    ("wide_resnet101_2", 126_886_696), ("alexnet", 61_100_840),
])
def test_parameter_count(arch, count):
    assert n_params(meta_model(arch)) == count


def test_simplenet_cifar_macs_per_layer():
    # Distiller's test_model_summary asserts these per-layer MACs for simplenet_cifar.
    model, macs = create_model("simplenet_cifar").eval(), []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out[0].numel() * m.in_channels // m.groups * m.weight[0, 0].numel())
        else:
            macs.append(m.in_features * m.out_features)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert macs == [352800, 240000, 48000, 10080, 840]


# ---- names that schedule files and checkpoints rely on -------------------------------------------

@pytest.mark.parametrize("arch, names", [
    ("resnet20_cifar", ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight",
                        "layer1.0.bn1.weight",
                        "layer1.2.conv2.weight", "layer2.0.downsample.0.weight",
                        "layer2.0.downsample.1.weight", "layer3.2.bn2.bias", "fc.weight"]),
    ("resnet56_cifar", ["layer1.8.conv1.weight", "layer3.0.downsample.0.weight"]),
    ("preact_resnet20_cifar", ["conv1.weight", "layer1.0.pre_bn.weight", "layer1.0.conv1.weight",
                               "layer1.0.bn.weight", "layer1.0.conv2.weight", "final_bn.weight",
                               "fc.weight"]),
    ("preact_resnet20_cifar_conv_ds", ["layer2.0.downsample.weight", "layer3.0.downsample.weight"]),
    ("plain20_cifar", ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.bn2.weight",
                       "fc.weight"]),
    ("vgg16_cifar", ["features.0.weight", "features.2.weight", "features.5.weight",
                     "features.28.weight", "classifier.weight"]),
    ("vgg16_bn_cifar", ["features.0.weight", "features.1.weight", "features.3.weight",
                        "features.40.weight", "features.41.running_var", "classifier.weight"]),
    ("simplenet_mnist", ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]),
    ("simplenet_v2_mnist", ["conv1.weight", "conv2.weight", "fc.weight"]),
    ("simplenet_cifar", ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]),
    ("lenet5", ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]),
    ("lenet_300_100", ["fc1.weight", "fc2.weight", "fc3.weight"]),
    ("mobilenet", ["model.0.0.weight", "model.0.1.weight", "model.1.0.weight", "model.1.3.weight",
                   "model.4.0.weight", "model.13.4.weight", "fc.weight"]),
    ("mobilenet_cifar", ["model.0.0.weight", "model.13.3.weight", "fc.weight"]),
    ("alexnet", ["features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight",
                 "features.10.weight", "classifier.1.weight", "classifier.4.weight",
                 "classifier.6.weight"]),
])
def test_distiller_parameter_names(arch, names):
    state = meta_model(arch).state_dict()
    missing = [n for n in names if n not in state]
    assert missing == []


def test_plain20_has_no_shortcuts_and_nobn_no_batchnorm():
    assert not any("downsample" in n for n, _ in meta_model("plain20_cifar").named_modules())
    nobn = meta_model("plain20_cifar_nobn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nobn.modules())


def test_mobilenet_depthwise_and_widths():
    m = meta_model("mobilenet")
    assert m.model[4][0].groups == 128 and m.model[4][0].weight.shape == (128, 1, 3, 3)
    assert meta_model("mobilenet_025").fc.in_features == 256
    assert meta_model("mobilenet_050").fc.in_features == 512
    assert meta_model("mobilenet_075").fc.in_features == 768


def test_preact_padding_shortcut_pads_zero_channels():
    block = create_model("preact_resnet20_cifar").layer2[0].eval()
    x = torch.randn(2, 16, 32, 32)
    shortcut = block.downsample(x)
    assert shortcut.shape == (2, 32, 16, 16)
    assert torch.count_nonzero(shortcut[:, :8]) == 0 and torch.count_nonzero(shortcut[:, 24:]) == 0
    torch.testing.assert_close(shortcut[:, 8:24], nn.functional.avg_pool2d(x, 2))


def test_kaiming_initialisation():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    conv = model.layer3[1].conv1                    # fan_out = 64 * 3 * 3
    assert abs(conv.weight.std().item() / (2.0 / 576) ** 0.5 - 1) < 0.05
    assert torch.all(model.layer3[1].bn1.weight == 1) and torch.all(model.layer3[1].bn1.bias == 0)


# ---- torchvision's layout, written from its well-known rules, not from our code -----------------

def torchvision_resnet_state(blocks, bottleneck, num_classes=1000, groups=1, width_per_group=64):
    """The ordered (key, shape) list of torchvision's ResNet state dict."""
    out = []

    def conv(prefix, cout, cin, k):
        out.append((f"{prefix}.weight", (cout, cin, k, k)))

    def bn(prefix, c):
        out.extend([(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)),
                    (f"{prefix}.running_mean", (c,)), (f"{prefix}.running_var", (c,)),
                    (f"{prefix}.num_batches_tracked", ())])

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin, expansion = 64, (4 if bottleneck else 1)
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            cout = planes * expansion
            if bottleneck:
                width = int(planes * width_per_group / 64) * groups
                conv(f"{p}.conv1", width, cin, 1)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width // groups, 3)
                bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", cout, width, 1)
                bn(f"{p}.bn3", cout)
            else:
                conv(f"{p}.conv1", planes, cin, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            if i == 0 and (stage > 1 or cin != cout):
                conv(f"{p}.downsample.0", cout, cin, 1)
                bn(f"{p}.downsample.1", cout)
            cin = cout
    out.extend([("fc.weight", (num_classes, cin)), ("fc.bias", (num_classes,))])
    return out


@pytest.mark.parametrize("arch, layout", [
    ("resnet18", dict(blocks=(2, 2, 2, 2), bottleneck=False)),
    ("resnet34", dict(blocks=(3, 4, 6, 3), bottleneck=False)),
    ("resnet50", dict(blocks=(3, 4, 6, 3), bottleneck=True)),
    ("resnext50_32x4d", dict(blocks=(3, 4, 6, 3), bottleneck=True, groups=32, width_per_group=4)),
    ("wide_resnet50_2", dict(blocks=(3, 4, 6, 3), bottleneck=True, width_per_group=128)),
])
def test_resnet_state_dict_is_torchvisions(arch, layout):
    got = [(k, tuple(v.shape)) for k, v in meta_model(arch).state_dict().items()]
    assert got == torchvision_resnet_state(**layout)


def test_torchvision_state_dict_loads_strictly():
    src, dst = create_model("resnet18"), create_model("resnet18")
    state = {k: v.clone() for k, v in src.state_dict().items()}
    assert dst.load_state_dict(state, strict=True).missing_keys == []
    assert torch.equal(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


# ---- the API -----------------------------------------------------------------------------------

def test_datasets():
    assert input_shape("mnist") == (1, 28, 28) and num_classes("mnist") == 10
    assert input_shape("CIFAR10") == (3, 32, 32) and num_classes("cifar10") == 10
    assert input_shape("imagenet") == (3, 224, 224) and num_classes("imagenet") == 1000
    with pytest.raises(ModelZooError, match=r"unknown dataset 'cifar100'.*known: cifar10, "):
        input_shape("cifar100")


def test_dataset_of_follows_the_name_rule():
    assert dataset_of("lenet5") == dataset_of("lenet_300_100") == "mnist"
    assert dataset_of("simplenet_mnist") == "mnist"
    assert dataset_of("resnet20_cifar") == dataset_of("vgg16_bn_cifar") == "cifar10"
    assert dataset_of("resnet50") == dataset_of("mobilenet_050") == "imagenet"
    # Names not registered follow Distiller's rule.
    assert dataset_of("mynet_cifar") == "cifar10"
    assert dataset_of("mynet_MNIST") == "mnist"
    assert dataset_of("mynet") == "imagenet"


def test_create_model_is_case_insensitive_and_checks_the_dataset():
    assert isinstance(create_model("ResNet18", dataset="ImageNet"), ResNet)
    assert create_model("resnet20_cifar", num_classes=100).fc.out_features == 100
    with pytest.raises(ModelZooError, match=r"'resnet18' is built for imagenet, not cifar10; "
                                            r"cifar10 models: .*resnet20_cifar"):
        create_model("resnet18", dataset="cifar10")


def test_unknown_arch_message():
    with pytest.raises(UnknownArchError) as info:
        create_model("resnet20_cifr")
    err = info.value
    assert isinstance(err, CompressorError) and isinstance(err, KeyError)
    msg = str(err)
    assert msg.startswith("unknown architecture 'resnet20_cifr' (did you mean 'resnet20_cifar'")
    assert all(name in msg for name in NATIVE)     # every known name is listed, none elided
    assert "more)" not in msg
    with pytest.raises(UnknownArchError, match="did you mean"):
        ARCHITECTURES["LeNet_300"]
    assert "LeNet5" in ARCHITECTURES and "lenet6" not in ARCHITECTURES


def test_architectures_mapping():
    ctor, dataset = ARCHITECTURES["resnet20_cifar"]
    assert dataset == "cifar10" and callable(ctor)
    assert list(ARCHITECTURES) == list_architectures() and len(ARCHITECTURES) >= len(NATIVE)


class TinyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


@pytest.fixture
def clean_registry():
    before = dict(registry._NATIVE), dict(registry._TORCHVISION_WEIGHTS)
    yield
    for table, saved in zip((registry._NATIVE, registry._TORCHVISION_WEIGHTS), before):
        table.clear()
        table.update(saved)


def test_register_model(clean_registry):
    assert register_model("My_TinyNet", TinyNet, "MNIST") is TinyNet
    assert ARCHITECTURES["my_tinynet"] == (TinyNet, "mnist")
    assert dataset_of("my_tinynet") == "mnist"
    assert isinstance(create_model("MY_TINYNET"), TinyNet)
    with pytest.raises(ModelZooError, match="already registered"):
        register_model("my_tinynet", lambda: TinyNet(), "mnist")
    with pytest.raises(ModelZooError, match="already registered"):
        register_model("lenet5", TinyNet, "mnist")
    register_model("lenet5", TinyNet, "mnist", replace=True)
    assert isinstance(create_model("lenet5"), TinyNet)
    with pytest.raises(ModelZooError, match="unknown dataset 'svhn'"):
        register_model("x", TinyNet, "svhn")
    with pytest.raises(ModelZooError, match="reserved for torchvision"):
        register_model("tv_x", TinyNet, "imagenet")


# ---- torchvision: optional and lazy --------------------------------------------------------------

@pytest.fixture
def no_torchvision(monkeypatch):
    """As on this project's machines: torchvision absent (or failing to import)."""
    torchvision_models.reset_cache()
    monkeypatch.setitem(torchvision_models._CACHE, "module", None)
    yield
    torchvision_models.reset_cache()


def test_pretrained_needs_torchvision(no_torchvision):
    with pytest.raises(ModelZooError, match="torchvision, which is not installed or does not"):
        create_model("resnet50", pretrained=True)
    with pytest.raises(ModelZooError, match="'resnet20_cifar' has no pretrained weights"):
        create_model("resnet20_cifar", pretrained=True)
    with pytest.raises(UnknownArchError):
        create_model("tv_resnet18")


def test_torchvision_is_not_imported_for_native_models(monkeypatch):
    attempts = []

    class Spy:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] == "torchvision":
                attempts.append(name)
            return None

    already_imported = "torchvision" in sys.modules  # then no import is attempted at all
    torchvision_models.reset_cache()
    monkeypatch.setattr(sys, "meta_path", [Spy()] + sys.meta_path)
    create_model("resnet20_cifar")
    ARCHITECTURES["lenet5"]
    list_architectures(include_torchvision=False)
    dataset_of("mobilenet")
    assert attempts == []
    list_architectures()               # the full list does look for it, once
    list_architectures()
    assert attempts == ([] if already_imported else ["torchvision"])
    torchvision_models.reset_cache()


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in torchvision.models with a resnet18 (our own, weights set to 0.5) and a net
    whose name we do not define."""
    def tv_resnet18(weights=None, **kwargs):
        model = create_model("resnet18", **kwargs)
        if weights is not None:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(0.5)
        return model

    def tv_squeezenet1_0(weights=None, num_classes=1000):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    builders = {"resnet18": tv_resnet18, "squeezenet1_0": tv_squeezenet1_0}
    models = types.ModuleType("torchvision.models")
    models.__dict__.update(builders)
    models.list_models = lambda module=None: sorted(builders)
    models.get_model = lambda name, weights=None, **kw: builders[name](weights=weights, **kw)
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    torchvision_models.reset_cache()
    yield
    torchvision_models.reset_cache()


def test_torchvision_models_join_lazily(fake_torchvision):
    names = list_architectures()
    assert {"tv_resnet18", "tv_squeezenet1_0", "squeezenet1_0", "resnet18"} <= set(names)
    assert "tv_squeezenet1_0" in str(pytest.raises(UnknownArchError, create_model, "squeezenet"))
    assert dataset_of("tv_squeezenet1_0") == ARCHITECTURES["squeezenet1_0"].dataset == "imagenet"
    assert isinstance(create_model("SqueezeNet1_0"), nn.Sequential)
    # Our resnet18 keeps the plain name; torchvision's is reachable with the prefix.
    assert isinstance(ARCHITECTURES["resnet18"].ctor(), ResNet)
    assert isinstance(ARCHITECTURES["tv_resnet18"].ctor, torchvision_models.TorchvisionBuilder)
    with pytest.raises(ModelZooError, match="built for imagenet, not cifar10"):
        create_model("tv_resnet18", dataset="cifar10")


def test_pretrained_loads_torchvision_weights_into_ours(fake_torchvision):
    model = create_model("resnet18", pretrained=True)
    assert isinstance(model, ResNet)
    assert all(torch.all(p == 0.5) for p in model.parameters())
    with pytest.raises(ModelZooError, match="has 1000 classes"):
        create_model("resnet18", pretrained=True, num_classes=10)
    tv = create_model("tv_resnet18", pretrained=True)
    assert torch.all(tv.fc.weight == 0.5)
