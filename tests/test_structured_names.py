"""Distiller's ranked-pruner names come from one table: each row registers a fixed and an AGP name
that take exactly their form's arguments, fix the criterion, and report errors under their own name."""
import inspect

import pytest
import torch
from torch import nn

import compressor
from compressor.errors import ScheduleError
from compressor.pruners import structured_names as names
from compressor.registry import PRUNERS


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x))))


ROWS = [row[0] for row in names.ALIASES]


@pytest.mark.parametrize("name", ROWS)
def test_each_row_registers_a_fixed_and_an_agp_name_with_the_forms_signature(name):
    for alias, form in ((name, names._FixedForm), (name + "_AGP", names._AGPForm)):
        cls = PRUNERS.get(alias)
        assert cls is names.ALIAS_CLASSES[alias] is getattr(compressor.pruners, alias)
        assert cls.__name__ == alias and issubclass(cls, form)
        assert inspect.signature(cls.__init__) == inspect.signature(form.__init__)
        assert cls.__doc__


@pytest.mark.parametrize("name, criterion, group_types, select, _", names.ALIASES)
def test_a_row_fixes_criterion_group_types_and_selection(name, criterion, group_types, select, _):
    for alias in (name, name + "_AGP"):
        cls = PRUNERS.get(alias)
        assert cls.criterion_name == criterion and cls.group_types == group_types
        if select is not None:
            assert cls.__mro__[1] is select   # its select() comes before the ranking one


def _build(pruner: dict):
    model = Net()
    schedule = {"version": 1, "pruners": {"p": pruner},
                "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0,
                              "ending_epoch": 2, "frequency": 1}]}
    return compressor.dict_config(model, torch.optim.SGD(model.parameters(), lr=0.1), schedule)


def test_an_alias_rejects_an_unknown_argument_under_its_own_name_listing_its_forms_arguments():
    with pytest.raises(ScheduleError, match=r"pruners\.p\.criterion: L1RankedStructureParameterPruner_AGP "
                                            r"has no parameter 'criterion'; valid: initial_sparsity, "
                                            r"final_sparsity, group_type, weights, group_dependency, "
                                            r"kwargs, noise, group_size, rounding_fn, seed, round_to$"):
        _build({"class": "L1RankedStructureParameterPruner_AGP", "initial_sparsity": 0.1,
                "final_sparsity": 0.5, "group_type": "Filters", "weights": ["conv1.weight"],
                "criterion": "L2"})


def test_a_filter_only_alias_rejects_other_group_types():
    with pytest.raises(ScheduleError, match=r"pruners\.p\.group_type: group type 'Channels' is not "
                                            r"supported here; valid: 3D, Filters"):
        _build({"class": "BNGammaRankedFilterPruner", "group_type": "Channels",
                "desired_sparsity": 0.3, "weights": ["conv2.weight"]})
