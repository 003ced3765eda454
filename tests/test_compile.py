"""torch.compile: pruned weights stay exactly zero, and thinning makes it recompile, not fail."""
import pytest
import torch

import compressor

from conftest import TinyNet, assert_same_function


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
    for epoch in range(2):
        sched.on_epoch_begin(epoch, opt)
        for i in range(2):
            sched.on_minibatch_begin(epoch, i, 2, opt)
            loss = torch.nn.functional.cross_entropy(compiled(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.on_minibatch_end(epoch, i, 2, opt)
            mask = sched.store.masks["fc.weight"]
            assert torch.all(model.fc.weight[mask == 0] == 0)
    assert tuple(model.conv2.weight.shape) == (8, 8, 3, 3)       # thinned from 16 filters
    model.eval()
    assert_same_function(compiled(x), model(x))     # recompiled for the new shapes; float64, as
    # fused kernels sum in another order than eager ones
