"""Checkpoints are written atomically, read safely, and restore exactly what was saved."""
import errno
import io
import os
import pickle

import pytest
import torch

import compressor
from compressor.checkpoint import (atomic_write, load_checkpoint, read_checkpoint, restore,
                                   save_checkpoint)
from compressor.errors import CheckpointError, CheckpointWriteError, OptimizerMismatchError

from checkpoint_damage import flip_exponent_bit_in_file
from helpers import TinyNet, make_batches, train


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
    # The library names no command-line flag; the app adds "use --reset-optimizer" (bad_inputs/64).
    with pytest.raises(OptimizerMismatchError, match=r"optimizer state is for SGD, not Adam; restore "
                                                     r"without an optimizer"):
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


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt: checkpoint file not found") as info:
        load_checkpoint(TinyNet(), str(tmp_path / "nope.pt"))
    assert isinstance(info.value, CheckpointError) and info.value.filename.endswith("nope.pt")


def test_optimizer_is_rebuilt_from_the_checkpoint_when_none_is_given(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.003, betas=(0.8, 0.99))
    for x, y in make_batches():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, epoch=0)
    m2 = TinyNet()
    _, _, opt2, start = load_checkpoint(m2, path)
    assert type(opt2) is torch.optim.Adam and start == 1
    assert opt2.param_groups[0]["lr"] == 0.003 and opt2.param_groups[0]["betas"] == (0.8, 0.99)
    assert all(p2 in opt2.state and torch.equal(opt.state[p]["exp_avg"], opt2.state[p2]["exp_avg"])
               for p, p2 in zip(model.parameters(), m2.parameters()))
    assert load_checkpoint(TinyNet(), path, lean_checkpoint=True)[2] is None


def test_an_optimizer_class_outside_torch_optim_is_not_rebuilt(tmp_path):
    class MyOpt(torch.optim.SGD):
        pass
    model = TinyNet()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, MyOpt(model.parameters(), lr=0.1))
    with pytest.warns(UserWarning, match=r"optimizer_type 'MyOpt' is not a torch\.optim class"):
        assert load_checkpoint(TinyNet(), path)[2] is None


def thinned_tiny():
    from compressor.thinning import contract_model
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.conv1.weight[:3] = 0
        model.conv1.bias[:3] = 0
        model.bn1.weight[:3] = 0
        model.bn1.bias[:3] = 0
    contract_model(model, (1, 8, 8))
    assert model.conv1.out_channels == 5
    return model.eval()


def test_a_thinned_checkpoint_loads_into_a_model_already_thinned_the_same_way(tmp_path):
    model = thinned_tiny()
    path = save_checkpoint(str(tmp_path / "t.pth.tar"), model)
    dense = TinyNet()
    load_checkpoint(dense, path)                  # dense: the recipe is replayed
    load_checkpoint(dense, path)                  # already thinned: nothing to replay
    again = thinned_tiny()
    load_checkpoint(again, path)
    x = torch.randn(2, 1, 8, 8)
    for m in (dense, again):
        assert len(m.thinning_recipes) == 1
        assert torch.equal(m.eval()(x), model(x))   # same weights and shapes: identical outputs


def test_legacy_batch_norm_without_counter_and_dataparallel_prefix_load(tmp_path):
    model = thinned_tiny()
    ckpt = compressor.checkpoint.make_checkpoint(model)
    ckpt["state_dict"] = {"module." + k: v for k, v in ckpt["state_dict"].items()
                          if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth.tar"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    m2 = TinyNet()
    load_checkpoint(m2, str(path))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(m2.eval()(x), model(x))


# -- issue 13: damaged and crafted checkpoints are refused in one line ---------------------------

FIXTURE_V1 = os.path.join(os.path.dirname(__file__), "fixtures", "v1_simplenet_thin.pth.tar")


def test_a_flipped_exponent_bit_in_the_file_is_refused(tmp_path):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched, epoch=0)
    flip_exponent_bit_in_file(path, model.state_dict()["fc.weight"])
    # torch itself loads the damaged file: the weight is off by a factor of 2**128 (or 2**-128)
    raw = torch.load(path, weights_only=True)["state_dict"]["fc.weight"]
    assert not torch.equal(raw, model.state_dict()["fc.weight"])
    with pytest.raises(CheckpointError, match=r"c\.pth\.tar: damaged: tensor checksum mismatch"):
        read_checkpoint(path)


@pytest.mark.parametrize("part", ["state_dict", "optimizer_state_dict", "compression_sched"])
def test_a_tensor_edited_under_the_old_digest_is_refused(tmp_path, part):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched, epoch=0)
    ckpt = torch.load(path, weights_only=True)
    tensor = {"state_dict": lambda c: c["state_dict"]["fc.weight"],
              "optimizer_state_dict": lambda c: next(iter(c["optimizer_state_dict"]["state"].values()))["momentum_buffer"],
              "compression_sched": lambda c: c["compression_sched"]["masks_dict"]["masks"]["fc.weight"]}[part](ckpt)
    flat = tensor.view(-1)
    flat[0] = ~flat[0] if tensor.dtype == torch.bool else flat[0] * 2.0
    torch.save(ckpt, path)   # the digest saved with the original tensors is kept
    with pytest.raises(CheckpointError, match=r"damaged: tensor checksum mismatch"):
        read_checkpoint(path)


def test_checkpoints_without_a_digest_still_load(tmp_path):
    assert "tensor_sha256" not in torch.load(FIXTURE_V1, weights_only=True)
    ckpt = read_checkpoint(FIXTURE_V1)
    assert "state_dict" in ckpt
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched, epoch=0)
    assert isinstance(torch.load(path, weights_only=True)["tensor_sha256"], str)
    load_checkpoint(TinyNet(), path)


