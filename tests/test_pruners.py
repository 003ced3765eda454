"""Pruners compute masks with the exact counts and rules they promise."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compressor.errors import ComponentArgError
from compressor.pruners import (AutomatedGradualPruner, GlobalAutomatedGradualPruner,
                                MagnitudeParameterPruner, PruneContext, SensitivityPruner,
                                SparsityLevelParameterPruner, SplicingPruner, level_mask)
from compressor.schedules import agp_sparsity, agp_sparsity_at_epoch


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), s=st.floats(0, 0.999),
       seed=st.integers(0, 1000))
def test_level_mask_prunes_exactly_floor_of_the_target_and_the_smallest(shape, s, seed):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = level_mask(w, s)
    k = math.floor(s * w.numel() + 1e-6)
    assert int((~mask).sum()) == k
    if 0 < k < w.numel():
        assert w.abs()[~mask].max() <= w.abs()[mask].min()


def test_level_mask_breaks_ties_exactly_and_keeps_zeros_pruned():
    w = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0])
    mask = level_mask(w, 0.5)
    assert int((~mask).sum()) == 4 and not mask[0] and not mask[1]


@settings(max_examples=100, deadline=None)
@given(start=st.integers(0, 20), length=st.integers(2, 40), freq=st.integers(1, 7),
       si=st.floats(0, 0.5), extra=st.floats(0, 0.49))
def test_event_form_of_agp_equals_distillers_epoch_form(start, length, freq, si, extra):
    sf = si + extra
    epochs = list(range(start, start + length, freq))
    for k, epoch in enumerate(epochs):
        a = agp_sparsity(si, sf, k, len(epochs))
        b = agp_sparsity_at_epoch(si, sf, epoch, start, start + length, freq)
        assert a == pytest.approx(b, abs=1e-12)
    assert agp_sparsity(si, sf, len(epochs) - 1, len(epochs)) == pytest.approx(sf)


def test_agp_schedule_is_monotone_and_hits_both_ends():
    values = [agp_sparsity(0.05, 0.9, k, 10) for k in range(10)]
    assert values[0] == pytest.approx(0.05) and values[-1] == pytest.approx(0.9)
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_magnitude_pruner_thresholds():
    p = MagnitudeParameterPruner("m", {"w": 0.5})
    w = torch.tensor([0.1, -0.5, 0.6, -2.0])
    assert p.tensor_mask("w", w, PruneContext(0)).tolist() == [False, False, True, True]


def test_sensitivity_pruner_keeps_the_first_std_and_saves_it():
    p = SensitivityPruner("s", {"w": 1.0})
    w = torch.tensor([1.0, -1.0, 3.0, -3.0])
    std = float(w.std())
    m1 = p.tensor_mask("w", w, PruneContext(0))
    assert m1.tolist() == [False, False, True, True]
    w2 = torch.tensor([0.0, 0.0, 2.7, -3.0])    # fine-tuned weights: std changed, threshold did not
    assert p.tensor_mask("w", w2, PruneContext(1)).tolist() == [False, False, True, True]
    q = SensitivityPruner("s", {"w": 1.0})
    q.load_state_dict(p.state_dict())
    assert q.stds == {"w": pytest.approx(std)}


def test_level_pruner_skips_level_zero_and_policy_levels_override():
    p = SparsityLevelParameterPruner("l", {"a": 0.0, "b": 0.5})
    w = torch.arange(1.0, 9.0)
    assert p.tensor_mask("a", w, PruneContext(0)) is None
    assert int((~p.tensor_mask("b", w, PruneContext(0))).sum()) == 4
    ctx = PruneContext(0, args={"levels": {"b": 0.25}})
    assert int((~p.tensor_mask("b", w, ctx)).sum()) == 2


def test_global_agp_ranks_across_layers_and_never_empties_a_layer():
    small = torch.full((100,), 0.01)
    large = torch.linspace(1, 2, 100)
    p = GlobalAutomatedGradualPruner("g", 0.5, 0.5, ["small", "large"], min_density=0.05)
    masks = p.masks({"small": small, "large": large}, PruneContext(0))
    assert int((~masks["small"]).sum()) == 95          # 5% of the small layer protected
    assert int((~masks["large"]).sum()) == 5           # the remaining 5 come from the large layer
    assert int((~torch.cat([masks["small"], masks["large"]])).sum()) == 100


def test_splicing_cuts_low_splices_high_keeps_middle():
    p = SplicingPruner("s", {"w": 0.0}, low_thresh_mult=0.5, hi_thresh_mult=1.5)
    w = torch.tensor([0.1, 1.0, 1.0, 1.9])             # mean |w| = 1.0 -> cut < 0.5, keep >= 1.5
    old = torch.tensor([True, False, True, False])
    mask = p.tensor_mask("w", w, PruneContext(0, current={"w": old}))
    assert mask.tolist() == [False, False, True, True]


@pytest.mark.parametrize("make,key,match", [
    (lambda: AutomatedGradualPruner("a", -0.1, 0.5, ["w"]), "initial_sparsity", r"must be in \[0\.0, 1\.0\)"),
    (lambda: AutomatedGradualPruner("a", 0.1, 0.5, []), "weights", "non-empty list"),
    (lambda: MagnitudeParameterPruner("m", {"w": -1}), "thresholds.w", r"must be >= 0\.0; got -1"),
    (lambda: MagnitudeParameterPruner("m", [0.1]), "thresholds", "must map weight names"),
    (lambda: SplicingPruner("s", {"w": 1}, 2.0, 1.0), "hi_thresh_mult", "must be >= low_thresh_mult"),
    (lambda: GlobalAutomatedGradualPruner("g", 0.1, 0.5, ["w"], min_density=2), "min_density", r"\[0\.0, 1\.0\]"),
])
def test_bad_arguments_name_the_argument(make, key, match):
    with pytest.raises(ComponentArgError, match=match) as info:
        make()
    assert info.value.key == key
