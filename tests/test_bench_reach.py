"""benchmarks/bench_reach.py without torchvision: its per-model function on small models written
here (a residual CNN, an attention block, an untraceable model), its layer count, its summary and
table, and its answer when torchvision is missing, so that the benchmark cannot silently rot."""
import pathlib
import sys

import pytest
import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_reach as br  # noqa: E402


class TinyNet(nn.Module):
    """conv-bn-relu, a residual pair, global pooling, a hidden linear layer and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1)
        self.hidden = nn.Linear(8, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b(torch.relu(self.bn(self.a(x)))))
        return self.fc(torch.relu(self.hidden(x.mean((2, 3)))))


class WithAttention(nn.Module):
    """An attention block (its out_proj is read, never called), a layer whose weight the forward
    reads with F.linear (Swin's qkv) and an auxiliary head never called in eval mode, like
    torchvision's ViT, Swin and GoogLeNet."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.qkv = nn.Linear(8, 8)
        self.aux = nn.Linear(8, 3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.proj(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        h = nn.functional.linear(h, self.qkv.weight, self.qkv.bias)
        if self.training:
            return self.aux(h)
        return self.head(h.mean(1))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:          # data-dependent branch: torch.fx cannot trace it
            y = -y
        return self.fc(y.mean((2, 3)))


def tiny():
    torch.manual_seed(0)
    return TinyNet().eval(), torch.randn(1, 3, 8, 8)


def test_measure_ours_row_on_a_small_cnn():
    model, x = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = br.measure_ours(model, x, latency_budget=0.01, max_forward=5.0)
    assert row["ours"] == "PASS", row
    # stem, a, b, hidden; fc is the classifier and is not counted
    assert row["layers_total"] == 4
    assert row["layers_thinned"] == 4
    assert 0 < row["params_ratio"] < 1 and 0 < row["macs_ratio"] < 1
    assert row["exact_err"] <= br.EXACT_BOUND
    assert row["thin_s"] > 0
    for b in br.LATENCY_BATCHES:
        assert row[f"lat_b{b}"] > 0 and row[f"lat_b{b}_rounds"] >= 3
    # the user's model is measured, not changed (a float64 copy is pruned and thinned)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_slow_forward_skips_that_latency():
    model, x = tiny()
    row = br.measure_ours(model, x, latency_budget=0.01, max_forward=0.0)
    assert row["ours"] == "PASS"
    assert row["lat_b1"] is None and row["lat_b1_rounds"] == 0
    assert "- (" not in " ".join(br.cells({"model": "m", **row}))   # rendered as a bare '-'


def test_a_model_our_code_cannot_handle_is_a_fail_row_not_an_exception():
    torch.manual_seed(0)
    row = br.measure_ours(Untraceable().eval(), torch.randn(1, 3, 8, 8), latency_budget=0.01)
    assert row["ours"].startswith("FAIL (analyze): "), row["ours"]
    assert "\n" not in row["ours"]
    assert row["params_ratio"] is None


def test_layers_counted_are_those_the_eval_forward_uses_and_the_classifier_is_the_last_called():
    torch.manual_seed(0)
    model = WithAttention().eval()
    layers, classifier = br.conv_linear_layers(model, torch.randn(1, 5, 4))
    assert classifier == "head"
    assert sorted(layers) == ["attn.out_proj", "head", "proj", "qkv"]


def test_summary_counts_full_reach_and_agreement_with_torch_pruning():
    rows = [{"model": "a", "size": 64, "ours": "PASS", "layers_thinned": 3, "layers_total": 3,
             "params_ratio": 0.50, "tp": "PASS", "tp_params_ratio": 0.49},
            {"model": "b", "size": 64, "ours": "PASS", "layers_thinned": 1, "layers_total": 3,
             "params_ratio": 0.70, "tp": "PASS", "tp_params_ratio": 0.50},
            {"model": "c", "size": 64, "ours": "PASS", "layers_thinned": 2, "layers_total": 2,
             "params_ratio": 0.52, "tp": "FAIL (timeout): over 60 s (in build pruner)"}]
    text = "\n".join(br.summary(rows, tp_ran=True))
    assert "every conv/linear layer (excl. classifier) thinned: 2 of 3" in text
    assert "Torch-Pruning PASS: 2 of 3; FAIL (timeout): 1" in text
    assert ("on the 2 models both run: median params ratio compressor 0.600, Torch-Pruning "
            "0.495; |compressor - TP| <= 0.03 on 1 of 2") in text
    table = br.render(rows, tp_ran=True, notes=["n"])
    assert sum(ln.startswith("| ") for ln in table.splitlines()) == len(rows) + 1   # header + rows
    assert " +0.010 |" in table and " +0.200 |" in table


def test_without_torchvision_it_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)    # import torchvision -> ImportError
    text = br.main_text(["--models", "resnet18"])
    assert "torchvision is not installed" in text


def test_input_sizes_follow_the_protocol():
    assert br.input_size("resnet18") == 64
    assert br.input_size("inception_v3") == 96
    assert br.input_size("vit_b_16") == br.input_size("maxvit_t") == 224


def test_measure_tp_row_when_torch_pruning_is_installed():
    pytest.importorskip("torch_pruning")
    model, x = tiny()
    row = br.measure_tp(model, x, latency_budget=0.01)
    assert row["tp"] == "PASS", row
    assert 0 < row["tp_params_ratio"] < 1 and row["tp_s"] > 0


def test_a_row_whose_latency_ran_out_of_time_keeps_its_numbers_and_says_so():
    rows = [{"model": "big", "size": 224, "ours": "PASS", "layers_thinned": 2, "layers_total": 4,
             "params_ratio": 0.8, "exact_err": 0.0,
             "ours_note": "ours latency not timed: over the 900 s limit"}]
    text = br.render(rows, tp_ran=False, notes=[])
    assert "- note: big: ours latency not timed: over the 900 s limit" in text
    assert " 2 / 4 |" in text and " 0.800 |" in text


def test_rounding_fn_ceil_prunes_at_least_the_fraction():
    """``--rounding-fn ceil``: 30% of 8 filters prunes 3 (floor: 2), Torch-Pruning's count."""
    assert br.schedule(["a"], [], (3, 8, 8), "ceil")["pruners"]["filters"]["rounding_fn"] == "ceil"
    model, x = tiny()
    floor = br.measure_ours(model, x, latency_budget=0.01, max_forward=5.0, rounding_fn="floor")
    ceil = br.measure_ours(model, x, latency_budget=0.01, max_forward=5.0)
    assert ceil["ours"] == "PASS" and ceil["params_ratio"] < floor["params_ratio"]
    assert br.parser().parse_args([]).rounding_fn == "ceil"        # Torch-Pruning's count
    assert br.parser().parse_args(["--rounding-fn", "floor"]).rounding_fn == "floor"


def test_token_id_models_get_no_input_shape_in_their_schedule():
    """A model fed token ids (the transformer rows) is given its example input, not a float
    ``input_shape`` the scheduler would fill with random floats."""
    assert "input_shape" not in br.schedule([], ["fc"], None)
    assert br.schedule([], ["fc"], (3, 8, 8))["input_shape"] == [3, 8, 8]


def test_zero_initialised_weight_matrices_are_filled_so_exact_is_not_vacuous():
    from benchmarks.bench_reach import fill_zero_weights
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    assert fill_zero_weights(model) == 1
    assert bool(model[1].weight.any()) and not bool(model[1].bias.any())   # biases stay
    assert bool(model(torch.randn(2, 4)).any())


def test_models_with_attention_get_a_head_pruner_first():
    from benchmarks.bench_reach import has_attention, schedule
    assert has_attention(nn.Sequential(nn.MultiheadAttention(8, 2)))
    assert not has_attention(nn.Sequential(nn.Linear(2, 2)))
    with_heads = schedule([], ["fc"], (4,), heads=True)
    assert with_heads["pruners"]["heads"] == {"class": "AttentionHeadPruner", "desired_sparsity": 0.3}
    assert with_heads["policies"][0] == {"pruner": {"instance_name": "heads"}, "epochs": [0]}
    assert "heads" not in schedule([], ["fc"], (4,))["pruners"]


def test_transformer_rows_thin_heads_and_mlp_neurons_exactly():
    """The Llama row: token ids in, heads and MLP neurons out, thinned ≡ masked (float64)."""
    pytest.importorskip("transformers")
    model, ids = br.transformer_models()["hf_llama_tiny"]()
    row = br.measure_ours(model, ids, latency_budget=0.01, max_forward=5.0)
    assert row["ours"] == "PASS", row["ours"]
    # q, k, v, gate and up of both layers; o_proj and down_proj write the kept residual stream
    assert (row["layers_thinned"], row["layers_total"]) == (10, 14)
    assert row["params_ratio"] < 0.9
