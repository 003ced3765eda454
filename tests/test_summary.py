"""Tests for compressor.summary: exact table contents on hand-built models."""
from __future__ import annotations

import math
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor import summary as S

SPARSITY_COLUMNS = ["Name", "Shape", "NNZ (dense)", "NNZ (sparse)", "Cols (%)", "Rows (%)",
                    "Ch (%)", "2D (%)", "3D (%)", "Fine (%)", "Std", "Mean", "Abs-Mean"]
PERF_COLUMNS = ["Name", "Type", "Attrs", "IFM", "IFM volume", "OFM", "OFM volume",
                "Weights volume", "MACs", "NNZ MACs"]


# ----------------------------------------------------------------------------------------------
# weights sparsity


def hand_model() -> nn.Module:
    m = nn.Sequential()
    m.add_module("conv", nn.Conv2d(2, 3, 2, bias=False))   # weight (3, 2, 2, 2): 24 elements
    m.add_module("flat", nn.Flatten())
    m.add_module("fc", nn.Linear(4, 3))                     # weight (3, 4): 12; bias is 1D
    with torch.no_grad():
        w = torch.ones(3, 2, 2, 2)
        w[0] = 0                  # filter 0: 8 zeros, kernels [0,0] and [0,1]
        w[1, 1] = 0               # kernel [1,1]: 4 zeros
        w[2, 0, 0, 0] = 0         # 1 zero, empties nothing
        m.conv.weight.copy_(w)    # 13 zeros, nnz 11; zero kernels 3/6; zero filters 1/3
        f = torch.ones(3, 4)
        f[1, :] = 0               # stored row 1 (output 1): 4 zeros
        f[:, 2] = 0               # stored column 2 (input 2): 2 more zeros
        m.fc.weight.copy_(f)      # 6 zeros, nnz 6
    return m


def test_weights_sparsity_summary_columns_and_values():
    m = hand_model()
    df = S.weights_sparsity_summary(m)
    assert list(df.columns) == SPARSITY_COLUMNS
    assert df["Name"].tolist() == ["conv.weight", "fc.weight", "Total sparsity:"]

    conv = df.iloc[0]
    assert conv["Shape"] == "(3, 2, 2, 2)"
    assert (conv["NNZ (dense)"], conv["NNZ (sparse)"]) == (24, 11)
    assert conv["Cols (%)"] == conv["Rows (%)"] == 0.0          # Cols/Rows are 2D-only
    assert conv["Ch (%)"] == 0.0                                # no input channel fully zero
    assert conv["2D (%)"] == pytest.approx(50.0)                # 3 of 6 kernels
    assert conv["3D (%)"] == pytest.approx(100 / 3)             # 1 of 3 filters
    assert conv["Fine (%)"] == pytest.approx(100 * 13 / 24)
    w = m.conv.weight.detach().double()
    assert conv["Std"] == pytest.approx(w.std().item())
    assert conv["Mean"] == pytest.approx(11 / 24)
    assert conv["Abs-Mean"] == pytest.approx(11 / 24)

    fc = df.iloc[1]
    assert fc["Shape"] == "(3, 4)"
    assert (fc["NNZ (dense)"], fc["NNZ (sparse)"]) == (12, 6)
    assert fc["Cols (%)"] == pytest.approx(100 / 3)    # stored rows (transposed GEMM)
    assert fc["Rows (%)"] == pytest.approx(25.0)       # stored columns
    assert fc["2D (%)"] == pytest.approx(100 / 3)      # 2D of a matrix = stored rows
    assert fc["Ch (%)"] == fc["3D (%)"] == 0.0
    assert fc["Fine (%)"] == pytest.approx(50.0)

    total = df.iloc[2]
    assert total["Shape"] == "-"
    assert (total["NNZ (dense)"], total["NNZ (sparse)"]) == (36, 17)
    assert total["Fine (%)"] == pytest.approx(100 * 19 / 36)
    for col in ["Cols (%)", "Rows (%)", "Ch (%)", "2D (%)", "3D (%)", "Std", "Mean", "Abs-Mean"]:
        assert total[col] == 0


