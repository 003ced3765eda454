"""Tests of compressor.regularizers: exact losses, gradients, thresholding and argument errors."""
import math
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compressor.errors import ComponentArgError
from compressor.groups import expand_group_mask, group_norms
from compressor.registry import REGULARIZERS
from compressor.regularizers import (GroupLassoRegularizer, GroupVarianceRegularizer,
                                     L1Regularizer, Regularizer)


def conv_weight(requires_grad=False):
    # (F=2, C=2, kh=1, kw=2): filter 0 = [[3, 4]], [[0, 0]]; filter 1 = [[0, 5]], [[6, 8]]
    return torch.tensor([[[[3., 4.]], [[0., 0.]]],
                         [[[0., 5.]], [[6., 8.]]]], requires_grad=requires_grad)


def fc_weight(requires_grad=False):
    # Linear(in=3, out=2): stored rows (output neurons) [3, 4, 0] and [0, 0, 5]
    return torch.tensor([[3., 4., 0.], [0., 0., 5.]], requires_grad=requires_grad)


def test_registered_under_distiller_names():
    for cls in (L1Regularizer, GroupLassoRegularizer, GroupVarianceRegularizer):
        assert REGULARIZERS.get(cls.__name__) is cls
        assert issubclass(cls, Regularizer)


# ---------------------------------------------------------------- L1

def test_l1_loss_and_gradient_by_hand():
    a = torch.tensor([[1., -2.], [3., -4.]], requires_grad=True)
    b = torch.tensor([0.5, -0.5], requires_grad=True)
    reg = L1Regularizer("l1", {"a": 0.5, "b": 2})
    reg.check({"a": a, "b": b})
    loss = reg.loss({"a": a, "b": b})
    assert loss.shape == () and loss.item() == pytest.approx(0.5 * 10 + 2 * 1)
    loss.backward()
    assert torch.equal(a.grad, 0.5 * torch.sign(a.detach()))
    assert torch.equal(b.grad, torch.tensor([2., -2.]))
    assert reg.param_names == ["a", "b"]
    assert reg.state_dict() == {}


def test_l1_accepts_distiller_short_forms():
    for value in (0.25, "2.5e-1", [0.25], [0.25, "Filters"], (0.25, "2D"), {"strength": 0.25}):
        reg = L1Regularizer("l1", {"w": value})
        assert reg.regimes["w"].strength == 0.25, value
        assert reg.loss({"w": torch.ones(2, 2)}).item() == pytest.approx(1.0)


def test_l1_threshold_keeps_exactly_magnitudes_above_strength():
    w = torch.tensor([[0.1, -0.2, 0.0], [0.25, -0.3, 0.2]])
    assert L1Regularizer("l1", {"w": 0.2}).threshold_masks({"w": w}) == {}
    for crit in ("Max", "Mean_Abs", "mean_abs"):
        reg = L1Regularizer("l1", {"w": 0.2}, threshold_criteria=crit)
        mask = reg.threshold_masks({"w": w})["w"]
        assert mask.dtype == torch.bool
        assert mask.tolist() == [[False, False, False], [True, True, False]]   # 0.2 itself dropped


