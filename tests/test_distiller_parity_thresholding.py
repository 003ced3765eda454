"""Distiller's tests/test_thresholding.py, ported: the same tensors, calls and expected masks.

Each test names the Distiller test it mirrors. Calls are mapped as docs/porting-from-distiller.md
says: ``distiller.group_threshold_mask`` and the ``create_mask_*_criterion`` functions are in
``compressor.thresholding``; ``distiller.sparsity``/``volume`` in ``compressor.metrics``. The tensors
are float64 and every threshold is at least 0.09 away from the statistic it is compared with, so
rounding cannot flip a decision. Not ported: ``test_norm_names`` (Distiller's ``distiller.norms``
function objects have no counterpart; the criteria are named by strings here).
"""
from __future__ import annotations

import pytest
import torch

from compressor.metrics import sparsity, volume
from compressor.thresholding import (create_mask_level_criterion, create_mask_sensitivity_criterion,
                                     create_mask_threshold_criterion, group_threshold_mask)


def get_2d():
    return torch.tensor([[1.0, 2.0, 3.0],
                         [4.0, 5.0, 6.0],
                         [7.0, 8.0, 9.0],
                         [10., 11., 12.]], dtype=torch.float64)


def get_4d():
    # Kernel L1 norms: 6.5997 7.7756 5.8073 / 8.4522 5.9498 6.4908; filter L2: 4.5039, 5.2156;
    # channel L2: 4.3593 3.6394 3.9037; channel mean |w|: 0.8362 0.7625 0.6832.
    return torch.tensor(
        [[[[-1.2982, 0.7574, 0.7962], [-0.6695, 1.5907, 0.2659], [0.1423, 0.3165, -0.7629]],
          [[-0.5480, -1.2718, 0.8286], [-0.6427, 0.3814, -0.7988], [1.0346, 1.3023, -0.9674]],
          [[-0.7951, 1.8784, -0.5654], [0.0456, -0.2849, -0.3332], [-0.2367, 0.7467, 0.9212]]],
         [[[1.3672, 0.2993, -0.0619], [1.8156, 0.7599, 0.1815], [0.4136, 1.8316, 1.7214]],
          [[0.5125, -1.5329, 0.9257], [0.9200, 0.4376, 0.5743], [-0.0097, 0.9473, -0.0899]],
          [[0.2372, 2.4369, -0.3410], [-1.0595, 0.8056, -0.0357], [-1.0105, -0.1451, -0.4194]]]],
        dtype=torch.float64)



def _expand_kernels(keep):   # (2, 3) per-kernel 0/1 -> the (2, 3, 3, 3) mask
    return torch.tensor(keep, dtype=torch.float64)[:, :, None, None].expand(2, 3, 3, 3)


def test_threshold_mask():
    """Mirrors test_thresholding.py::test_threshold_mask."""
    a = torch.ones(3, 64, 32, 32)
    a[1, 4, 17, 31] = 0.2
    mask = create_mask_threshold_criterion(a, threshold=0.3)
    assert mask.sum().item() == volume(a) - 1
    assert mask[1, 4, 17, 31] == 0
    assert sparsity(mask) == pytest.approx(1 / volume(a), abs=1e-12)