def test_weights_sparsity_summary_return_total():
    df, total = S.weights_sparsity_summary(hand_model(), return_total_sparsity=True)
    assert total == pytest.approx(100 * 19 / 36)
    assert df.iloc[-1]["Fine (%)"] == total


def test_weights_sparsity_summary_param_dims_and_wrapping():
    m = hand_model()
    names = S.weights_sparsity_summary(m, param_dims=(2,))["Name"].tolist()
    assert names == ["fc.weight", "Total sparsity:"]
    # rank 1 brings in the bias, as Distiller (weight or bias)
    names = S.weights_sparsity_summary(m, param_dims=(1, 2, 4))["Name"].tolist()
    assert names == ["conv.weight", "fc.weight", "fc.bias", "Total sparsity:"]
    # a wrapped model is accepted and its names are reported as the model has them
    df = S.weights_sparsity_summary(nn.DataParallel(m))
    assert df["Name"].tolist() == ["module.conv.weight", "module.fc.weight", "Total sparsity:"]
    assert df.iloc[-1]["NNZ (sparse)"] == 17


def test_weights_sparsity_summary_no_weights_and_single_element():
    df, total = S.weights_sparsity_summary(nn.ReLU(), return_total_sparsity=True)
    assert df["Name"].tolist() == ["Total sparsity:"]
    assert total == 0.0
    assert list(df.columns) == SPARSITY_COLUMNS
    df = S.weights_sparsity_summary(nn.Linear(1, 1, bias=False))
    assert math.isnan(df.iloc[0]["Std"])  # undefined for one value; no warning, no crash


# ----------------------------------------------------------------------------------------------
# masks


def test_masks_sparsity_summary():
    masks = {"a.weight": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),   # 75 %
             "b.weight": None,                                       # not pruned
             "c.weight": torch.ones(4)}                              # 0 %
    df = S.masks_sparsity_summary(masks)
    assert list(df.columns) == ["Name", "Fine (%)"]
    assert df["Name"].tolist() == ["a.weight", "b.weight", "c.weight", "Total sparsity:"]
    assert df["Fine (%)"].tolist()[:3] == pytest.approx([75.0, 0.0, 0.0])
    # total over the 8 masked elements; the None mask has no known size
    assert df.iloc[-1]["Fine (%)"] == pytest.approx(100 * 3 / 8)


def test_masks_sparsity_summary_counts_none_masks_with_model():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(2, 2))       # fc.weight: 4 elements
    model.add_module("fc2", nn.Linear(6, 2))      # fc2.weight: 12 elements
    masks = {"fc.weight": torch.tensor([[0.0, 0.0], [0.0, 1.0]]), "fc2.weight": None}
    df = S.masks_sparsity_summary(masks, model=model)
    assert df.iloc[-1]["Fine (%)"] == pytest.approx(100 * 3 / 16)
    assert S.masks_sparsity_summary({})["Name"].tolist() == ["Total sparsity:"]


# ----------------------------------------------------------------------------------------------
# compute


