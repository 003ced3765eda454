"""torch.compile: pruned weights stay exactly zero, and thinning makes it recompile, not fail."""
import pytest
import torch

import compressor

from helpers import TinyNet, assert_same_function, train


@pytest.mark.slow          # torch.compile compiles twice (seconds, more on a busy machine)
def test_compiled_model_trains_under_a_schedule_and_recompiles_after_thinning(float64):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = compressor.dict_config(model, opt, {
        "pruners": {
            "f": {"class": "L1RankedStructureParameterPruner", "desired_sparsity": 0.5,
                  "group_type": "Filters", "weights": ["conv2.weight"]},
            "a": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.5, "final_sparsity": 0.8,
                  "weights": ["fc.weight"]}},
        "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                             "input_shape": [1, 8, 8]}},
        "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                     {"pruner": {"instance_name": "a"}, "epochs": [0, 1]},
                     {"extension": {"instance_name": "t"}, "epochs": [1]}]})
    compiled = torch.compile(model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def masked_weights_are_zero(epoch, i):
        mask = sched.store.masks["fc.weight"]
        assert torch.all(model.fc.weight[mask == 0] == 0)

    # The compiled wrapper runs the forward; the scheduler holds (and thins) the model inside it.
    train(compiled, opt, sched, [(x, y)] * 2, epochs=2, after_step=masked_weights_are_zero)
    assert tuple(model.conv2.weight.shape) == (8, 8, 3, 3)       # thinned from 16 filters
    model.eval()
    assert_same_function(compiled(x), model(x))     # recompiled for the new shapes; float64, as
    # fused kernels sum in another order than eager ones
