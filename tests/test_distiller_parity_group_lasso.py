"""A Distiller SSL schedule with ``Rows``/``Cols`` penalizes and thresholds the weights Distiller's did.

Distiller's ``GroupLassoRegularizer`` (regularization/group_regularizer.py) computed ``Rows`` as
``λ · Σ_i ‖W[i, :]‖₂`` (norms over dim 1, one per stored row) and ``Cols`` as ``λ · Σ_j ‖W[:, j]‖₂``,
and its thresholding (thresholding.py, ``group_threshold_mask``) zeroed stored rows / columns whose
statistic was ≤ λ. The hand computations below follow that definition with explicit loops, in
float64, on tests/distiller_schedules/lenet_300_100.ssl_rows_cols.yaml.
"""
from __future__ import annotations

import math
import os

import torch

import compressor
from compressor.models import create_model

SCHEDULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distiller_schedules",
                        "lenet_300_100.ssl_rows_cols.yaml")


def _model():
    torch.manual_seed(0)
    model = create_model("lenet_300_100").double()
    with torch.no_grad():
        model.fc1.weight[:10] *= 1e-4        # stored rows 0..9 of fc1: max |w| far below λ
        model.fc2.weight[:, :5] *= 1e-4      # stored columns 0..4 of fc2
    return model


def test_distiller_rows_cols_loss_is_distillers_definition():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compressor.file_config(model, opt, SCHEDULE)
    out = sched.before_backward_pass(0, 0, 1, torch.zeros((), dtype=torch.float64), opt,
                                     return_loss_components=True)
    (component,) = out.loss_components
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    rows = sum(math.sqrt(sum(float(v) ** 2 for v in w1[i])) for i in range(w1.shape[0]))
    cols = sum(math.sqrt(sum(float(v) ** 2 for v in w2[:, j])) for j in range(w2.shape[1]))
    expected = 0.0002 * rows + 0.0003 * cols
    # Each side sums ≤784 squares per norm and ≤300 norms in float64 (all terms positive), so
    # each is within (784 + 300 + 2)·2⁻⁵³ ≈ 1.2e-13 relative of the exact value: 1e-12 covers both.
    assert abs(component.value.item() - expected) <= 1e-12 * expected
    swapped = 0.0002 * float(w1.norm(dim=0).sum()) + 0.0003 * float(w2.norm(dim=1).sum())
    assert abs(swapped - expected) > 1e-3 * expected     # the other reading is clearly different


def test_distiller_rows_cols_thresholding_zeroes_stored_rows_and_columns():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compressor.file_config(model, opt, SCHEDULE)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    sched.on_minibatch_end(0, 0, 1, opt)                 # where Distiller's policy thresholded
    keep_rows = [max(abs(float(v)) for v in w1[i]) > 0.0002 for i in range(w1.shape[0])]
    keep_cols = [max(abs(float(v)) for v in w2[:, j]) > 0.0003 for j in range(w2.shape[1])]
    assert keep_rows == [False] * 10 + [True] * 290
    assert keep_cols == [False] * 5 + [True] * 295
    expected1 = w1 * torch.tensor(keep_rows, dtype=torch.float64)[:, None]
    expected2 = w2 * torch.tensor(keep_cols, dtype=torch.float64)[None, :]
    assert torch.equal(model.fc1.weight.detach(), expected1)
    assert torch.equal(model.fc2.weight.detach(), expected2)


def test_unambiguous_names_select_the_same_groups():
    """``OutputNeurons``/``InputFeatures`` are the same groups as the regularizer's ``Rows``/``Cols``."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours = compressor.dict_config(model, opt, {
        "version": 1,
        "regularizers": {"fc_lasso": {"class": "GroupLassoRegularizer", "reg_regims": {
            "fc1.weight": [0.0002, "OutputNeurons"], "fc2.weight": [0.0003, "InputFeatures"]}}},
        "policies": [{"regularizer": {"instance_name": "fc_lasso"}, "epochs": [0]}]})
    theirs = compressor.file_config(model, opt, SCHEDULE)
    zero = torch.zeros((), dtype=torch.float64)
    assert torch.equal(ours.before_backward_pass(0, 0, 1, zero, opt),
                       theirs.before_backward_pass(0, 0, 1, zero, opt))
