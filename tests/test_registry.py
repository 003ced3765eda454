"""Registries: exact names for schedule classes; criteria found in any case and by informal spellings
that are accepted but never listed."""
import pytest

from compressor.errors import ComponentArgError
from compressor.pruners import criteria
from compressor.registry import CRITERIA, PRUNERS, Registry


def test_criteria_are_one_registry_listing_only_their_names():
    assert CRITERIA.names() == ["APoZ", "BNGamma", "L1", "L2", "MeanActivation", "Random", "Taylor"]
    assert criteria.CRITERIA is CRITERIA


@pytest.mark.parametrize("spelling, cls", [
    ("L1", criteria.L1Magnitude), ("l1", criteria.L1Magnitude), ("bngamma", criteria.BatchNormGamma),
    ("bn_gamma", criteria.BatchNormGamma), ("BN_GAMMA", criteria.BatchNormGamma),
    ("mean", criteria.MeanActivation), ("Mean_Activation", criteria.MeanActivation),
    ("gradient", criteria.Taylor), ("TAYLOR", criteria.Taylor), ("random", criteria.RandomScore)])
def test_a_criterion_is_found_in_any_case_and_by_its_spellings(spelling, cls):
    assert CRITERIA.find(spelling) is cls and spelling in CRITERIA
    assert type(criteria.make_criterion(spelling, seed=3)) is cls


def test_random_criterion_gets_the_seed():
    assert criteria.make_criterion("Random", seed=7).seed == 7


def test_unknown_criterion_names_the_key_a_suggestion_and_the_valid_names():
    with pytest.raises(ComponentArgError) as e:
        criteria.make_criterion("MeanActiv", key="criterion")
    assert e.value.key == "criterion"
    assert e.value.reason == ("unknown criterion 'MeanActiv' (did you mean 'MeanActivation'?); valid: "
                              "APoZ, BNGamma, L1, L2, MeanActivation, Random, Taylor")


def test_schedule_class_names_stay_exact():
    assert "L1RankedStructureParameterPruner" in PRUNERS
    assert "l1rankedstructureparameterpruner" not in PRUNERS
    with pytest.raises(KeyError, match="unknown pruner class 'l1rankedstructureparameterpruner' "
                                       r"\(did you mean 'L1RankedStructureParameterPruner'"):
        PRUNERS.get("l1rankedstructureparameterpruner")


def test_spellings_resolve_but_are_not_listed_and_names_cannot_be_taken_twice():
    reg = Registry("thing", ignore_case=True)

    @reg.register(name="Alpha", aliases=("A",), spellings=("first",))
    class Alpha:
        pass

    assert reg.names() == ["A", "Alpha"]
    assert reg.get("FIRST") is Alpha and reg.get("a") is Alpha
    with pytest.raises(ValueError, match="thing 'A' is already registered"):
        reg.register(type("Other", (), {}), name="A")
    with pytest.raises(KeyError, match=r"unknown thing class 'beta'; registered: A, Alpha"):
        reg.get("beta")
