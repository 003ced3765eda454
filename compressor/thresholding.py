"""Distiller's tensor-thresholding functions (``distiller/thresholding.py``), for ported code.

``group_threshold_mask(param, group_type, threshold, threshold_criteria)`` cuts ``param`` into
groups, computes one statistic per group and keeps the groups whose statistic is strictly above
``threshold``; it returns ``(mask, binary_map)`` as Distiller did, both in ``param``'s dtype.
``Rows``/``Cols`` mean what they meant in Distiller's thresholding and group-lasso code: stored rows
``W[i, :]`` and stored columns ``W[:, j]`` (``OutputNeurons``/``InputFeatures`` in
``compressor.groups``, whose ``Rows``/``Cols`` follow Distiller's pruners instead). The three
``create_mask_*_criterion`` functions are the element-wise masks Distiller's pruners used.
Everything here is computed without gradients and returns new tensors.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .groups import expand_group_mask, group_norms
from .pruners.base import level_mask, threshold_mask
from .regularizers.group_lasso import REGULARIZER_2D_GROUP_TYPES

__all__ = ["group_threshold_mask", "create_mask_threshold_criterion",
           "create_mask_level_criterion", "create_mask_sensitivity_criterion",
           "THRESHOLD_CRITERIA", "THRESHOLD_GROUP_TYPES"]

# Distiller's criterion names -> the compressor.groups statistic ('Mean' = divided by group size).
THRESHOLD_CRITERIA: Dict[str, str] = {"Mean_Abs": "mean_abs", "Mean_L1": "mean_abs", "L1": "l1",
                                      "Mean_L2": "mean_l2", "L2": "l2", "Max": "max"}
THRESHOLD_GROUP_TYPES: Tuple[str, ...] = ("2D", "3D", "Filters", "Channels", "Rows", "Cols",
                                          "OutputNeurons", "InputFeatures")


def group_threshold_mask(param: torch.Tensor, group_type: str, threshold,
                         threshold_criteria: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mask, binary_map)``: ``binary_map[g]`` is 1 where group ``g``'s statistic is > ``threshold``.

    ``group_type``: one of ``THRESHOLD_GROUP_TYPES``; ``threshold_criteria``: one of
    ``THRESHOLD_CRITERIA`` (exact spelling, as in Distiller). A bad name is a ``ValueError`` that
    lists the valid ones; a group type that does not fit ``param``'s rank is a ``ValueError`` too.
    """
    if threshold_criteria not in THRESHOLD_CRITERIA:
        raise ValueError(f"threshold_criteria: unknown criterion {threshold_criteria!r}; valid: "
                         f"{', '.join(THRESHOLD_CRITERIA)}")
    if group_type not in THRESHOLD_GROUP_TYPES:
        raise ValueError(f"group_type: {group_type!r} cannot be thresholded; valid: "
                         f"{', '.join(THRESHOLD_GROUP_TYPES)}")
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.item()
    part = REGULARIZER_2D_GROUP_TYPES.get(group_type, group_type)
    with torch.no_grad():
        stats = group_norms(param.detach(), part, THRESHOLD_CRITERIA[threshold_criteria])
        binary_map = (stats > threshold).to(param.dtype)
        mask = expand_group_mask(binary_map, param.shape, part)
    return mask, binary_map


def create_mask_threshold_criterion(tensor: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where ``|tensor| > threshold``, else 0, in ``tensor``'s dtype."""
    with torch.no_grad():
        return threshold_mask(tensor.detach(), threshold).to(tensor.dtype)


def create_mask_level_criterion(tensor: torch.Tensor, desired_sparsity: float) -> torch.Tensor:
    """Zeroes exactly ``floor(desired_sparsity * numel)`` smallest-magnitude elements.

    Distiller zeroed every element at or below the k-th smallest magnitude, so ties could zero more.
    """
    with torch.no_grad():
        return level_mask(tensor.detach(), desired_sparsity).to(tensor.dtype)


def create_mask_sensitivity_criterion(tensor: torch.Tensor, sensitivity: float) -> torch.Tensor:
    """1 where ``|tensor| > sensitivity * std(tensor)`` (Han et al.'s threshold), else 0."""
    with torch.no_grad():
        t = tensor.detach()
        std = float(t.float().std()) if t.numel() > 1 else 0.0
        return threshold_mask(t, sensitivity * std).to(tensor.dtype)