def crafted(tmp_path, edit):
    """A pruned-run checkpoint edited by ``edit(ckpt)`` and saved without a digest (as a crafter would)."""
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched, epoch=2)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["tensor_sha256"]
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def momentum_of(ckpt, name_index=0):
    return ckpt["optimizer_state_dict"]["state"][name_index]


def masks_of(ckpt):
    return ckpt["compression_sched"]["masks_dict"]


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(epoch="three"), r"c\.pth\.tar: 'epoch' must be an integer >= -1 .*got 'three' \(str\)"),
    (lambda c: c.update(epoch=-5), r"'epoch' must be an integer >= -1 .*got -5"),
    (lambda c: c.update(epoch=True), r"'epoch' must be an integer >= -1"),
    (lambda c: c.update(extras=[1, 2]), r"'extras' must be a dict; got list"),
    (lambda c: c["extras"].update(resume_epoch=-1), r"extras\['resume_epoch'\] must be an integer >= 0; got -1"),
    (lambda c: c["extras"].update(resume_minibatch="40"), r"extras\['resume_minibatch'\] must be an integer >= 0"),
    (lambda c: c["extras"].update(rng_state=[1, 2]), r"extras\['rng_state'\] must be a 1-d uint8 tensor"),
    (lambda c: c["optimizer_state_dict"]["param_groups"][0].update(lr="0.1"),
     r"optimizer_state_dict param_groups\[0\]\['lr'\] must be a finite number; got '0\.1' \(str\)"),
    (lambda c: c["optimizer_state_dict"]["param_groups"][0].update(momentum=float("nan")),
     r"param_groups\[0\]\['momentum'\] must be a finite number"),
    (lambda c: c.update(optimizer_state_dict=[]), r"optimizer_state_dict must be a dict"),
    (lambda c: c["state_dict"].update({"fc.weight": 3}), r"state_dict\['fc\.weight'\] must be a tensor; got int"),
])
def test_crafted_fields_are_refused_on_read(tmp_path, edit, match):
    path = crafted(tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


@pytest.mark.parametrize("given", [True, False])
def test_a_momentum_buffer_of_the_wrong_shape_is_refused(tmp_path, given):
    def edit(c):
        momentum_of(c)["momentum_buffer"] = torch.zeros(3, 3)
    path = crafted(tmp_path, edit)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if given else None
    with pytest.raises(CheckpointError, match=r"c\.pth\.tar: optimizer state 'momentum_buffer' of "
                                              r"parameter 0 has shape \(3, 3\), the parameter has"):
        load_checkpoint(model, path, opt)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["compression_sched"].update(masks_dict=5), r"c\.pth\.tar: masks must be a dict .*got int"),
    (lambda c: masks_of(c)["masks"].update({"fc.weight": 1}), r"c\.pth\.tar: mask for 'fc\.weight' must be a tensor of 0/1; got int"),
    (lambda c: masks_of(c)["masks"].update({"fc.weight": torch.full_like(masks_of(c)["masks"]["fc.weight"], 0.5, dtype=torch.float32)}),
     r"mask for 'fc\.weight' must hold only 0 and 1; found 0\.5"),
    (lambda c: masks_of(c).update(forward_only=3), r"masks 'forward_only' must be a list"),
])
def test_crafted_masks_are_refused(tmp_path, edit, match):
    path = crafted(tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(TinyNet(), path)


def test_float_masks_of_zeros_and_ones_still_load(tmp_path):
    def edit(c):
        m = masks_of(c)["masks"]
        m["fc.weight"] = m["fc.weight"].float()   # Distiller saved masks in the weight's dtype
    path = crafted(tmp_path, edit)
    _, sched, _, start = load_checkpoint(TinyNet(), path)
    assert start == 3 and set(sched.masks) == {"fc.weight", "conv2.weight"}


def _disk_full(*_):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDisk(io.RawIOBase):
    """A file that takes a few writes and then reports a full disk, as a real one does mid-save."""

    def __init__(self, real):
        self.real, self.writes = real, 0

    def writable(self):
        return True

    def write(self, b):
        self.writes += 1
        if self.writes > 3:
            _disk_full()
        return self.real.write(b)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    model, opt, sched = pruned_run()
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, opt, sched, epoch=1)
    before = open(path, "rb").read()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    if where == "write":   # torch's zip writer wraps the OSError in a RuntimeError
        real_save = torch.save
        monkeypatch.setattr(torch, "save", lambda obj, f, **kw: real_save(obj, _FullDisk(f), **kw))
    else:
        monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(CheckpointWriteError, match=r"c\.pth\.tar: could not write the checkpoint "
                                                   r"\(No space left on device\); the previous") as info:
        save_checkpoint(path, model, opt, sched, epoch=2)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert len(str(info.value).splitlines()) == 1
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.pth.tar"]   # the temporary file is gone
    assert open(path, "rb").read() == before
    assert read_checkpoint(path)["epoch"] == 1


def test_other_runtime_errors_while_saving_are_not_disguised(tmp_path, monkeypatch):
    def broken(*_, **__):
        raise RuntimeError("a bug, not the disk")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="a bug, not the disk"):
        save_checkpoint(str(tmp_path / "c.pth.tar"), TinyNet())
    assert os.listdir(tmp_path) == []


def test_the_app_reports_a_full_disk_at_a_checkpoint_in_one_line(tmp_path, monkeypatch, capsys):
    from compressor_apps.compress_classifier import main
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, **kw: real_save(obj, _FullDisk(f), **kw))
    code = main(["--arch", "simplenet_mnist", "--dataset", "digits", "--epochs", "1",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "could not write the checkpoint (No space left on device)" in err[0]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".tmp-")]
