"""LayerNorm over channels told the mask (``compressor.thinning.norms``): ConvNeXt- and ViT-style
residual streams thin exactly (issue 12), in float64 under the bound of ``helpers.exact``."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor
from compressor.checkpoint import load_checkpoint, save_checkpoint
from compressor.errors import ThinningError
from compressor.thinning import analyze, contract_model, remove_filters
from compressor.thinning.norms import MaskedLayerNorm, tell_norms

from helpers.exact import assert_same_function


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: permute, F.layer_norm over the channels, permute."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


# the graph's table knows torchvision's class by its qualified name (no torchvision needed here)
LayerNorm2d.__module__ = "torchvision.models.convnext"


class CNBlock(nn.Module):
    """ConvNeXt's block: depthwise 7x7, LayerNorm over channels (NHWC), MLP, layer scale, residual."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXtLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8))
        self.b1, self.b2 = CNBlock(8), CNBlock(8)
        self.down = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 16, 2, 2))
        self.b3 = CNBlock(16)
        self.head_norm = LayerNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.b3(self.down(self.b2(self.b1(self.stem(x)))))
        return self.fc(self.head_norm(x).mean((2, 3)))


class ViTLike(nn.Module):
    """ViT's residual stream without attention: patches, class token, position embedding,
    pre-norm MLP blocks, the final LayerNorm and the head on the class token."""

    def __init__(self, c=12, n=16):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, c, 4, 4)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, c) * 0.1)
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.mlp1 = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.mlp2 = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.ln = nn.LayerNorm(c)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding
        x = x + self.mlp1(self.ln1(x))
        x = x + self.mlp2(self.ln2(x))
        return self.head(self.ln(x)[:, 0])


def _random_norms(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _schedule(model, x, sparsity=0.3):
    """What a user writes: the dry run's thinnable layers, Filters on convolutions and Cols
    on linears, automatic coupling (as benchmarks/bench_reach.py)."""
    report = analyze(model, x)
    kinds = dict(model.named_modules())
    layers = [n for n in report.thinnable if not n.startswith(("fc", "head"))]
    pruners, policies = {}, []
    for key, group, cls in (("f", "Filters", nn.Conv2d), ("n", "Cols", nn.Linear)):
        names = [f"{n}.weight" for n in layers if isinstance(kinds[n], cls)]
        if names:
            pruners[key] = {"class": "L1RankedStructureParameterPruner", "group_type": group,
                            "desired_sparsity": sparsity, "weights": names}
            policies.append({"pruner": {"instance_name": key}, "epochs": [0]})
    cfg = {"version": 1, "input_shape": list(x.shape[1:]), "pruners": pruners,
           "policies": policies}
    return compressor.dict_config(model, None, cfg, example_input=x)


def _masked(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayerNorm)}


# ---- the module -------------------------------------------------------------------------------

@pytest.mark.parametrize("make, shape", [(lambda: nn.LayerNorm(6), (2, 5, 6)),
                                         (lambda: LayerNorm2d(6), (2, 6, 3, 3))])
def test_told_nothing_it_is_the_plain_layer_norm(float64, make, shape):
    plain = _random_norms(make())
    told = MaskedLayerNorm.from_layer_norm(copy.deepcopy(plain), -1 if shape[-1] == 6 else 1)
    x = torch.randn(shape)
    assert torch.equal(told(x), plain(x))
    assert set(told.state_dict()) == set(plain.state_dict())   # 'kept' is not persistent


def test_told_it_normalizes_over_the_kept_channels_and_outputs_zero_elsewhere(float64):
    ln = _random_norms(nn.LayerNorm(6))
    told = MaskedLayerNorm.from_layer_norm(copy.deepcopy(ln), -1)
    told.exclude([1, 4])
    x = torch.randn(3, 6)
    keep = [0, 2, 3, 5]
    small = nn.LayerNorm(4)
    with torch.no_grad():
        small.weight.copy_(ln.weight[keep])
        small.bias.copy_(ln.bias[keep])
    y = told(x)
    assert torch.equal(y[:, [1, 4]], torch.zeros(3, 2))
    assert_same_function(y[:, keep], small(x[:, keep]))


# ---- ConvNeXt ---------------------------------------------------------------------------------

