"""MaskStore names: masks saved from a wrapped model load into a plain one and back."""
import torch
from torch import nn

from compressor.masks import MaskStore, normalize_name


def test_normalize_name_drops_every_wrapper_segment():
    assert normalize_name("module.features.0.weight") == "features.0.weight"
    assert normalize_name("features._orig_mod.0.weight") == "features.0.weight"
    assert normalize_name("module.features._orig_mod.0.weight") == "features.0.weight"
    # names that only contain the words are left alone
    assert normalize_name("my_module.weight") == "my_module.weight"
    assert normalize_name("orig_mod_x.weight") == "orig_mod_x.weight"


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), nn.Linear(3, 2))


def test_masks_move_between_a_compiled_submodule_and_a_plain_model():
    plain = _net()
    compiled = _net()
    compiled[0] = torch.compile(compiled[0])   # its parameters are named 0._orig_mod.0.weight
    names = [n for n, _ in compiled.named_parameters()]
    assert "0._orig_mod.0.weight" in names

    src = MaskStore(compiled)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    src.set("0._orig_mod.0.weight", mask)
    state = src.state_dict()
    assert list(state["masks"]) == ["0.0.weight"]

    dst = MaskStore(plain)
    dst.load_state_dict(state)
    assert torch.equal(dst.masks["0.0.weight"], mask)

    back = MaskStore(compiled)
    back.load_state_dict(dst.state_dict())
    assert torch.equal(back.masks["0._orig_mod.0.weight"], mask)
