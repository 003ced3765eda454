"""Tests for compressor.metrics: hand-made tensors with known zero patterns, plus properties."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compressor import metrics as M


def conv_weight_with_pattern() -> torch.Tensor:
    """A (out=4, in=3, 2, 2) weight of ones with a known structure of zeros.

    filter 0                -> all zero                       (1 zero filter of 4)
    input channel 2         -> zero in every filter           (1 zero channel of 3)
    kernel [1, 0]           -> zero                           (zero kernels: 3 + 2 + 1 + 1 = 7 of 12)
    element [3, 0, 0, 0]    -> zero (does not empty any kernel)
    """
    t = torch.ones(4, 3, 2, 2)
    t[0] = 0
    t[:, 2] = 0
    t[1, 0] = 0
    t[3, 0, 0, 0] = 0
    return t


# ----------------------------------------------------------------------------------------------
# element-wise


def test_density_and_sparsity_known_values():
    t = torch.tensor([[0.0, 1.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    assert M.density(t) == pytest.approx(3 / 8)
    assert M.sparsity(t) == pytest.approx(5 / 8)
    assert isinstance(M.sparsity(t), float)


def test_density_conv_pattern():
    t = conv_weight_with_pattern()
    # zeros: filter0 (12) + channel 2 of filters 1..3 (3*4=12) + kernel [1,0] (4) + 1 element = 29
    assert M.sparsity(t) == pytest.approx(29 / 48)
    assert M.density(t) == pytest.approx(19 / 48)


def test_all_zeros_and_all_ones():
    assert M.sparsity(torch.zeros(3, 4)) == 1.0
    assert M.density(torch.zeros(3, 4)) == 0.0
    assert M.sparsity(torch.ones(5)) == 0.0
    assert M.density(torch.ones(5)) == 1.0
    z = torch.zeros(2, 3, 3, 3)
    assert M.sparsity_2D(z) == M.sparsity_3D(z) == M.sparsity_ch(z) == 1.0
    assert M.sparsity_cols(torch.zeros(2, 3)) == M.sparsity_rows(torch.zeros(2, 3)) == 1.0


def test_empty_tensors_are_dense_and_never_divide_by_zero():
    for shape in [(0,), (0, 3), (3, 0), (0, 3, 3, 3), (2, 0, 3, 3)]:
        t = torch.empty(shape)
        assert M.density(t) == 1.0
        assert M.sparsity(t) == 0.0
        assert M.sparsity_2D(t) == 0.0
        assert M.sparsity_3D(t) == 0.0
        assert M.sparsity_ch(t) == 0.0
        assert M.sparsity_rows(t) == 0.0
        assert M.sparsity_cols(t) == 0.0


def test_one_dimensional_and_scalar_tensors():
    t = torch.tensor([0.0, 1.0, 0.0, 5.0])
    assert M.sparsity(t) == 0.5
    # structures other than elements do not exist in 1D
    assert M.sparsity_2D(t) == M.sparsity_3D(t) == M.sparsity_ch(t) == 0.0
    assert M.sparsity_rows(t) == M.sparsity_cols(t) == 0.0
    assert M.sparsity(torch.tensor(0.0)) == 1.0
    assert M.density(torch.tensor(2.0)) == 1.0


def test_negative_zero_is_zero_and_nan_is_not():
    assert M.sparsity(torch.tensor([-0.0, 0.0, 1.0, -1.0])) == 0.5
    assert M.density(torch.tensor([math.nan, 0.0])) == 0.5


def test_integer_and_bool_tensors():
    assert M.sparsity(torch.tensor([0, 1, 2, 0])) == 0.5
    assert M.density(torch.tensor([True, False, False, False])) == 0.25


def test_does_not_touch_autograd():
    w = torch.zeros(2, 2, requires_grad=True)
    assert M.sparsity(w) == 1.0
    assert M.sparsity_2D(w) == 1.0


# ----------------------------------------------------------------------------------------------
# structured


def test_sparsity_2D_4d_counts_zero_kernels():
    t = conv_weight_with_pattern()
    # kernels (4*3=12): f0: 3 zero; f1: c0 (explicitly) and c2 -> 2; f2: c2 -> 1; f3: c2 -> 1
    # (f3's c0 kernel lost one element only) => 7 of 12
    assert M.sparsity_2D(t) == pytest.approx(7 / 12)
    assert M.density_2D(t) == pytest.approx(5 / 12)


def test_sparsity_2D_2d_counts_stored_rows():
    t = torch.ones(4, 5)
    t[1] = 0
    t[3] = 0
    t[:, 0] = 0  # a zero column does not make rows zero
    assert M.sparsity_2D(t) == 0.5


def test_sparsity_2D_other_ranks_is_zero():
    assert M.sparsity_2D(torch.zeros(2, 2, 2)) == 0.0  # Conv1d weight: not a Distiller structure
    assert M.sparsity_2D(torch.zeros(2, 2, 2, 2, 2)) == 0.0


def test_sparsity_3D_counts_zero_filters():
    t = conv_weight_with_pattern()
    assert M.sparsity_3D(t) == 0.25
    assert M.density_3D(t) == 0.75
    assert M.sparsity_3D(torch.zeros(3, 3)) == 0.0  # not 4D


def test_sparsity_ch_counts_zero_input_channels():
    t = conv_weight_with_pattern()
    assert M.sparsity_ch(t) == pytest.approx(1 / 3)
    assert M.density_ch(t) == pytest.approx(2 / 3)
    assert M.non_zero_channels(t).tolist() == [0, 1]
    assert M.sparsity_ch(torch.zeros(3, 3)) == 0.0
    with pytest.raises(ValueError, match="4D"):
        M.non_zero_channels(torch.zeros(3, 3))


def test_values_that_cancel_are_not_zero_structures():
    t = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # row 0 sums to 0 but is not zero
    assert M.sparsity_2D(t) == 0.5
    assert M.sparsity_cols(t) == 0.5


def test_rows_and_cols_follow_the_transposed_gemm_convention():
    # A Linear(in=4, out=3) stores its weight as (out=3, in=4).
    fc = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        fc.weight.fill_(1.0)
        fc.weight[2, :] = 0      # output neuron 2 removed: 1 of 3 stored rows
        fc.weight[:, 0] = 0      # input features 0 and 3 unused: 2 of 4 stored columns
        fc.weight[:, 3] = 0
    w = fc.weight
    # transposed=True (default, Distiller): "Cols" = stored rows, "Rows" = stored columns
    assert M.sparsity_cols(w) == pytest.approx(1 / 3)
    assert M.sparsity_rows(w) == pytest.approx(2 / 4)
    # transposed=False: names follow the stored tensor
    assert M.sparsity_cols(w, transposed=False) == pytest.approx(2 / 4)
    assert M.sparsity_rows(w, transposed=False) == pytest.approx(1 / 3)
    assert M.density_cols(w) == pytest.approx(2 / 3)
    assert M.density_rows(w) == pytest.approx(2 / 4)
    assert M.density_rows(w, transposed=False) == pytest.approx(2 / 3)
    # sparsity_matrix is the untransposed primitive
    assert M.sparsity_matrix(w, 0) == pytest.approx(1 / 3)
    assert M.sparsity_matrix(w, 1) == pytest.approx(2 / 4)
    # not 2D -> 0
    assert M.sparsity_cols(conv_weight_with_pattern()) == 0.0
    assert M.sparsity_rows(conv_weight_with_pattern()) == 0.0


def test_sparsity_matrix_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        M.sparsity_matrix(torch.ones(2, 2), 2)


# ----------------------------------------------------------------------------------------------
# model level


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=True)      # weight (2,2,1,1): 4 elements
        self.bn = nn.BatchNorm2d(2)                     # 1D: never with default param_dims
        self.fc = nn.Linear(2, 3)                       # weight (3,2): 6 elements
        self.register_buffer("weight_mask", torch.zeros(3, 2))  # a buffer: never counted
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]]))
            self.conv.bias.zero_()


def test_model_level_metrics():
    m = Tiny()
    # selected: conv.weight (4, 1 nnz) and fc.weight (6, 3 nnz) -> 10 elements, 4 nnz
    assert [n for n, _ in M.selected_params(m)] == ["conv.weight", "fc.weight"]
    assert M.model_numel(m) == 10
    assert M.model_sparsity(m) == pytest.approx(0.6)
    stats = M.model_params_stats(m)
    assert stats == pytest.approx((60.0, 10, 4))
    pct, numel, nnz = stats  # unpacks like Distiller's tuple
    assert (numel, nnz) == (10, 4)
    assert stats.sparsity_pct == pytest.approx(60.0)


def test_model_level_param_dims_and_types():
    m = Tiny()
    # rank 1 adds conv.bias (2, all zero), bn.weight (2 ones), bn.bias (2 zeros), fc.bias (3)
    with torch.no_grad():
        m.fc.bias.copy_(torch.tensor([1.0, 1.0, 0.0]))
    assert M.model_numel(m, param_dims=(1,)) == 9
    assert M.model_params_stats(m, param_dims=(1,)).nnz == 4
    assert M.model_numel(m, param_dims=(1, 2, 4), param_types=("weight",)) == 12
    assert M.model_numel(m, param_dims=(4,)) == 4


def test_model_level_wrapped_shared_and_empty():
    m = Tiny()
    wrapped = nn.DataParallel(m)
    assert [n for n, _ in M.selected_params(wrapped)] == ["module.conv.weight", "module.fc.weight"]
    assert M.model_sparsity(wrapped) == pytest.approx(0.6)

    shared = nn.Sequential(m.fc, nn.ReLU(), m.fc)  # the same Linear twice: counted once
    assert M.model_numel(shared) == 6

    assert M.model_sparsity(nn.ReLU()) == 0.0
    assert M.model_params_stats(nn.ReLU()) == (0.0, 0, 0)


def test_size_to_str_and_volume():
    assert M.size_to_str(torch.Size([64, 3, 7, 7])) == "(64, 3, 7, 7)"
    assert M.size_to_str((5,)) == "(5)"
    assert M.volume(torch.zeros(2, 3)) == 6
    assert M.volume((2, 3, 4)) == 24


# ----------------------------------------------------------------------------------------------
# properties


@st.composite
def masked_tensors(draw):
    rank = draw(st.sampled_from([2, 4]))
    shape = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    seed = draw(st.integers(0, 2**31 - 1))
    p_zero = draw(st.floats(0.0, 1.0))
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g)
    keep = torch.rand(shape, generator=g) >= p_zero
    return values * keep


@settings(max_examples=200, deadline=None)
@given(masked_tensors())
def test_density_plus_sparsity_is_one(t):
    d, s = M.density(t), M.sparsity(t)
    assert d + s == pytest.approx(1.0, abs=1e-12)
    assert d == pytest.approx(int(torch.count_nonzero(t)) / t.numel(), abs=1e-12)
    assert 0.0 <= d <= 1.0
    for sp, de in [(M.sparsity_2D, M.density_2D), (M.sparsity_3D, M.density_3D),
                   (M.sparsity_ch, M.density_ch), (M.sparsity_rows, M.density_rows),
                   (M.sparsity_cols, M.density_cols)]:
        assert sp(t) + de(t) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(masked_tensors())
def test_coarser_structures_are_never_sparser(t):
    # a zero filter or zero channel empties whole kernels; a zero kernel is made of zero elements
    eps = 1e-12
    assert M.sparsity_2D(t) <= M.sparsity(t) + eps
    if t.dim() == 4:
        assert M.sparsity_3D(t) <= M.sparsity_2D(t) + eps
        assert M.sparsity_ch(t) <= M.sparsity_2D(t) + eps
    else:
        assert M.sparsity_cols(t) <= M.sparsity(t) + eps
        assert M.sparsity_rows(t) <= M.sparsity(t) + eps