def test_l1_argument_errors():
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: strength must be a non-negative "
                                                r"number, got -0\.1; valid: a number >= 0"):
        L1Regularizer("l1", {"w": -0.1})
    for bad in (True, float("nan"), float("inf"), "lots", None):
        with pytest.raises(ComponentArgError, match=r"reg_regims\.w: (strength must be a non-negative "
                                                    r"number|expected a strength)"):
            L1Regularizer("l1", {"w": bad})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: expected a strength or \[strength\], "
                                                r"got \[0\.1, 'Rows', 3\]"):
        L1Regularizer("l1", {"w": [0.1, "Rows", 3]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: unknown group type 'Rowz' "
                                                r"\(did you mean 'Rows'\?\)"):
        L1Regularizer("l1", {"w": [0.1, "Rowz"]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: expected \{strength: \.\.\.\}"):
        L1Regularizer("l1", {"w": {"strength": 0.1, "group_type": "Rows"}})
    with pytest.raises(ComponentArgError, match=r"^threshold_criteria: unknown threshold criterion "
                                                r"'Mean' \(did you mean 'Mean_Abs'\?\); "
                                                r"valid: Max, Mean_Abs, or null"):
        L1Regularizer("l1", {"w": 0.1}, threshold_criteria="Mean")
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: no such parameter was given to "
                                                r"check\(\); valid: v"):
        L1Regularizer("l1", {"w": 0.1}).check({"v": torch.ones(1)})


def test_reg_regims_must_be_a_non_empty_mapping_of_names():
    for cls in (L1Regularizer, GroupLassoRegularizer, GroupVarianceRegularizer):
        with pytest.raises(ComponentArgError, match=r"^reg_regims: must be a mapping of parameter "
                                                    r"name -> regime, got list"):
            cls("r", [("w", 0.1)])
        with pytest.raises(ComponentArgError, match=r"^reg_regims: is empty; valid: at least one entry"):
            cls("r", {})
        with pytest.raises(ComponentArgError, match=r"^reg_regims: keys must be parameter names, got 3"):
            cls("r", {3: [0.1, "Channels"]})


def test_loss_names_a_parameter_the_caller_left_out():
    reg = GroupLassoRegularizer("g", {"w": [0.1, "Rows"]})
    with pytest.raises(KeyError, match=r"GroupLassoRegularizer: parameter 'w' from reg_regims was not "
                                       r"passed \(got v\)"):
        reg.loss({"v": torch.ones(2, 2)})


# ---------------------------------------------------------------- group lasso: exact math

@pytest.mark.parametrize("group_type, expected", [
    ("2D", 5 + 0 + 5 + 10),
    ("Filters", 5 + math.sqrt(125)),
    ("3D", 5 + math.sqrt(125)),
    ("Channels", math.sqrt(50) + 10),
    ("4D", math.sqrt(150)),
    ("Channels+4D", math.sqrt(50) + 10 + math.sqrt(150)),
    ("4D+Channels", math.sqrt(50) + 10 + math.sqrt(150)),
])
def test_group_lasso_conv_loss_by_hand(group_type, expected):
    w = conv_weight()
    reg = GroupLassoRegularizer("g", {"w": [0.1, group_type]})
    reg.check({"w": w})
    assert reg.loss({"w": w}).item() == pytest.approx(0.1 * expected)


@pytest.mark.parametrize("group_type, expected", [
    ("Rows", 5 + 5),              # Distiller's regularizer: stored rows [3,4,0], [0,0,5]
    ("Cols", 3 + 4 + 5),          # Distiller's regularizer: stored columns [3,0], [4,0], [0,5]
    ("OutputNeurons", 5 + 5),     # the unambiguous names of the same groups
    ("InputFeatures", 3 + 4 + 5),
    ("Rows+Cols", 12 + 10),
    ("Cols+Rows", 12 + 10),
    ("Channels", 3 + 4 + 5),
])
def test_group_lasso_linear_loss_by_hand(group_type, expected):
    w = fc_weight()
    reg = GroupLassoRegularizer("g", {"fc.weight": [2.0, group_type]})
    reg.check({"fc.weight": w})
    assert reg.loss({"fc.weight": w}).item() == pytest.approx(2.0 * expected)


def test_group_lasso_blocks_loss_by_hand():
    w = torch.tensor([3., 4., 6., 8.]).reshape(1, 4, 1, 1)
    for value in ([0.5, "Blocks", [1, 2, 1, 1]],
                  {"strength": 0.5, "group_type": "Blocks", "block_shape": [1, 2, 1, 1]}):
        reg = GroupLassoRegularizer("g", {"w": value})
        reg.check({"w": w})
        assert reg.loss({"w": w}).item() == pytest.approx(0.5 * (5 + 10))


def test_group_lasso_sums_over_parameters_and_accepts_numeric_strings():
    reg = GroupLassoRegularizer("g", {"a": ["1e-1", "4D"], "b": (1, "Cols")})
    assert reg.loss({"a": conv_weight(), "b": fc_weight()}).item() == pytest.approx(
        0.1 * math.sqrt(150) + 12)


def test_group_lasso_gradient_flows_and_is_zero_safe():
    w = conv_weight(requires_grad=True)            # kernel (0, 1) is all zeros
    GroupLassoRegularizer("g", {"w": [0.1, "2D"]}).loss({"w": w}).backward()
    assert torch.isfinite(w.grad).all()
    assert torch.equal(w.grad[0, 1], torch.zeros(1, 2))
    # elsewhere the gradient is λ · w_g / ‖w_g‖
    assert torch.allclose(w.grad[1, 1], 0.1 * torch.tensor([[0.6, 0.8]]))
    z = torch.zeros(3, 4, 2, 2, requires_grad=True)
    for regime in ([1.0, "2D"], [1.0, "Filters"], [1.0, "Channels"], [1.0, "4D"],
                   [1.0, "Channels+4D"], [1.0, "Blocks", [1, 2, 1, 1]]):
        z.grad = None
        GroupLassoRegularizer("g", {"z": regime}).loss({"z": z}).backward()
        assert torch.equal(z.grad, torch.zeros_like(z)), regime


@pytest.mark.parametrize("regime", [[0.3, "2D"], [0.3, "Filters"], [0.3, "Channels"], [0.3, "4D"],
                                    [0.3, "Blocks", [2, 2, 1, 3]]])
def test_group_lasso_gradient_is_strength_times_w_over_its_group_norm(regime):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, 3, 3, generator=g)
    w[:, 2:4] = 0                                         # some groups of every type are all zero
    w.requires_grad_()
    GroupLassoRegularizer("g", {"w": regime}).loss({"w": w}).backward()
    block = regime[2] if len(regime) > 2 else None
    norms = group_norms(w.detach(), regime[1], "l2", block_shape=block)
    per_element = expand_group_mask(norms, w.shape, regime[1], block_shape=block)
    expected = torch.where(per_element > 0, 0.3 * w.detach() / per_element, torch.zeros_like(w))
    assert torch.allclose(w.grad, expected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(0, 10, allow_nan=False))
def test_combined_types_equal_the_sum_of_their_parts(seed, lam):
    g = torch.Generator().manual_seed(seed)
    conv, fc = torch.randn(4, 3, 3, 3, generator=g), torch.randn(5, 7, generator=g)

    def loss(w, t):
        return GroupLassoRegularizer("g", {"w": [lam, t]}).loss({"w": w})

    both = loss(conv, "Channels+4D")
    assert torch.allclose(both, loss(conv, "Channels") + loss(conv, "4D"))
    assert torch.allclose(both, loss(conv, "4D+Channels"))
    assert torch.allclose(loss(fc, "Rows+Cols"), loss(fc, "Rows") + loss(fc, "Cols"))


# ---------------------------------------------------------------- group lasso: thresholding

def test_group_lasso_threshold_max_and_mean_abs_by_hand():
    w = conv_weight()   # kernels: max |w| = 4, 0, 5, 8; mean |w| = 3.5, 0, 2.5, 7
    reg = GroupLassoRegularizer("g", {"w": [5.0, "2D"]}, threshold_criteria="Max")
    m = reg.threshold_masks({"w": w})["w"]
    assert m[:, :, 0, 0].tolist() == [[False, False], [False, True]]
    reg = GroupLassoRegularizer("g", {"w": [3.0, "2D"]}, threshold_criteria="Mean_Abs")
    m = reg.threshold_masks({"w": w})["w"]
    assert m[:, :, 0, 0].tolist() == [[True, False], [False, True]]
    assert GroupLassoRegularizer("g", {"w": [3.0, "2D"]}).threshold_masks({"w": w}) == {}


def test_group_lasso_threshold_on_linear_rows_and_cols():
    w = fc_weight()     # stored rows (Rows) max 4, 5; stored columns (Cols) max 3, 4, 5
    rows = GroupLassoRegularizer("g", {"w": [4.5, "Rows"]}, "Max").threshold_masks({"w": w})["w"]
    assert rows.tolist() == [[False, False, False], [True, True, True]]
    cols = GroupLassoRegularizer("g", {"w": [3.5, "Cols"]}, "Max").threshold_masks({"w": w})["w"]
    assert cols.tolist() == [[False, True, True], [False, True, True]]
    for ours, distillers in (("OutputNeurons", "Rows"), ("InputFeatures", "Cols")):
        for lam in (3.5, 4.5):
            a = GroupLassoRegularizer("g", {"w": [lam, ours]}, "Max").threshold_masks({"w": w})
            b = GroupLassoRegularizer("g", {"w": [lam, distillers]}, "Max").threshold_masks({"w": w})
            assert torch.equal(a["w"], b["w"])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["2D", "3D", "Filters", "Channels", "Blocks"]),
       st.sampled_from(["Max", "Mean_Abs"]), st.floats(0.0, 1.5))
