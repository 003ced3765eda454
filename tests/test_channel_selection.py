"""Channel selection: in a pre-activation ResNet, network slimming zeroes channels of batch norms
that read the residual stream (``pre_bn``, ``final_bn``); the stream keeps them (the shortcut
carries them on), so thinning makes the batch norm read only its kept channels and the layers after
it (``conv1``, a 1x1 ``downsample``, ``fc``) lose those inputs. The thinned network computes the
masked one's function, training goes on, checkpoints load into a dense model, and a second
thinning pass works on the already-selecting model."""
import copy
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import compressor
from compressor.checkpoint import load_checkpoint, save_checkpoint
from compressor.errors import ThinningError
from compressor.graph import conv_bn_pairs, following_activations
from compressor.masks import MaskStore
from compressor.models import create_model
from compressor.summary import compute_totals, model_performance_summary
from compressor.thinning import analyze, contract_model, remove_channels, replay, thin
from compressor.thinning.execute import apply_ops
from compressor.thinning.selection import is_selecting
from helpers import assert_same_function
from helpers.random_nets import RandomNet, networks
from helpers.thinning import randomize_bn, zero_structures

# Small tensors (one intra-op thread); thinned == masked is exact in float64.
pytestmark = pytest.mark.usefixtures("one_thread", "float64")

ARCHS = ["preact_resnet20_cifar", "preact_resnet20_cifar_conv_ds"]
SHAPE = (3, 32, 32)


def bn_weights(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def slim(model, sparsity):
    """NetworkSlimmingPruner over every batch norm (pre_bn, the blocks' bn, final_bn), one shot."""
    sched = compressor.dict_config(model, None, {
        "pruners": {"slim": {"class": "NetworkSlimmingPruner", "desired_sparsity": sparsity,
                             "weights": [f"{n}.weight" for n in bn_weights(model)]}},
        "policies": [{"pruner": {"instance_name": "slim"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    return sched


def slimmed(arch, sparsity=0.45, seed=0):
    """A model with trained-looking batch norms (random gammas, shifts and statistics), slimmed."""
    torch.manual_seed(seed)
    model = create_model(arch).eval()
    randomize_bn(model, seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.01, 1.0)
    return model, slim(model, sparsity)


def macs(model):
    return int(compute_totals(model_performance_summary(model, torch.zeros(1, *SHAPE)))["MACs"])


def n_zero(t):
    return int((t == 0).sum())


def blocks(model):
    return [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]


@pytest.mark.parametrize("kind", ["contract_model", "remove_filters"])
@pytest.mark.parametrize("arch", ARCHS)
def test_slimmed_preact_resnet_thins_with_channel_selection(arch, kind, tmp_path):
    model, sched = slimmed(arch)
    stream_bns = [b.pre_bn for b in blocks(model)] + [model.final_bn]
    assert all(n_zero(bn.weight) > 0 for bn in stream_bns)    # slimming reached every one
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        ref = model(x)
    before = macs(model)
    result = thin(model, kind, SHAPE, optimizer=opt, store=sched)
    assert result.nonzero_bias_removed == 0
    assert set(result.selected) >= {n for n in bn_weights(model) if "pre_bn" in n} | {"final_bn"}
    with torch.no_grad():
        assert_same_function(model(x), ref)
    assert macs(model) < before
    assert all(m.shape == sched.store.params[n].shape for n, m in sched.store.masks.items())

    # the checkpoint loads into a dense model: the recipe, with its selections, is replayed first
    path = save_checkpoint(str(tmp_path / "thin.pth.tar"), model, opt, sched, arch=arch)
    raw = torch.load(path, weights_only=True)
    assert "layer1.0.pre_bn.index" in raw["state_dict"]
    assert raw["thinning_recipes"][0]["selections"]
    fresh, _, _, _ = load_checkpoint(create_model(arch).eval(), path)
    assert is_selecting(fresh.layer1[0].pre_bn)
    with torch.no_grad():
        assert_same_function(fresh(x), ref)


def test_selection_is_what_shrinks_the_first_convolutions():
    """Fails if the selection were skipped: each block's conv1 (and a 1x1 downsample reading the
    same pre-activation) reads exactly the channels its pre_bn kept, fewer than the stream has."""
    model, sched = slimmed("preact_resnet20_cifar_conv_ds")
    kept = {id(b): int((b.pre_bn.weight != 0).sum()) for b in blocks(model)}
    stream = {id(b): b.pre_bn.num_features for b in blocks(model)}
    contract_model(model, SHAPE, store=sched)
    for b in blocks(model):
        assert b.pre_bn.num_features == b.conv1.in_channels == kept[id(b)]
        assert b.pre_bn.in_channels > kept[id(b)] and b.pre_bn.in_channels <= stream[id(b)]
        assert b.pre_bn.index.tolist() == sorted(b.pre_bn.index.tolist())
        if b.downsample is not None:
            assert b.downsample.in_channels == kept[id(b)]
    assert model.fc.in_features == model.final_bn.num_features < model.final_bn.in_channels


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=0.01),
], ids=["sgd-momentum", "adam"])
def test_training_continues_like_the_masked_network(make_opt, float64):
    model, sched = slimmed("preact_resnet20_cifar")
    model.train()
    opt = make_opt(model.parameters())
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, *SHAPE, generator=g), torch.randint(0, 10, (4,), generator=g))
               for _ in range(3)]

    def step(net, optimizer, store, batch):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(batch[0]), batch[1]).backward()
        optimizer.step()
        store.apply_after_step()

    step(model, opt, sched.store, batches[0])          # optimizer state exists before thinning
    dense = copy.deepcopy(model)
    dense_opt = make_opt(dense.parameters())
    dense_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    dense_store = MaskStore(dense)
    for name, m in sched.store.masks.items():
        dense_store.set(name, m.clone())

    result = contract_model(model, SHAPE, optimizer=opt, store=sched)
    assert result.selected
    for batch in batches[1:]:
        step(model, opt, sched.store, batch)
        step(dense, dense_opt, dense_store, batch)
    tensors = result.recipe["tensors"]
    thin_params = dict(model.named_parameters())
    for name, p in dense.named_parameters():
        expect = apply_ops(p.detach(), tensors[name]["ops"]) if name in tensors else p.detach()
        # float64: the two differ only by summation order (~1e-16 relative per operation); a
        # wrong thinned optimizer state or gradient would differ at the learning rate's scale.
        assert thin_params[name].dtype == torch.float64
        torch.testing.assert_close(thin_params[name].detach(), expect, rtol=1e-10, atol=1e-12)


