"""Network slimming: a global |gamma| threshold across batch norms, then exact thinning."""
import pytest
import torch

import compressor
from compressor.errors import ScheduleError
from compressor.models import create_model
from compressor.thinning import contract_model
from helpers import assert_same_function


def slim(model, sparsity, weights=("features.*.weight",)):
    bn_names = [n for n, p in model.named_parameters() if p.dim() == 1 and n.endswith(".weight")]
    return compressor.dict_config(model, None, {
        "pruners": {"slim": {"class": "NetworkSlimmingPruner", "desired_sparsity": sparsity,
                             "weights": bn_names}},
        "policies": [{"pruner": {"instance_name": "slim"}, "epochs": [0]}]}), bn_names


def test_global_threshold_prunes_the_smallest_gammas_across_layers_and_thins_exactly(float64):
    torch.manual_seed(0)
    model = create_model("vgg11_bn_cifar").eval()
    bn_layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():       # layer 0's gammas are tiny: a global rank takes most channels there
        for i, bn in enumerate(bn_layers):
            bn.weight.copy_(torch.rand(bn.num_features) * (0.01 if i == 0 else 1.0) + 0.001)
    sched, bn_names = slim(model, 0.3)
    sched.on_epoch_begin(0)
    gammas = torch.cat([dict(model.named_parameters())[n].detach() for n in bn_names])
    total = gammas.numel()
    assert int((gammas == 0).sum()) == int(0.3 * total)
    first = bn_layers[0]
    assert int((first.weight == 0).sum()) == first.num_features - 1     # min_channels=1 kept
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        masked = model(x)
    result = contract_model(model, (3, 32, 32), store=sched)
    assert result.changed and result.nonzero_bias_removed == 0
    assert bn_layers[0].num_features == 1
    with torch.no_grad():
        assert_same_function(model(x), masked)      # float64: exact up to rounding


def test_slimming_errors_are_located():
    model = create_model("vgg11_bn_cifar")
    with pytest.raises(ScheduleError, match=r"pruners\.slim\.weights\.features\.0\.weight: is not a batch-norm scale"):
        compressor.dict_config(model, None, {
            "pruners": {"slim": {"class": "NetworkSlimmingPruner", "desired_sparsity": 0.3,
                                 "weights": ["features.0.weight"]}},
            "policies": [{"pruner": {"instance_name": "slim"}, "epochs": [0]}]})
    with pytest.raises(ScheduleError, match=r"pruners\.slim\.desired_sparsity: give desired_sparsity, or final_sparsity"):
        compressor.dict_config(model, None, {
            "pruners": {"slim": {"class": "NetworkSlimmingPruner", "weights": ["features.1.weight"]}},
            "policies": [{"pruner": {"instance_name": "slim"}, "epochs": [0]}]})
