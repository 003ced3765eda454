"""Attention heads of torchvision's transformers, on hand-built modules with the same patterns
(torchvision is not importable in the main test python): ViT's ``nn.MultiheadAttention`` heads
thinned exactly through ``ThinMultiheadAttention``, head counts rewritten, checkpoints replayed,
and attention's matmul MACs counted in the compute table. Exactness in float64
(``assert_same_function``)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.exact import assert_same_function

from compressor.graph import analyze_graph
from compressor.summary import model_performance_summary
from compressor.thinning import analyze, contract_model
from compressor.thinning.heads import apply_masks, class_masks
from compressor.thinning.mha import ThinMultiheadAttention, make_thin

pytestmark = pytest.mark.usefixtures("float64")

E, H = 16, 4


class EncoderBlock(nn.Module):
    """torchvision's ViT EncoderBlock: pre-norm, self-attention with need_weights=False, MLP."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.num_heads = H
        self.ln_1 = nn.LayerNorm(E)
        self.self_attention = nn.MultiheadAttention(E, H, batch_first=batch_first)
        self.ln_2 = nn.LayerNorm(E)
        self.mlp = nn.Sequential(nn.Linear(E, 24), nn.GELU(), nn.Linear(24, E))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class TinyViT(nn.Module):
    def __init__(self, blocks=2):
        super().__init__()
        self.embed = nn.Linear(6, E)
        self.layers = nn.Sequential(*(EncoderBlock() for _ in range(blocks)))
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        return self.head(self.layers(self.embed(x))[:, 0])