def test_threshold_masks_only_add_zeros_and_zero_exactly_the_small_groups(seed, gtype, crit, lam):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4, 3, 3, generator=g)
    w[torch.rand(6, 4, 1, 1, generator=g).expand_as(w) < 0.3] = 0     # some all-zero kernels
    regime = [lam, gtype] + ([[2, 2, 1, 1]] if gtype == "Blocks" else [])
    reg = GroupLassoRegularizer("g", {"w": regime}, threshold_criteria=crit)
    reg.check({"w": w})
    mask = reg.threshold_masks({"w": w})["w"]
    stat = "max" if crit == "Max" else "mean_abs"
    block = [2, 2, 1, 1] if gtype == "Blocks" else None
    before = group_norms(w, gtype, stat, block_shape=block)
    after = group_norms(w * mask, gtype, stat, block_shape=block)
    keep = before > lam
    assert torch.equal(mask, expand_group_mask(keep, w.shape, gtype, block_shape=block))
    assert not keep[before == 0].any()                      # an all-zero group is never kept
    assert ((w * mask) != 0).le(w != 0).all()               # masking only adds zeros
    assert torch.equal(after, torch.where(keep, before, torch.zeros_like(before)))


def test_thresholding_unsupported_group_types_raise():
    for gtype in ("4D", "Rows+Cols", "Channels+4D"):
        with pytest.raises(ComponentArgError, match=rf"^reg_regims\.w: group type '{re.escape(gtype)}' "
                                                    r"cannot be thresholded \(threshold_criteria is "
                                                    r"'Max'\); valid with thresholding: 2D, 3D, Blocks, "
                                                    r"Channels, Cols, Filters, InputFeatures, "
                                                    r"OutputNeurons, Rows, "
                                                    r"or threshold_criteria: null"):
            GroupLassoRegularizer("g", {"w": [0.1, gtype]}, threshold_criteria="Max")
    # without a criterion they are fine
    GroupLassoRegularizer("g", {"w": [0.1, "Channels+4D"]})


