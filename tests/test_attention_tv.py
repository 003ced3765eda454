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