def test_level_mask():
    """Mirrors test_thresholding.py::test_level_mask (Distiller allowed 1e-4; here it is exact)."""
    a = torch.rand(3, 64, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = create_mask_level_criterion(a, desired_sparsity=0.3)
    assert (mask == 0).sum().item() == int(0.3 * a.numel())
    assert sparsity(mask) == pytest.approx(0.3, abs=1e-4)


def test_sensitivity_mask():
    """Mirrors test_thresholding.py::test_sensitivity_mask: 1 std of N(0, 1) holds ~68.27%.

    The 0.005 tolerance is Distiller's; with 196,608 samples the binomial std of the fraction is
    about 0.001, so it is five standard deviations (a fixed seed makes it deterministic anyway).
    """
    a = torch.randn(3, 64, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = create_mask_sensitivity_criterion(a, sensitivity=1)
    assert sparsity(mask) == pytest.approx(0.6827, abs=0.005)


def test_kernel_thresholding():
    """Mirrors test_thresholding.py::test_kernel_thresholding ('2D', 6, 'L1')."""
    mask, binary_map = group_threshold_mask(get_4d(), "2D", 6, "L1")
    assert binary_map.shape == torch.Size([6])
    assert torch.equal(binary_map, torch.tensor([1., 1., 0., 1., 0., 1.], dtype=torch.float64))
    assert torch.equal(mask, _expand_kernels([[1, 1, 0], [1, 0, 1]]))


def test_filter_thresholding():
    """Mirrors test_thresholding.py::test_filter_thresholding ('3D', 4.7, 'L2')."""
    mask, binary_map = group_threshold_mask(get_4d(), "3D", 4.7, "L2")
    assert binary_map.shape == torch.Size([2])
    assert torch.equal(binary_map, torch.tensor([0., 1.], dtype=torch.float64))
    assert torch.equal(mask, _expand_kernels([[0, 0, 0], [1, 1, 1]]))


def test_channel_thresholding_1():
    """Mirrors test_thresholding.py::test_channel_thresholding_1 ('Channels', 3.7, 'L2')."""
    mask, binary_map = group_threshold_mask(get_4d(), "Channels", 3.7, "L2")
    assert binary_map.shape == torch.Size([3])
    assert torch.equal(binary_map, torch.tensor([1., 0., 1.], dtype=torch.float64))
    assert torch.equal(mask, _expand_kernels([[1, 0, 1], [1, 0, 1]]))


def test_channel_thresholding_2():
    """Mirrors test_thresholding.py::test_channel_thresholding_2 ('Channels', 0.7, 'Mean_L1')."""
    mask, binary_map = group_threshold_mask(get_4d(), "Channels", 0.7, "Mean_L1")
    assert binary_map.shape == torch.Size([3])
    assert torch.equal(binary_map, torch.tensor([1., 1., 0.], dtype=torch.float64))
    assert torch.equal(mask, _expand_kernels([[1, 1, 0], [1, 1, 0]]))


def test_row_thresholding():
    """Mirrors test_thresholding.py::test_row_thresholding: 'Rows' are the stored rows."""
    p = get_2d()
    mask, binary_map = group_threshold_mask(p, "Rows", 7, "Max")
    assert torch.equal(binary_map, torch.tensor([0., 0., 1., 1.], dtype=torch.float64))
    assert torch.equal(mask, torch.tensor([[0., 0., 0.], [0., 0., 0.], [1., 1., 1.], [1., 1., 1.]],
                                          dtype=torch.float64))
    assert sparsity(p * mask) == sparsity(mask)   # distiller.mask_tensor(p, mask) is p * mask
    assert torch.equal(group_threshold_mask(p, "OutputNeurons", 7, "Max")[0], mask)


def test_col_thresholding():
    """Mirrors test_thresholding.py::test_col_thresholding: 'Cols' are the stored columns."""
    p = get_2d()
    mask, _ = group_threshold_mask(p, "Cols", 11, "Max")
    assert torch.equal(mask, torch.tensor([[0., 0., 1.]] * 4, dtype=torch.float64))
    assert torch.equal(group_threshold_mask(p, "InputFeatures", 11, "Max")[0], mask)


def test_bad_names_are_value_errors_listing_the_valid_ones():
    """Distiller raised ValueError for a bad criterion and asserted on a bad group type."""
    with pytest.raises(ValueError, match=r"^threshold_criteria: unknown criterion 'L3'; valid: "
                                         r"Mean_Abs, Mean_L1, L1, Mean_L2, L2, Max$"):
        group_threshold_mask(get_2d(), "Rows", 1, "L3")
    with pytest.raises(ValueError, match=r"^group_type: '4D' cannot be thresholded; valid: 2D, 3D, "
                                         r"Filters, Channels, Rows, Cols, OutputNeurons, InputFeatures$"):
        group_threshold_mask(get_4d(), "4D", 1, "L1")