def _attn_outputs(model):
    return [f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def _masked_vit(fraction=0.5, seed=0):
    torch.manual_seed(seed)
    model = TinyViT().eval()
    x = torch.randn(2, 5, 6)
    g = analyze_graph(model, x)
    apply_masks(model, class_masks(g, model, fraction, readers=_attn_outputs(model)))
    return model, x


def test_heads_are_thinnable_classes():
    torch.manual_seed(0)
    model = TinyViT().eval()
    text = str(analyze(model, torch.randn(2, 5, 6)))
    assert "layers.0.self_attention\n" in text + "\n"
    g = analyze_graph(model, torch.randn(2, 5, 6))
    prod = next(p for p in g.producers if p.weight == "layers.0.self_attention.in_proj_weight")
    roots = g.roots(prod.ids)
    assert len(roots) == 3 * E and len(set(roots)) == H      # q, k, v rows of 4 heads
    assert roots[:E] == roots[E:2 * E] == roots[2 * E:]       # head j: rows j*d.. in each block


def test_vit_heads_thinned_exactly():
    model, x = _masked_vit()
    with torch.no_grad():
        ref = model(x)
    result = contract_model(model, x)
    attn = model.layers[0].self_attention
    assert type(attn) is ThinMultiheadAttention
    assert attn.num_heads == 2 and model.layers[0].num_heads == 2
    assert attn.in_proj_weight.shape == (3 * 8, E) and attn.out_proj.weight.shape == (E, 8)
    assert attn.embed_dim == E and attn.head_dim == 4
    assert result.removed["layers.0.self_attention"] == (24, 48)
    with torch.no_grad():
        assert_same_function(model(x), ref)


def test_thin_mha_matches_mha_on_every_argument():
    """Before any head goes, ThinMultiheadAttention is nn.MultiheadAttention on masks, weights,
    sequence-first and unbatched inputs."""
    torch.manual_seed(1)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
        thin = ThinMultiheadAttention(E, H, batch_first=batch_first).eval()
        thin.load_state_dict(mha.state_dict())
        q = torch.randn(2, 5, E) if batch_first else torch.randn(5, 2, E)
        kv = torch.randn(2, 7, E) if batch_first else torch.randn(7, 2, E)
        kpm = torch.zeros(2, 7)
        kpm[1, 5:] = float("-inf")
        am = torch.randn(5, 7)
        for kw in ({}, {"need_weights": False}, {"key_padding_mask": kpm, "attn_mask": am},
                   {"average_attn_weights": False}):
            a, wa = mha(q, kv, kv, **kw)
            b, wb = thin(q, kv, kv, **kw)
            assert_same_function(b, a)
            assert (wa is None) == (wb is None)
            if wa is not None:
                assert_same_function(wb, wa)
    mha = nn.MultiheadAttention(E, H).eval()
    thin = make_thin(nn.MultiheadAttention(E, H).eval())
    thin.load_state_dict(mha.state_dict())
    u = torch.randn(5, E)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert_same_function(thin(u, u, u)[0], mha(u, u, u)[0])
    assert_same_function(thin(u, u, u, attn_mask=causal, is_causal=True)[0],
                         mha(u, u, u, attn_mask=causal, is_causal=True)[0])


def test_thin_mha_inner_width_differs_from_residual_width():
    """Heads gone (inner 8) and the residual width kept (16): still the masked function."""
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    keep = torch.tensor([0, 2])
    rows = torch.cat([torch.arange(h * 4, h * 4 + 4) for h in keep.tolist()])
    with torch.no_grad():
        for h in (1, 3):
            mha.out_proj.weight[:, h * 4:h * 4 + 4] = 0
    x = torch.randn(3, 6, E)
    ref = mha(x, x, x, need_weights=False)[0]
    make_thin(mha)
    with torch.no_grad():
        idx = torch.cat([rows, rows + E, rows + 2 * E])
        mha.in_proj_weight.data = mha.in_proj_weight.data[idx]
        mha.in_proj_bias.data = mha.in_proj_bias.data[idx]
        mha.out_proj.weight.data = mha.out_proj.weight.data[:, rows]
    mha.num_heads = 2
    assert_same_function(mha(x, x, x, need_weights=False)[0], ref)


def test_checkpoint_replays_the_thinned_vit(tmp_path):
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    model, x = _masked_vit(seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    contract_model(model, x, optimizer=opt)
    path = save_checkpoint(str(tmp_path / "vit.pth.tar"), model, opt)
    torch.manual_seed(9)
    dense = TinyViT().eval()
    dense, _, _, _ = load_checkpoint(dense, path)
    for blk in dense.layers:
        assert type(blk.self_attention) is ThinMultiheadAttention
        assert blk.self_attention.num_heads == blk.num_heads == 2
    with torch.no_grad():
        assert_same_function(dense(x), model(x))


@pytest.mark.parametrize("make, why", [
    (lambda: nn.MultiheadAttention(E, H, batch_first=True, kdim=8, vdim=8),
     "separate q/k/v projection weights"),
    (lambda: nn.MultiheadAttention(E, H, batch_first=True, add_bias_kv=True),
     "add_bias_kv / add_zero_attn are not supported"),
])
def test_unsupported_mha_is_refused_with_why(make, why):
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, E)
            self.kv = nn.Linear(6, 8 if "separate" in why else E)
            self.attn = make()
            self.out = nn.Linear(E, 2)

        def forward(self, x):
            k = self.kv(x)
            return self.out(self.attn(self.inp(x), k, k, need_weights=False)[0])

    text = str(analyze(Cross().eval(), torch.randn(2, 5, 6)))
    assert f"MultiheadAttention 'attn': {why}" in text


def test_attention_macs_counted_for_multihead_attention():
    """One MHA, batch 1, T=5 tokens, E=16, 4 heads of 4: projections 5*(3*16*16) + 5*16*16 and the
    two matmuls 2*4*5*5*4, by hand."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    x = torch.randn(1, 5, E)
    df = model_performance_summary(Wrap(), x)
    by = {r["Type"]: r for _, r in df.iterrows()}
    assert by["MultiheadAttention"]["MACs"] == 5 * 3 * 16 * 16 + 5 * 16 * 16
    assert by["attention (QK^T, AV)"]["MACs"] == 2 * 4 * 5 * 5 * 4
    make_thin(mha)
    with torch.no_grad():
        rows = torch.arange(8)
        idx = torch.cat([rows, rows + E, rows + 2 * E])
        mha.in_proj_weight.data = mha.in_proj_weight.data[idx]
        mha.in_proj_bias.data = mha.in_proj_bias.data[idx]
        mha.out_proj.weight.data = mha.out_proj.weight.data[:, rows]
    mha.num_heads = 2
    df = model_performance_summary(Wrap(), x)
    by = {r["Type"]: r for _, r in df.iterrows()}
    assert by["ThinMultiheadAttention"]["MACs"] == 5 * 3 * 8 * 16 + 5 * 8 * 16
    assert by["attention (QK^T, AV)"]["MACs"] == 2 * 2 * 5 * 5 * 4


# ---- torchvision's window attention (Swin V1/V2, MaxViT): needs torchvision -------------------
# The rules are keyed by torchvision's class names, so these tests build tiny torchvision models;
# they are skipped where torchvision is not installed (run them in a venv that has it).

def _tv():
    return pytest.importorskip("torchvision")


def _swin(v2):
    _tv()
    from torchvision.models import swin_transformer as st
    kw = dict(block=st.SwinTransformerBlockV2, downsample_layer=st.PatchMergingV2) if v2 else {}
    torch.manual_seed(0)
    m = st.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                           window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=5, **kw)
    return m.double().eval(), torch.randn(2, 3, 40, 40)   # 10x10 tokens: padded and shifted


def _maxvit():
    _tv()
    from torchvision.models.maxvit import MaxVit
    torch.manual_seed(0)
    m = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
               block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5)
    return m.double().eval(), torch.randn(2, 3, 32, 32)


def _mask_heads(model, x, fraction=0.5):
    with torch.no_grad():   # non-zero relative position biases, so a misplaced head column shows
        for n, p in model.named_parameters():
            if n.endswith("relative_position_bias_table"):
                p.normal_()
    g = analyze_graph(model, x)
    readers = [c.module for c in g.consumers if c.module.endswith((".attn.proj", ".merge"))]
    assert readers
    apply_masks(model, class_masks(g, model, fraction, readers=readers))


@pytest.mark.parametrize("build", ["swin", "swin_v2", "maxvit"])
def test_window_attention_heads_thinned_exactly(build, tmp_path):
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    make = {"swin": lambda: _swin(False), "swin_v2": lambda: _swin(True), "maxvit": _maxvit}[build]
    model, x = make()
    _mask_heads(model, x)
    with torch.no_grad():
        ref = model(x)
    result = contract_model(model, x)
    assert result.removed
    with torch.no_grad():
        assert_same_function(model(x), ref)
    attn = [m for m in model.modules() if type(m).__name__.startswith("Thin")]
    assert attn
    for m in attn:
        heads = m.n_heads if build == "maxvit" else m.num_heads
        table = m.logit_scale if build == "swin_v2" else m.relative_position_bias_table
        qkv = m.to_qkv if build == "maxvit" else m.qkv
        assert 2 * heads * m.head_dim == qkv.in_features          # half the heads are gone
        assert table.shape[1 if build != "swin_v2" else 0] == heads
        assert qkv.out_features == 3 * heads * m.head_dim
    path = save_checkpoint(str(tmp_path / "m.pth.tar"), model)
    dense, _ = make()
    dense, _, _, _ = load_checkpoint(dense, path)
    assert [type(m).__name__ for m in dense.modules()] == [type(m).__name__ for m in model.modules()]
    with torch.no_grad():
        assert_same_function(dense(x), model(x))


def test_swin_v2_position_bias_mlp_neurons_thinned_exactly(tmp_path):
    """Swin-V2's cpb_mlp hidden neurons: zeroed by their first-layer row and bias in one block,
    by their second-layer column in the other; both go, exactly, and a dense model reloads it."""
    from compressor.checkpoint import load_checkpoint, save_checkpoint
    model, x = _swin(True)
    cpbs = [m.cpb_mlp for m in model.modules() if hasattr(m, "cpb_mlp")]
    n = cpbs[0][0].out_features
    gone = torch.randperm(n, generator=torch.Generator().manual_seed(3))[: n // 3]
    with torch.no_grad():
        cpbs[0][0].weight[gone] = 0
        cpbs[0][0].bias[gone] = 0
        cpbs[1][2].weight[:, gone] = 0
        ref = model(x)
    assert "cpb_mlp.0" in " ".join(analyze(model, x).thinnable)
    contract_model(model, x)
    assert cpbs[0][0].out_features == cpbs[0][2].in_features == n - len(gone)
    assert cpbs[1][0].out_features == cpbs[1][2].in_features == n - len(gone)
    assert cpbs[2][0].out_features == n                      # nothing zeroed there: kept
    with torch.no_grad():
        assert_same_function(model(x), ref)
    path = save_checkpoint(str(tmp_path / "m.pth.tar"), model)
    dense, _ = _swin(True)
    dense, _, _, _ = load_checkpoint(dense, path)
    with torch.no_grad():
        assert_same_function(dense(x), ref)


@pytest.mark.parametrize("v2", [False, True])
def test_window_attention_is_torchvisions_before_thinning(v2):
    """The thin forward (head size from head_dim) equals torchvision's on the dense module:
    padding, the cyclic shift and its mask, V2's cosine attention."""
    _tv()
    from torchvision.models import swin_transformer as st
    from compressor.thinning.mha import make_thin
    torch.manual_seed(4)
    cls = st.ShiftedWindowAttentionV2 if v2 else st.ShiftedWindowAttention
    for shift in ([0, 0], [2, 2], [2, 0]):
        m = cls(16, [4, 4], shift, 2).double().eval()
        with torch.no_grad():
            for p in m.parameters():
                p.normal_()
        x = torch.randn(2, 10, 7, 16)
        ref = m(x)
        make_thin(m)
        assert type(m).__name__ == f"Thin{cls.__name__}" and m.head_dim == 8
        assert_same_function(m(x), ref)


def test_swin_attention_macs_by_hand():
    """One Swin attention, input 1x8x8x16, window 4x4 (4 windows of t=16 tokens), 2 heads of 8:
    qkv + proj 4*16*(48*16 + 16*16) MACs, matmuls 2*2*16*16*8*4."""
    _tv()
    from torchvision.models import swin_transformer as st
    torch.manual_seed(0)
    m = st.ShiftedWindowAttention(16, [4, 4], [0, 0], 2).eval()
    df = model_performance_summary(m, torch.randn(1, 8, 8, 16))
    by = {r["Type"]: r for _, r in df.iterrows()}
    assert by["ShiftedWindowAttention"]["MACs"] == 4 * 16 * (48 * 16 + 16 * 16)
    assert by["attention (QK^T, AV)"]["MACs"] == 2 * 2 * 16 * 16 * 8 * 4
    assert len(df) == 2   # qkv and proj are not counted again as Linear calls


def test_head_pruner_ranks_mha_heads():
    """AttentionHeadPruner's readers include nn.MultiheadAttention's out_proj, so it masks whole
    heads there; the neuron pruner does not rank the heads."""
    from compressor.thinning.heads import attention_outputs
    torch.manual_seed(0)
    model = TinyViT().eval()
    assert attention_outputs(model) == {"layers.0.self_attention.out_proj",
                                        "layers.1.self_attention.out_proj"}
    from compressor.graph.example_input import set_example_input
    from compressor.pruners.heads import AttentionHeadPruner, MLPNeuronPruner
    x = torch.randn(2, 5, 6)
    set_example_input(model, x)
    heads = AttentionHeadPruner("heads", 0.5, model=model)
    assert set(heads.param_names) == {f"layers.{i}.self_attention.{t}" for i in range(2)
                                      for t in ("in_proj_weight", "in_proj_bias",
                                                "out_proj.weight")}
    neurons = MLPNeuronPruner("neurons", 0.5, model=model)
    assert "layers.0.self_attention.in_proj_bias" not in neurons.param_names   # no head rows
