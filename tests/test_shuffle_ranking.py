"""Ranking filters coupled through ShuffleNet's channel shuffle (issue 12).

The shuffle couples channel k of each half into one class, and every stride-1 unit passes half of
its input on, so the classes of a stage cover 2, 4, 8 ... filters and the chunk of each unit must
lose as many channels from both halves. The structured pruner counts filters (not classes), ranks
classes by their mean score per filter, and picks how many classes of each kind go so that every
chunk stays balanced: every filter it zeroes is then removed by thinning, exactly (float64, the
bound of ``helpers.exact``), and the deepest units' last convolutions lose channels too.
"""
import pytest
import torch

import compressor
from compressor.graph.example_input import set_example_input
from compressor.pruners.coupling import make_units
from compressor.thinning import contract_model
from helpers import assert_same_function
from helpers.thinning import randomize_bn
from test_reach_cnn_patterns import ShuffleNetLike

pytestmark = pytest.mark.usefixtures("one_thread", "float64")

SHAPE = (3, 8, 8)


def convs(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def schedule(weights, fraction):
    return {"version": 1, "input_shape": list(SHAPE),
            "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": fraction, "weights": weights}},
            "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}


def zero_filters(model):
    return {n: int((m.weight.detach().flatten(1).abs().sum(1) == 0).sum())
            for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_every_zeroed_filter_is_thinned_and_the_function_kept(seed, fraction):
    torch.manual_seed(seed)
    model = ShuffleNetLike(c0=8, c=16, units=3).eval()
    randomize_bn(model, seed)
    sched = compressor.dict_config(model, None, schedule([f"{n}.weight" for n in convs(model)],
                                                         fraction))
    sched.on_epoch_begin(0)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        masked = model(x)
    before = {n: m.out_channels for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d)}
    contract_model(model, SHAPE, store=sched)
    with torch.no_grad():
        assert_same_function(model(x), masked)
    assert sum(zero_filters(model).values()) == 0   # nothing zeroed was left for balance
    after = {n: m.out_channels for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    if fraction == 0.5:   # the classes of the last unit's output are 8 filters wide
        assert after["stage.2.branch2.5"] < before["stage.2.branch2.5"]
        assert after["stage.1.branch2.5"] < before["stage.1.branch2.5"]


def test_wide_classes_are_counted_by_filters():
    """The unit of the stage's shuffled outputs covers classes of unequal widths; the chunks
    of units 1 and 2 are its balanced parts."""
    model = ShuffleNetLike(c0=8, c=16, units=3).eval()
    set_example_input(model, SHAPE)
    names = [n for n, _ in model.named_parameters()]
    units = [u for u in make_units([f"{n}.weight" for n in convs(model)], None, True, model,
                                   names) if u.index is not None]
    assert len(units) == 1
    unit = units[0]
    widths = {}
    for per in unit.index.values():
        for pos in per:
            widths[pos] = widths.get(pos, 0) + 1
    assert len(set(widths.values())) > 1
    assert unit.parts is not None and len(unit.parts) == 2
    assert all(len(rec) == 2 and len(rec[0]) == len(rec[1]) for rec in unit.parts)