# ---------------------------------------------------------------- group lasso: argument errors

def test_group_lasso_argument_errors():
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: expected \[strength, group_type\] .*"
                                                r"got 0\.1; valid group types: 2D, 3D, 4D, 4D\+Channels"):
        GroupLassoRegularizer("g", {"w": 0.1})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: strength must be a non-negative number, "
                                                r"got -1"):
        GroupLassoRegularizer("g", {"w": [-1, "Rows"]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: strength must be a non-negative number, "
                                                r"got 'Rows'"):
        GroupLassoRegularizer("g", {"w": ["Rows", 0.1]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: unknown group type 'Filter' "
                                                r"\(did you mean 'Filters'"):
        GroupLassoRegularizer("g", {"w": [0.1, "Filter"]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: group type 'Blocks' needs a block_shape"):
        GroupLassoRegularizer("g", {"w": [0.1, "Blocks"]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: block_shape is only used with group "
                                                r"type 'Blocks', got group type 'Rows'"):
        GroupLassoRegularizer("g", {"w": [0.1, "Rows", [1, 2]]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: block_shape must be a list of positive "
                                                r"integers"):
        GroupLassoRegularizer("g", {"w": [0.1, "Blocks", [1, -8, 1, 1]]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w\.group: unknown key \(did you mean "
                                                r"'group_type'\?\); "
                                                r"valid: block_shape, group_type, strength"):
        GroupLassoRegularizer("g", {"w": {"strength": 0.1, "group": "Rows"}})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: missing 'strength'"):
        GroupLassoRegularizer("g", {"w": {"group_type": "Rows"}})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: missing group_type; valid:"):
        GroupLassoRegularizer("g", {"w": {"strength": 0.1}})
    with pytest.raises(ComponentArgError, match=r"^threshold_criteria: unknown threshold criterion 'L2'; "
                                                r"valid: Max, Mean_Abs, or null"):
        GroupLassoRegularizer("g", {"w": [0.1, "Rows"]}, threshold_criteria="L2")


def test_group_lasso_check_errors_name_the_parameter_shape_and_valid_types():
    conv = {"layer1.conv.weight": torch.zeros(8, 4, 3, 3)}
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.layer1\.conv\.weight: group type 'Rows' "
                                                r"does not fit parameter 'layer1\.conv\.weight' of shape "
                                                r"\(8, 4, 3, 3\) \(rank 4\); valid for rank 4: 2D, 3D, 4D, "
                                                r"4D\+Channels, Blocks, Channels, Channels\+4D, Filters$"):
        GroupLassoRegularizer("g", {"layer1.conv.weight": [0.1, "Rows"]}).check(conv)
    with pytest.raises(ComponentArgError, match=r"group type 'Channels\+4D' does not fit parameter 'fc' "
                                                r"of shape \(2, 3\) \(rank 2\); valid for rank 2: Blocks, "
                                                r"Channels, Cols, Cols\+Rows, InputFeatures, OutputNeurons, Rows, "
                                                r"Rows\+Cols$"):
        GroupLassoRegularizer("g", {"fc": [0.1, "Channels+4D"]}).check({"fc": fc_weight()})
    with pytest.raises(ComponentArgError, match=r"block_shape \[1, 8, 1, 1\] does not divide parameter "
                                                r"'layer1\.conv\.weight' of shape \(8, 4, 3, 3\)"):
        GroupLassoRegularizer("g", {"layer1.conv.weight": [0.1, "Blocks", [1, 8, 1, 1]]}).check(conv)
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.bias: group type 'Channels' does not fit "
                                                r"parameter 'bias' of shape \(8,\) \(rank 1\); valid for "
                                                r"rank 1: none$"):
        GroupLassoRegularizer("g", {"bias": [0.1, "Channels"]}).check({"bias": torch.zeros(8)})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: no such parameter was given"):
        GroupLassoRegularizer("g", {"w": [0.1, "Rows"]}).check({})


# ---------------------------------------------------------------- group variance

def test_group_variance_loss_by_hand():
    w = torch.tensor([1., -2., 3.]).reshape(1, 3, 1, 1)        # channel norms 1, 2, 3: var = 1
    reg = GroupVarianceRegularizer("gv", {"w": [0.5, "Channels"]})
    reg.check({"w": w})
    assert reg.loss({"w": w}).item() == pytest.approx(0.5)
    c = conv_weight()                                           # channel norms √50, 10
    expected = 0.5 / torch.tensor([math.sqrt(50), 10.]).var().item()
    assert GroupVarianceRegularizer("gv", {"c": 0.5}).loss({"c": c}).item() == pytest.approx(expected)


def test_group_variance_gradient_flows():
    w = torch.tensor([1., -2., 3.]).reshape(1, 3, 1, 1).requires_grad_()
    GroupVarianceRegularizer("gv", {"w": [1.0, "Channels"]}).loss({"w": w}).backward()
    # d/dn (1/var(n)) = -1/var² · 2(n - mean)/(C - 1), with n = (1, 2, 3), var = 1
    dn = torch.tensor([-1., 0., 1.]) * -1.0
    assert torch.allclose(w.grad.reshape(-1), dn * torch.tensor([1., -1., 1.]))


def test_group_variance_errors():
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: group type 'Filters' is not supported "
                                                r"here; valid: Channels$"):
        GroupVarianceRegularizer("gv", {"w": [0.1, "Filters"]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: expected \[strength, Channels\]"):
        GroupVarianceRegularizer("gv", {"w": [0.1]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: strength must be a non-negative number"):
        GroupVarianceRegularizer("gv", {"w": [-0.1, "Channels"]})
    with pytest.raises(ComponentArgError, match=r"^reg_regims\.w: parameter 'w' of shape \(4, 1, 3, 3\) "
                                                r"has 1 input channel; valid: a parameter with at least 2"):
        GroupVarianceRegularizer("gv", {"w": [0.1, "Channels"]}).check({"w": torch.ones(4, 1, 3, 3)})
    with pytest.raises(ComponentArgError, match=r"valid for rank 1: none"):
        GroupVarianceRegularizer("gv", {"w": [0.1, "Channels"]}).check({"w": torch.ones(4)})
    with pytest.raises(TypeError):
        GroupVarianceRegularizer("gv", {"w": [0.1, "Channels"]}, threshold_criteria="Max")