def test_convnext_like_every_layer_thins_exactly(float64):
    model = _random_norms(ConvNeXtLike())
    x = torch.randn(2, 3, 32, 32)
    report = analyze(model, x)
    assert sorted(report.thinnable) == sorted(
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "fc")
    sched = _schedule(model, x)
    sched.on_epoch_begin(0)
    told = _masked(model)   # every LayerNorm reading a pruned stream was told, by the mask store
    assert set(told) == {"stem.1", "b1.norm", "b2.norm", "down.0", "b3.norm", "head_norm"}
    with torch.no_grad():
        ref = model(x)
    n0 = sum(p.numel() for p in model.parameters())
    result = contract_model(model, x, store=sched)
    assert result.removed["stem.0"] == (2, 8) and result.removed["down.1"] == (4, 16)
    assert not _masked(model)   # all back to their own classes, narrower
    assert type(model.stem[1]) is LayerNorm2d and model.stem[1].normalized_shape == (6,)
    assert type(model.b3.norm) is nn.LayerNorm and model.b3.norm.normalized_shape == (12,)
    assert model.b1.layer_scale.shape == (6, 1, 1)
    with torch.no_grad():
        assert_same_function(model(x), ref)
    assert sum(p.numel() for p in model.parameters()) < 0.7 * n0


def test_training_keeps_masked_channels_zero_then_thins_exactly(float64):
    model = _random_norms(ConvNeXtLike())
    x = torch.randn(4, 3, 32, 32)
    sched = _schedule(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    target = torch.randn(4, 5)
    for step in range(3):
        sched.on_epoch_begin(step) if step == 0 else None
        sched.on_minibatch_begin(0, step, 3, opt)
        loss = F.mse_loss(model(x), target)
        sched.before_backward_pass(0, step, 3, loss, opt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.on_minibatch_end(0, step, 3, opt)
    excluded = (~model.b1.norm.kept).nonzero().flatten()
    assert len(excluded) == 2
    assert float(model.stem[0].weight.detach()[excluded].abs().sum()) == 0.0
    with torch.no_grad():
        ref = model(x)
    contract_model(model, x, optimizer=opt, store=sched)
    with torch.no_grad():
        assert_same_function(model(x), ref)
    loss = F.mse_loss(model(x), target)   # the optimizer's state was sliced along
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_checkpoints_resume_masked_and_replay_thinned(float64, tmp_path):
    torch.manual_seed(0)
    model = _random_norms(ConvNeXtLike())
    x = torch.randn(2, 3, 32, 32)
    sched = _schedule(model, x)
    sched.on_epoch_begin(0)
    with torch.no_grad():
        ref = model(x)
    # resumed while masked: the masks come back and the LayerNorms are told again
    path = save_checkpoint(str(tmp_path / "masked.pt"), model, scheduler=sched)
    again = ConvNeXtLike()
    load_checkpoint(again, path)   # its scheduler's mask store tells the LayerNorms
    assert set(_masked(again)) == set(_masked(model))
    with torch.no_grad():
        assert_same_function(again(x), ref)
    # thinned: a dense model replays the recipe (plain LayerNorms of the kept width), then loads
    contract_model(model, x, store=sched)
    path = save_checkpoint(str(tmp_path / "thin.pt"), model, scheduler=sched)
    fresh = ConvNeXtLike()
    load_checkpoint(fresh, path)
    assert not _masked(fresh) and fresh.b3.norm.normalized_shape == (12,)
    with torch.no_grad():
        assert_same_function(fresh(x), ref)


def test_a_layer_norm_not_told_refuses_with_why_and_tell_norms_fixes_it(float64):
    model = _random_norms(ConvNeXtLike())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():   # zero stream channel 3 by hand, without a scheduler's mask store
        for conv in (model.stem[0], model.b1.dw, model.b2.dw):
            conv.weight[3] = 0
            conv.bias[3] = 0
        for fc in (model.b1.fc2, model.b2.fc2):
            fc.weight[3] = 0
            fc.bias[3] = 0
    with pytest.raises(ThinningError, match=r"cannot thin stem\.0: LayerNorm 'stem\.1' normalizes "
                       r"over the channel dimension and still counts this channel in its mean "
                       r"and variance \(.*compressor\.thinning\.tell_norms\(model\)\)"):
        remove_filters(model, x)
    assert tell_norms(model, x) == {"stem.1": 1, "b1.norm": 1, "b2.norm": 1, "down.0": 1}
    with torch.no_grad():
        ref = model(x)
    remove_filters(model, x)
    assert model.stem[0].out_channels == 7
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_an_unknown_layer_norm_subclass_still_mixes_channels():
    class MyNorm(nn.LayerNorm):   # its own forward: we cannot know which dim it normalizes
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                                self.bias, self.eps).permute(0, 3, 1, 2)

    model = nn.Sequential(nn.Conv2d(3, 4, 1), MyNorm(4), nn.Conv2d(4, 2, 1))
    report = analyze(model, (3, 4, 4))
    assert "normalizes over the channel dimension (a removed channel would still count in its " \
           "mean and variance)" in report.blocked["0"]


# ---- ViT's residual stream --------------------------------------------------------------------

def test_vit_like_residual_stream_thins_exactly(float64):
    torch.manual_seed(0)
    model = _random_norms(ViTLike())
    with torch.no_grad():
        model.class_token.normal_()
    x = torch.randn(2, 3, 16, 16)
    assert "conv_proj" in analyze(model, x).thinnable   # the pruner masks the added entries
    sched = _schedule(model, x)
    sched.on_epoch_begin(0)
    gone = (sched.store.masks["conv_proj.weight"].flatten(1).sum(1) == 0).nonzero().flatten()
    assert len(gone) == 3
    for name in ("pos_embedding", "class_token"):   # masked with the stream's filters
        assert torch.equal(getattr(model, name)[..., gone], torch.zeros(1, getattr(model, name).shape[1], 3))
    assert set(_masked(model)) == {"ln1", "ln2", "ln"}
    with torch.no_grad():
        ref = model(x)
    contract_model(model, x, store=sched)
    assert model.conv_proj.out_channels == 9 and not _masked(model)
    assert model.pos_embedding.shape[-1] == model.class_token.shape[-1] == model.ln.weight.numel()
    with torch.no_grad():
        assert_same_function(model(x), ref)


# ---- Swin's residual stream and patch merging ---------------------------------------------------

def _patch_merging_pad(x):
    """torchvision's Swin: pad H and W to even sizes, join the four 2x2 phases on the channels."""
    H, W, _ = x.shape[-3:]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    return torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                      x[..., 1::2, 1::2, :]], -1)