class HandCNN(nn.Module):
    """Input (N, 3, 8, 8).  MACs per sample, by hand:

    conv1  Conv2d(3, 8, 3, padding=1)            OFM 8x8x8 = 512;  512 * 3 * 3*3       = 13824
    conv2  Conv2d(8, 8, 3, s=2, p=1, groups=8)   OFM 8x4x4 = 128;  128 * (8/8) * 3*3   =  1152
    conv3  Conv2d(8, 4, 1, groups=2)             OFM 4x4x4 =  64;   64 * (8/2) * 1     =   256
    bn, relu, pool                                not counted
    fc     Linear(4, 10)                          4 * 10                               =    40
                                                                                  total 15272
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.conv3 = nn.Conv2d(8, 4, 1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = self.pool(self.conv3(self.conv2(x)))
        return self.fc(x.flatten(1))


HAND_MACS = [13824, 1152, 256, 40]


def test_performance_summary_exact_macs():
    df = S.model_performance_summary(HandCNN(), torch.randn(1, 3, 8, 8))
    assert list(df.columns) == PERF_COLUMNS
    assert df["Name"].tolist() == ["conv1", "conv2", "conv3", "fc"]
    assert df["Type"].tolist() == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert df["Attrs"].tolist() == ["k=(3, 3)", "k=(3, 3), g=8", "k=(1, 1), g=2", ""]
    assert df["IFM"].tolist() == ["(1, 3, 8, 8)", "(1, 8, 8, 8)", "(1, 8, 4, 4)", "(1, 4)"]
    assert df["IFM volume"].tolist() == [192, 512, 128, 4]
    assert df["OFM"].tolist() == ["(1, 8, 8, 8)", "(1, 8, 4, 4)", "(1, 4, 4, 4)", "(1, 10)"]
    assert df["OFM volume"].tolist() == [512, 128, 64, 10]
    # weights: 8*3*9=216, depthwise 8*1*9=72, grouped 4*(8/2)*1=16, 4*10=40 (biases ignored)
    assert df["Weights volume"].tolist() == [216, 72, 16, 40]
    assert df["MACs"].tolist() == HAND_MACS
    assert df["NNZ MACs"].tolist() == HAND_MACS    # random init: no zero weights
    assert S.compute_totals(df)["MACs"] == 15272


def test_performance_summary_batch_scaling():
    model = HandCNN()
    df8 = S.model_performance_summary(model, torch.randn(1, 3, 8, 8), batch_size=8)
    assert df8["MACs"].tolist() == [8 * v for v in HAND_MACS]
    assert df8["OFM volume"].tolist() == [8 * 512, 8 * 128, 8 * 64, 8 * 10]
    assert df8["Weights volume"].tolist() == [216, 72, 16, 40]  # weights do not scale
    # a dummy input of 4 samples is normalized to per sample, then scaled by batch_size
    df4 = S.model_performance_summary(model, torch.randn(4, 3, 8, 8))
    assert df4["MACs"].tolist() == HAND_MACS
    assert df4["IFM"].tolist()[0] == "(4, 3, 8, 8)"   # the shape the dummy input produced
    with pytest.raises(ValueError, match="batch_size"):
        S.model_performance_summary(model, torch.randn(1, 3, 8, 8), batch_size=0)


def test_performance_summary_nnz_macs_half_zeroed():
    model = HandCNN()
    with torch.no_grad():
        model.conv1.weight[:4] = 0         # half of the filters
        model.fc.weight[:, :2] = 0         # half of the inputs
    df = S.model_performance_summary(model, torch.randn(1, 3, 8, 8), batch_size=2)
    assert df["MACs"].tolist() == [2 * v for v in HAND_MACS]
    assert df["NNZ MACs"].tolist() == [13824, 2 * 1152, 2 * 256, 40]


def test_performance_summary_simplenet_matches_distiller():
    # Distiller's tests/test_model_summary.py: simplenet_cifar -> [352800, 240000, 48000, 10080, 840]
    class SimpleNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.pool = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = F.relu(self.fc1(x.flatten(1)))
            return self.fc3(F.relu(self.fc2(x)))

    df = S.model_performance_summary(SimpleNet(), torch.randn(1, 3, 32, 32))
    assert df["MACs"].tolist() == [352800, 240000, 48000, 10080, 840]


def test_performance_summary_other_layer_kinds():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 4, 3)                    # (1,2,10)->(1,4,8): 32*2*3 = 192
            self.c3 = nn.Conv3d(1, 2, (1, 2, 2))            # (1,1,2,3,3)->(1,2,2,2,2): 16*1*4 = 64
            self.ct = nn.ConvTranspose2d(2, 3, 2, stride=2)  # IFM 2*3*3=18; 18 * 3 * 2*2 = 216
            self.seq = nn.Linear(4, 6)                      # (1,5,4): 5 vectors * 4*6 = 120
            self.shared = nn.Linear(6, 6)                   # called twice: 2 rows of 5*36 = 180

        def forward(self, a, b, c, d):
            y = self.seq(d)
            return self.c1(a), self.c3(b), self.ct(c), self.shared(self.shared(y))

    inputs = (torch.randn(1, 2, 10), torch.randn(1, 1, 2, 3, 3), torch.randn(1, 2, 3, 3),
              torch.randn(1, 5, 4))
    df = S.model_performance_summary(Mixed(), inputs)
    assert df["Name"].tolist() == ["seq", "c1", "c3", "ct", "shared", "shared"]
    assert df["MACs"].tolist() == [120, 192, 64, 216, 180, 180]
    assert df["OFM"].tolist()[3] == "(1, 3, 6, 6)"
    # dict inputs are passed as keyword arguments
    df = S.model_performance_summary(Mixed(), dict(zip("abcd", inputs)))
    assert df["MACs"].sum() == 120 + 192 + 64 + 216 + 360


def test_performance_summary_dataparallel_names():
    df = S.model_performance_summary(nn.DataParallel(HandCNN()), torch.randn(1, 3, 8, 8))
    assert df["Name"].tolist() == ["conv1", "conv2", "conv3", "fc"]
    assert df["MACs"].tolist() == HAND_MACS


def test_performance_summary_runs_in_eval_and_restores_training_flags():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), Probe())
    model.train()
    model[1].eval()            # a frozen BN must stay frozen, the rest must stay in training
    running_mean = model[1].running_mean.clone()
    S.model_performance_summary(model, torch.randn(2, 1, 4, 4))
    assert seen == [False]
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_performance_summary_removes_hooks_when_forward_raises():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)
            self.fc = nn.Linear(1, 1)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        S.model_performance_summary(model, torch.randn(1, 1, 2, 2))
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert all(m.training for m in model.modules())
    # and a later call still works and counts each layer once
    model2 = HandCNN()
    S.model_performance_summary(model2, torch.randn(1, 3, 8, 8))
    S.model_performance_summary(model2, torch.randn(1, 3, 8, 8))
    assert all(len(m._forward_hooks) == 0 for m in model2.modules())


def test_performance_summary_no_counted_layers():
    df = S.model_performance_summary(nn.ReLU(), torch.randn(1, 3))
    assert list(df.columns) == PERF_COLUMNS and len(df) == 0
    assert S.compute_totals(df)["MACs"] == 0


# ----------------------------------------------------------------------------------------------
# modules, totals, output


def test_model_summary_modules():
    df = S.model_summary_modules(HandCNN())
    assert list(df.columns) == ["Name", "Type", "Parameters"]
    assert df["Name"].tolist() == ["conv1", "bn", "conv2", "conv3", "pool", "fc"]
    assert df["Type"].tolist()[:2] == ["Conv2d", "BatchNorm2d"]
    # conv1 216+8, bn 8+8, conv2 72+8, conv3 16+4, pool 0, fc 40+10
    assert df["Parameters"].tolist() == [224, 16, 80, 20, 0, 50]


def test_compute_totals_skips_total_row():
    df = S.weights_sparsity_summary(hand_model())
    totals = S.compute_totals(df)
    assert totals["NNZ (dense)"] == 36 and totals["NNZ (sparse)"] == 17


def test_render():
    df = S.weights_sparsity_summary(hand_model())
    text = S.render(df)
    assert "Total sparsity:" in text and "NNZ (dense)" in text
    assert "52.77778" in text                     # 100 * 19 / 36 with 5 decimals
    assert text.startswith("+")                   # psql
    assert S.render(df, floatfmt=".2f", tablefmt="plain").count("52.78") == 1


def test_to_csv_roundtrip_and_atomic(tmp_path, monkeypatch):
    df = S.model_performance_summary(HandCNN(), torch.randn(1, 3, 8, 8))
    path = tmp_path / "compute.csv"
    assert S.to_csv(df, path) == path
    back = pd.read_csv(path)
    assert back.columns.tolist() == PERF_COLUMNS
    assert back["MACs"].tolist() == HAND_MACS
    assert sorted(os.listdir(tmp_path)) == ["compute.csv"]

    # a failure while replacing leaves the old file whole and no temporary file behind
    old = path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(S.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        S.to_csv(df.iloc[:1], path)
    assert path.read_text() == old
    assert sorted(os.listdir(tmp_path)) == ["compute.csv"]
