"""Property: on randomly generated networks (residual additions, concatenations, grouped and
depthwise convolutions, batch norm, a linear head after a flatten of a non-square map), removing
random zeroed structures leaves the function unchanged."""
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.thinning import contract_model, remove_channels, remove_filters
from helpers import assert_same_function
from helpers.random_nets import RandomNet, networks
from helpers.thinning import n_params, randomize_bn, zero_structures

# Small tensors (one intra-op thread); thinned == masked is exact in float64.
pytestmark = pytest.mark.usefixtures("one_thread", "float64")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), seed=st.integers(0, 2 ** 16), frac=st.floats(0.2, 0.8),
       how=st.sampled_from(["filters", "channels", "contract"]))
def test_random_networks_thin_exactly(net, seed, frac, how):
    shape, ops, head_in, hidden = net
    torch.manual_seed(seed)
    model = RandomNet(ops, head_in, hidden).eval()
    randomize_bn(model, seed)
    zero_structures(model, shape, frac, seed, mode="channels" if how == "channels" else "filters")
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = model(x)
    before = n_params(model)
    fn = {"filters": remove_filters, "channels": remove_channels, "contract": contract_model}[how]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fn(model, shape)
    assert n_params(model) <= before
    assert (n_params(model) < before) == result.changed
    with torch.no_grad():
        assert_same_function(model(x), ref)
    # the recipe alone rebuilds the thin model from the dense one
    from compressor.thinning import replay
    fresh = RandomNet(ops, head_in, hidden).eval()
    replay(fresh, getattr(model, "thinning_recipes", []))
    assert {n: p.shape for n, p in fresh.named_parameters()} == \
        {n: p.shape for n, p in model.named_parameters()}