# torchvision wraps it for torch.fx (a leaf call known by its qualified name)
_patch_merging_pad.__module__ = "torchvision.models.swin_transformer"
torch.fx.wrap("_patch_merging_pad")


class SwinLike(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, 4)
        self.norm0, self.norm1 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.mlp1 = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.merge_norm = nn.LayerNorm(4 * c)
        self.reduction = nn.Linear(4 * c, 2 * c, bias=False)
        self.norm2 = nn.LayerNorm(2 * c)
        self.mlp2 = nn.Sequential(nn.Linear(2 * c, 4 * c), nn.GELU(), nn.Linear(4 * c, 2 * c))
        self.norm = nn.LayerNorm(2 * c)
        self.head = nn.Linear(2 * c, 3)

    def forward(self, x):
        x = self.norm0(self.patch(x).permute(0, 2, 3, 1))
        x = x + self.mlp1(self.norm1(x))
        x = self.reduction(self.merge_norm(_patch_merging_pad(x)))
        x = x + self.mlp2(self.norm2(x))
        return self.head(self.norm(x).mean((1, 2)))


def test_swin_like_stream_and_patch_merging_thin_exactly(float64):
    torch.manual_seed(0)
    model = _random_norms(SwinLike())
    x = torch.randn(2, 3, 20, 20)   # 5x5 patches: the merging pads
    assert sorted(analyze(model, x).thinnable) == sorted(
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "head")
    sched = _schedule(model, x)
    sched.on_epoch_begin(0)
    assert {"norm0", "norm1", "merge_norm", "norm2", "norm"} <= set(_masked(model))
    with torch.no_grad():
        ref = model(x)
    contract_model(model, x, store=sched)
    c = model.patch.out_channels
    assert c < 8 and model.merge_norm.normalized_shape == (4 * c,) and not _masked(model)
    assert model.reduction.in_features == 4 * c
    with torch.no_grad():
        assert_same_function(model(x), ref)
