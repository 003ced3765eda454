"""Tests of compressor.groups: group layouts, per-group statistics, mask expansion, validation."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compressor.errors import ComponentArgError
from compressor.groups import (COMBINED_GROUP_TYPES, GROUP_TYPES, NORMS, canonical_group_type,
                               check_group_type, expand_group_mask, group_layout, group_norms,
                               num_groups, split_group_type, threshold_group_mask,
                               valid_group_types, validate_block_shape, validate_group_type_name)


def conv_weight():
    # (F=2, C=2, kh=1, kw=2): filter 0 = [[3, 4]], [[0, 0]]; filter 1 = [[0, 5]], [[6, 8]]
    return torch.tensor([[[[3., 4.]], [[0., 0.]]],
                         [[[0., 5.]], [[6., 8.]]]])


# ---------------------------------------------------------------- what each group type means

def test_linear_rows_are_input_features_and_cols_are_output_neurons():
    # Linear(in=3, out=2).weight has shape (out, in) = (2, 3).
    w = torch.tensor([[3., 0., 1.],
                      [4., 2., 0.]])
    assert torch.allclose(group_norms(w, "Rows"), torch.tensor([5., 2., 1.]))   # stored columns
    assert torch.allclose(group_norms(w, "Cols"), torch.tensor([math.sqrt(10), math.sqrt(20)]))
    assert torch.equal(group_norms(w, "Channels"), group_norms(w, "Rows"))
    assert num_groups((2, 3), "Rows") == 3 and num_groups((2, 3), "Cols") == 2
    keep_first_input = expand_group_mask(torch.tensor([True, False, False]), (2, 3), "Rows")
    assert keep_first_input.tolist() == [[True, False, False], [True, False, False]]
    keep_first_output = expand_group_mask(torch.tensor([True, False]), (2, 3), "Cols")
    assert keep_first_output.tolist() == [[True, True, True], [False, False, False]]


def test_unambiguous_linear_names_are_the_same_partitions():
    w = torch.tensor([[3., 0., 1.],
                      [4., 2., 0.]])
    assert torch.equal(group_norms(w, "InputFeatures"), group_norms(w, "Rows"))     # stored columns
    assert torch.equal(group_norms(w, "OutputNeurons"), group_norms(w, "Cols"))     # stored rows
    assert num_groups((2, 3), "InputFeatures") == 3 and num_groups((2, 3), "OutputNeurons") == 2
    keep = torch.tensor([True, False])
    assert torch.equal(expand_group_mask(keep, (2, 3), "OutputNeurons"),
                       expand_group_mask(keep, (2, 3), "Cols"))
    with pytest.raises(ComponentArgError, match=r"group type 'OutputNeurons' does not fit a tensor of "
                                                r"shape \(8, 4, 3, 3\) \(rank 4\)"):
        check_group_type("OutputNeurons", (8, 4, 3, 3))


def test_conv_group_norms_by_hand():
    w = conv_weight()
    assert torch.allclose(group_norms(w, "Filters"), torch.tensor([5., math.sqrt(125)]))
    assert torch.equal(group_norms(w, "3D"), group_norms(w, "Filters"))
    assert torch.allclose(group_norms(w, "Channels"), torch.tensor([math.sqrt(50), 10.]))
    # kernels in order f*C + c
    assert torch.allclose(group_norms(w, "2D"), torch.tensor([5., 0., 5., 10.]))
    assert torch.allclose(group_norms(w, "4D"), torch.tensor([math.sqrt(150)]))


def test_blocks_are_tiles_of_block_shape_in_row_major_order():
    w = torch.arange(1., 17.).reshape(2, 8, 1, 1)
    norms = group_norms(w, "Blocks", "l1", block_shape=[1, 4, 1, 1])
    # blocks: f0 c0-3, f0 c4-7, f1 c0-3, f1 c4-7
    assert norms.tolist() == [1 + 2 + 3 + 4, 5 + 6 + 7 + 8, 9 + 10 + 11 + 12, 13 + 14 + 15 + 16]
    two_filters = group_norms(w, "Blocks", "l1", block_shape=[2, 2, 1, 1])
    assert two_filters.tolist() == [1 + 2 + 9 + 10, 3 + 4 + 11 + 12, 5 + 6 + 13 + 14, 7 + 8 + 15 + 16]
    # Blocks on a 2D weight: 2x2 tiles
    m = torch.arange(16.).reshape(4, 4)
    assert group_norms(m, "Blocks", "max", block_shape=[2, 2]).tolist() == [5., 7., 13., 15.]


def test_every_norm_by_hand():
    w = torch.tensor([[3., -4., 0.], [0., 0., 0.]]).t()   # (3, 2): Cols = the 3 stored rows
    expected = {
        "l1": [3., 4., 0.], "l2": [3., 4., 0.], "max": [3., 4., 0.], "nnz": [1, 1, 0],
        "mean_abs": [1.5, 2., 0.], "mean_l1": [1.5, 2., 0.], "mean_l2": [1.5, 2., 0.],
    }
    for norm, exp in expected.items():
        assert group_norms(w, "Cols", norm).tolist() == exp, norm
    v = torch.tensor([[3., -4.], [1., 1.]])               # Cols: [3, -4] and [1, 1]
    assert group_norms(v, "Cols", "L1").tolist() == [7., 2.]
    assert torch.allclose(group_norms(v, "Cols", "L2"), torch.tensor([5., math.sqrt(2)]))
    assert group_norms(v, "Cols", "Mean_Abs").tolist() == [3.5, 1.]
    assert group_norms(v, "Cols", "Max").tolist() == [4., 1.]
    assert torch.allclose(group_norms(v, "Cols", "Mean_L2"), torch.tensor([2.5, math.sqrt(2) / 2]))
    assert set(NORMS) == set(expected)


def test_unknown_norm_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown norm 'l3'.*valid: l1, l2, max"):
        group_norms(torch.ones(2, 2), "Rows", "l3")


def test_l2_gradient_is_zero_not_nan_on_an_all_zero_group():
    w = conv_weight().requires_grad_()
    group_norms(w, "2D").sum().backward()
    assert torch.isfinite(w.grad).all()
    assert torch.equal(w.grad[0, 1], torch.zeros(1, 2))          # the all-zero kernel
    assert torch.allclose(w.grad[0, 0], torch.tensor([[0.6, 0.8]]))


def test_expand_group_mask_keeps_dtype_is_contiguous_and_checks_length():
    m = expand_group_mask(torch.tensor([0.5, 2.0]), (2, 3, 1, 1), "Filters")
    assert m.dtype == torch.float32 and m.is_contiguous()
    assert m[:, :, 0, 0].tolist() == [[0.5] * 3, [2.0] * 3]
    m.mul_(2)                                      # in-place use must work (no expanded strides)
    with pytest.raises(ValueError, match=r"keep has 3 entries but group type 'Filters' cuts shape "
                                         r"\(2, 3, 1, 1\) into 2 groups"):
        expand_group_mask(torch.ones(3, dtype=torch.bool), (2, 3, 1, 1), "Filters")


def test_threshold_group_mask_zeroes_groups_at_or_below_the_threshold():
    w = conv_weight()
    # kernel max |w|: 4, 0, 5, 8 -> threshold 5 keeps only the last kernel (5 itself is dropped)
    m = threshold_group_mask(w, "2D", 5.0, "max")
    assert m.dtype == torch.bool
    assert m[:, :, 0, 0].tolist() == [[False, False], [False, True]]
    assert torch.equal(group_norms(w * m, "2D", "max"), torch.tensor([0., 0., 0., 8.]))


# ---------------------------------------------------------------- names and validation

def test_names_aliases_and_combinations():
    assert set(GROUP_TYPES) == {"2D", "3D", "4D", "Blocks", "Channels", "Cols", "Filters",
                                "InputFeatures", "OutputNeurons", "Rows"}
    assert canonical_group_type("3D") == "Filters" and canonical_group_type("Rows") == "Rows"
    assert split_group_type("Rows+Cols") == ("Rows", "Cols")
    assert split_group_type("4D+Channels") == ("4D", "Channels")
    assert split_group_type("2D") == ("2D",)
    assert valid_group_types(2) == ["Blocks", "Channels", "Cols", "InputFeatures", "OutputNeurons", "Rows"]
    assert valid_group_types(3) == ["3D", "Blocks", "Channels", "Filters"]
    assert valid_group_types(4) == ["2D", "3D", "4D", "Blocks", "Channels", "Filters"]
    assert valid_group_types(1) == []
    assert valid_group_types(4, GROUP_TYPES + tuple(COMBINED_GROUP_TYPES)) == [
        "2D", "3D", "4D", "4D+Channels", "Blocks", "Channels", "Channels+4D", "Filters"]
    assert valid_group_types(2, GROUP_TYPES + tuple(COMBINED_GROUP_TYPES)) == [
        "Blocks", "Channels", "Cols", "Cols+Rows", "InputFeatures", "OutputNeurons", "Rows",
        "Rows+Cols"]


def test_unknown_group_type_suggests_and_lists():
    with pytest.raises(ComponentArgError, match=r"^group_type: unknown group type 'Rowz' "
                                                r"\(did you mean 'Rows'\?\); valid: 2D, 3D, 4D"):
        validate_group_type_name("Rowz")
    with pytest.raises(ComponentArgError, match=r"unknown group type 3 \(did you mean '3D'\?\); valid:"):
        validate_group_type_name(3)


def test_known_but_unsupported_group_type():
    with pytest.raises(ComponentArgError, match=r"^k: group type 'Filters' is not supported here; "
                                                r"valid: Channels$"):
        validate_group_type_name("Filters", "k", allowed=("Channels",))


def test_group_type_that_does_not_fit_the_rank():
    with pytest.raises(ComponentArgError,
                       match=r"^w: group type 'Rows' does not fit parameter 'conv.weight' of shape "
                             r"\(8, 4, 3, 3\) \(rank 4\); valid for rank 4: "
                             r"2D, 3D, 4D, Blocks, Channels, Filters$"):
        check_group_type("Rows", (8, 4, 3, 3), "w", what="parameter 'conv.weight'")
    with pytest.raises(ComponentArgError, match=r"valid for rank 2: Blocks, Channels, Cols, InputFeatures, OutputNeurons, Rows$"):
        check_group_type("Filters", (8, 4))
    with pytest.raises(ComponentArgError, match=r"does not fit a tensor of shape \(8,\) \(rank 1\); "
                                                r"valid for rank 1: none"):
        check_group_type("Channels", (8,))
    with pytest.raises(ComponentArgError, match=r"group type 'Channels\+4D' does not fit"):
        check_group_type("Channels+4D", (8, 4), allowed=["Channels+4D", "Rows"])


def test_blocks_validation():
    with pytest.raises(ComponentArgError, match=r"'Blocks' needs a block_shape; valid: a list with one "
                                                r"positive integer per dimension"):
        check_group_type("Blocks", (8, 8, 1, 1))
    with pytest.raises(ComponentArgError, match=r"block_shape \[1, 8\] has 2 entries but a tensor of "
                                                r"shape \(8, 8, 1, 1\) has rank 4"):
        check_group_type("Blocks", (8, 8, 1, 1), block_shape=[1, 8])
    with pytest.raises(ComponentArgError, match=r"block_shape \[1, 8, 1, 1\] does not divide a tensor "
                                                r"of shape \(8, 12, 1, 1\) \(dimension 1: 12 is not a "
                                                r"multiple of 8\)"):
        check_group_type("Blocks", (8, 12, 1, 1), block_shape=[1, 8, 1, 1])
    for bad in ([1, 0, 1, 1], [1, 2.5, 1, 1], "1x8", [True, 1], [4]):
        with pytest.raises(ComponentArgError, match=r"block_shape must be a list of positive integers"):
            validate_block_shape(bad)


def test_combined_types_have_no_single_layout():
    with pytest.raises(ComponentArgError, match=r"'Rows\+Cols' combines overlapping groups and has no "
                                                r"single layout; use its parts \['Rows', 'Cols'\]"):
        group_layout((3, 3), "Rows+Cols")


def test_layout_sizes():
    lay = group_layout((8, 4, 3, 3), "Channels")
    assert (lay.n_groups, lay.group_size, lay.grid_shape) == (4, 72, (4,))
    lay = group_layout((8, 16, 3, 3), "Blocks", [2, 8, 1, 3])
    assert (lay.n_groups, lay.group_size, lay.grid_shape) == (4 * 2 * 3 * 1, 48, (4, 2, 3, 1))
    assert group_layout((8, 4, 3, 3), "4D").n_groups == 1


# ---------------------------------------------------------------- properties over random shapes

@st.composite
def weight_and_type(draw):
    rank = draw(st.sampled_from([2, 3, 4]))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    gtype = draw(st.sampled_from(valid_group_types(rank)))
    block = None
    if gtype == "Blocks":
        block = [draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0])) for n in shape]
    return shape, gtype, block


@settings(max_examples=150, deadline=None)
@given(weight_and_type(), st.integers(0, 2 ** 31 - 1), st.sampled_from(["l1", "l2", "max", "mean_abs"]))
def test_expand_then_recompute_zeroes_exactly_the_dropped_groups(case, seed, norm):
    shape, gtype, block = case
    g = torch.Generator().manual_seed(seed)
    # Magnitudes in [0.5, 1.5) with random signs: no element is zero.
    w = (torch.rand(shape, generator=g) + 0.5) * (torch.randint(0, 2, shape, generator=g) * 2 - 1)
    lay = group_layout(shape, gtype, block)
    keep = torch.rand(lay.n_groups, generator=g) < 0.5
    mask = expand_group_mask(keep, shape, gtype, block_shape=block)
    assert mask.shape == shape and mask.dtype == torch.bool
    assert int(mask.sum()) == int(keep.sum()) * lay.group_size
    after = group_norms(w * mask, gtype, norm, block_shape=block)
    before = group_norms(w, gtype, norm, block_shape=block)
    assert torch.equal(after == 0, ~keep)
    assert torch.allclose(after[keep], before[keep])


@settings(max_examples=150, deadline=None)
@given(weight_and_type(), st.integers(0, 2 ** 31 - 1))
def test_group_ids_partition_the_tensor_and_match_group_norms(case, seed):
    shape, gtype, block = case
    lay = group_layout(shape, gtype, block)
    # Expanding per-group values, then taking each group's max, gives the values back.
    values = torch.arange(lay.n_groups, dtype=torch.float32)
    ids = expand_group_mask(values, shape, gtype, block_shape=block)
    assert torch.equal(group_norms(ids, gtype, "max", block_shape=block), values)
    # Every group has group_size elements, and group_norms agrees with a per-group loop.
    counts = torch.bincount(ids.reshape(-1).long(), minlength=lay.n_groups)
    assert torch.equal(counts, torch.full((lay.n_groups,), lay.group_size))
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    ref = torch.stack([w[ids == gid].norm() for gid in range(lay.n_groups)])
    assert torch.allclose(group_norms(w, gtype, "l2", block_shape=block), ref, atol=1e-6)