def test_second_thinning_pass_on_a_selecting_model(tmp_path):
    arch = "preact_resnet20_cifar"
    model, sched = slimmed(arch, 0.3)
    assert following_activations(model)["layer1.0.conv2.weight"] == "layer1.1.pre_relu"
    contract_model(model, SHAPE, store=sched)
    first = {b.pre_bn: b.pre_bn.num_features for b in blocks(model)}
    # the graph helpers trace a selecting model; its channels are not the stream's
    assert conv_bn_pairs(model)["layer1.0.conv1.weight"] is model.layer1[0].bn
    assert "layer1.0.conv2.weight" not in following_activations(model)

    sched2 = slim(model, 0.5)               # more channels, of the already thinned model
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        ref = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = contract_model(model, SHAPE, optimizer=opt, store=sched2)
    assert result.changed and result.selected
    assert any(bn.num_features < n for bn, n in first.items())
    with torch.no_grad():
        assert_same_function(model(x), ref)
    assert len(model.thinning_recipes) == 2

    path = save_checkpoint(str(tmp_path / "twice.pth.tar"), model, opt, sched2, arch=arch)
    fresh, _, _, _ = load_checkpoint(create_model(arch).eval(), path)
    with torch.no_grad():
        assert_same_function(fresh(x), ref)
    again = contract_model(model, SHAPE)    # nothing left to do
    assert not again.changed


def test_channels_no_consumer_reads_are_selected_away():
    """remove_channels: block conv1 ignores two stream channels (zero input weights); the
    stream keeps them, the block's pre_bn stops reading them."""
    torch.manual_seed(0)
    model = create_model("preact_resnet20_cifar").eval()
    randomize_bn(model)
    with torch.no_grad():
        model.layer1[1].conv1.weight[:, [0, 3]] = 0
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        ref = model(x)
    result = remove_channels(model, SHAPE)
    assert result.selected == {"layer1.1.pre_bn": (14, 16)}
    assert model.layer1[1].conv1.in_channels == 14 and model.conv1.out_channels == 16
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_a_stream_channel_every_batch_norm_drops_is_removed_altogether():
    """contract_model: when every batch norm reading a stream channel drops it, nothing reads it
    and the stem and the blocks' second convolutions lose that filter too."""
    torch.manual_seed(0)
    model = create_model("preact_resnet20_cifar_conv_ds").eval()
    randomize_bn(model)
    with torch.no_grad():
        for bn in [b.pre_bn for b in model.layer1] + [model.layer2[0].pre_bn]:
            bn.weight[5] = 0
            bn.bias[5] = 0
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        ref = model(x)
    result = contract_model(model, SHAPE)
    assert model.conv1.out_channels == 15 and model.layer1[2].conv2.out_channels == 15
    assert "layer1.0.pre_bn" not in result.selected     # it reads all 15 that are left
    assert not is_selecting(model.layer1[0].pre_bn)
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_recipes_without_selection_are_unchanged():
    """Slimming a plain ResNet, or only the blocks' inner batch norms of a pre-activation one,
    needs no selection: version-1 recipes without a 'selections' entry, plain batch norms."""
    for arch, pattern in (("resnet20_cifar", ""), ("preact_resnet20_cifar", ".bn")):
        torch.manual_seed(0)
        model = create_model(arch).eval()
        randomize_bn(model)
        names = [f"{n}.weight" for n in bn_weights(model) if pattern in n]
        sched = compressor.dict_config(model, None, {
            "pruners": {"slim": {"class": "NetworkSlimmingPruner", "desired_sparsity": 0.4,
                                 "weights": names}},
            "policies": [{"pruner": {"instance_name": "slim"}, "epochs": [0]}]})
        sched.on_epoch_begin(0)
        result = contract_model(model, SHAPE, store=sched)
        assert result.changed and not result.selected
        assert result.recipe["version"] == 1 and "selections" not in result.recipe
        assert not any(is_selecting(m) for m in model.modules())


