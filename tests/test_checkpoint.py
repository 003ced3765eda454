"""Checkpoints are written atomically, read safely, and restore exactly what was saved."""
import os
import pickle

import pytest
import torch

import compressor
from compressor.checkpoint import (atomic_write, load_checkpoint, read_checkpoint, restore,
                                   save_checkpoint)
from compressor.errors import CheckpointError

from conftest import TinyNet, make_batches, train


def pruned_run():
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = compressor.dict_config(model, opt, {
        "pruners": {"p": {"class": "LevelPruner", "levels": {"fc.weight": 0.5, "conv2.weight": 0.3}}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]})
    train(model, opt, sched, make_batches(), epochs=1)
    return model, opt, sched


def test_round_trip_restores_weights_optimizer_and_masks(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched, arch="tiny",
                           dataset="mnist", epoch=3, extras={"best_top1": 91.5})
    torch.manual_seed(1)
    model2 = TinyNet()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    m, s, o, start = load_checkpoint(model2, path, opt2)
    assert start == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(s.masks["fc.weight"].bool(), sched.masks["fc.weight"].bool())
    assert read_checkpoint(path)["extras"] == {"best_top1": 91.5}


def test_checkpoint_loads_without_this_library(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched)
    ckpt = torch.load(path, weights_only=True)      # plain torch, safe mode
    assert set(ckpt["state_dict"]) == set(model.state_dict())


def test_a_crash_mid_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    path = str(tmp_path / "c.pth.tar")
    atomic_write(path, lambda f: f.write(b"good"))

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert open(path, "rb").read() == b"good"
    assert os.listdir(tmp_path) == ["c.pth.tar"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"refused: the file holds pickled Python objects"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("content,match", [
    (b"", r"damaged or not a checkpoint"),
    (b"PK\x03\x04garbage", r"damaged or not a checkpoint"),
])
def test_damaged_files_are_named(tmp_path, content, match):
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(str(path))


def test_truncated_checkpoint_is_reported(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pth\.tar: damaged or not a checkpoint"):
        read_checkpoint(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"not a compressor checkpoint \(no 'state_dict' entry\)"):
        read_checkpoint(str(path))
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint file not found"):
        read_checkpoint(str(tmp_path / "nope.pt"))


def test_other_architecture_and_wrong_shapes_are_refused(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, arch="tiny")
    ckpt = read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"checkpoint is for architecture 'tiny', not 'resnet20_cifar'"):
        restore(ckpt, TinyNet(), arch="resnet20_cifar", path=path)
    other = TinyNet()
    other.fc = torch.nn.Linear(64, 5)
    before = other.fc.weight.clone()
    with pytest.raises(CheckpointError, match=r"weights do not fit the model \(shape mismatch: fc\.weight \(10, 64\) vs model \(5, 64\)"):
        restore(ckpt, other, path=path)
    assert torch.equal(before, other.fc.weight)


def test_optimizer_type_mismatch_is_explained(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt)
    m = TinyNet()
    with pytest.raises(CheckpointError, match=r"optimizer state is for SGD, not Adam; use --reset-optimizer"):
        restore(read_checkpoint(path), m, torch.optim.Adam(m.parameters()), path=path)


def test_non_strict_load_tolerates_missing_and_extra_names(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model)
    other = TinyNet()
    other.extra = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing: extra\.weight, extra\.bias"):
        load_checkpoint(other, path)
    load_checkpoint(other, path, strict=False)
    assert torch.equal(other.fc.weight, model.fc.weight)