def test_report_and_state_dict_round_trip():
    model, sched = slimmed("preact_resnet20_cifar")
    report = analyze(model, SHAPE)
    assert report.selected["layer1.0.pre_bn"][1] == 16
    assert "channel selection" in report.text()
    contract_model(model, SHAPE, store=sched)
    fresh = replay(create_model("preact_resnet20_cifar").eval(), model.thinning_recipes)
    fresh.load_state_dict(model.state_dict())         # the index buffer loads like any other
    assert torch.equal(fresh.layer2[1].pre_bn.index, model.layer2[1].pre_bn.index)
    double = copy.deepcopy(fresh).to(torch.float64)   # the index stays an integer buffer
    assert double.layer2[1].pre_bn.index.dtype == torch.long
    with torch.no_grad():
        double(torch.randn(1, *SHAPE, dtype=torch.float64))


def test_bad_selection_entries_are_refused_before_any_change():
    model, _ = slimmed("preact_resnet20_cifar")
    recipe = thin(model, "contract_model", SHAPE).recipe
    dense = create_model("preact_resnet20_cifar")

    def broken(**change):
        r = copy.deepcopy(recipe)
        for key, value in change.items():
            r[key] = value
        return r

    sel = recipe["selections"]["layer1.0.pre_bn"]
    cases = [
        (broken(version=99), r"recipe version 99"),
        (broken(selections={"layer1.0.conv1": sel}), r"'layer1.0.conv1' \(Conv2d\) cannot select"),
        (broken(selections={"layer1.0.pre_bn": {**sel, "index": sel["index"] + [99]}}),
         r"bad channel selection for 'layer1.0.pre_bn'"),
        (broken(selections={"layer1.0.pre_bn": {**sel, "index": sel["index"][:-1]}}),
         r"reads \d+ channels, its batch norm will have"),
    ]
    for bad, pattern in cases:
        with pytest.raises(ThinningError, match=pattern):
            replay(dense, [bad])
        pre_bn = dense.layer1[0].pre_bn
        assert pre_bn.num_features == 16 and not is_selecting(pre_bn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replay(dense, [recipe])
    assert is_selecting(dense.layer1[0].pre_bn)


# ---- random networks: zero batch-norm channels anywhere, thin, thin again --------------------


@torch.no_grad()
def zero_bn_channels(model, frac, seed):
    """gamma = beta = 0 on a random fraction of every batch norm's channels (none of the layers
    around them are touched, as network slimming leaves a pre-activation batch norm)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            drop = torch.rand(m.num_features, generator=g) < frac
            m.weight[drop] = 0
            m.bias[drop] = 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), seed=st.integers(0, 2 ** 16), frac=st.floats(0.2, 0.7),
       kind=st.sampled_from(["remove_filters", "remove_channels", "contract_model"]))
def test_random_networks_select_exactly(net, seed, frac, kind):
    shape, ops, head_in, hidden = net
    torch.manual_seed(seed)
    model = RandomNet(ops, head_in, hidden).eval()
    randomize_bn(model, seed)
    x = torch.randn(3, *shape)
    for step in range(2):          # a second pass on what the first one left
        zero_bn_channels(model, frac, seed + step)
        zero_structures(model, shape, frac / 3, seed + step,
                        mode="channels" if kind == "remove_channels" else "filters")
        with torch.no_grad():
            ref = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = thin(model, kind, shape)
        if result.nonzero_bias_removed:     # plain thinning's counted approximation (a zero
            return                          # filter with a bias), not what is tested here
        with torch.no_grad():
            assert_same_function(model(x), ref)
    fresh = replay(RandomNet(ops, head_in, hidden).eval(), getattr(model, "thinning_recipes", []))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_same_function(fresh(x), model(x))
