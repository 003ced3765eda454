"""Distiller's checkpoints load safely, replay their thinning recipes and compute what they saved.

The fixtures write Distiller-format files themselves (no copy of Distiller is needed): the legacy
(non-zip) torch serialization, ``optimizer_type`` as the pickled ``torch.optim.SGD`` class, recipes
as ``distiller.thinning.ThinningRecipe`` namedtuples (from a fake module put in ``sys.modules``
while saving), DataParallel ``module.`` prefixes, masks_dict with None values and batch norms
without ``num_batches_tracked``. One extra test reads the real files from a local mirror of
Distiller's repository when there is one.
"""
import collections
import os
import pathlib
import subprocess
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from compressor.checkpoint import load_checkpoint, read_checkpoint
from compressor.errors import CheckpointError

MIRROR = pathlib.Path("/work/.mirror/IntelLabs+distiller/repo")


class Net(nn.Module):
    """conv -> bn -> conv -> bn -> flatten -> fc: the fc reads conv2's channels through a view."""

    def __init__(self, c1=6, c2=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2 * 16, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


KEEP1, KEEP2 = [0, 2, 3, 5], [1, 3]


def trained_dense():
    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):   # non-trivial running statistics
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return model


def thinned_reference(dense):
    """The thinned network built by hand: its weights are slices of the dense one's."""
    ref = Net(len(KEEP1), len(KEEP2)).double()
    i1, i2 = torch.tensor(KEEP1), torch.tensor(KEEP2)
    fc_cols = torch.tensor([c * 16 + j for c in KEEP2 for j in range(16)])
    with torch.no_grad():
        ref.conv1.weight.copy_(dense.conv1.weight[i1])
        ref.conv1.bias.copy_(dense.conv1.bias[i1])
        ref.conv2.weight.copy_(dense.conv2.weight[i2][:, i1])
        ref.conv2.bias.copy_(dense.conv2.bias[i2])
        for r, d, i in ((ref.bn1, dense.bn1, i1), (ref.bn2, dense.bn2, i2)):
            for t in ("weight", "bias", "running_mean", "running_var"):
                getattr(r, t).copy_(getattr(d, t)[i])
        ref.fc.weight.copy_(dense.fc.weight[:, fc_cols])
        ref.fc.bias.copy_(dense.fc.bias)
    return ref.eval()


@pytest.fixture
def fake_distiller(monkeypatch):
    """A stand-in ``distiller`` package, present only while a test writes its files."""
    pkg = types.ModuleType("distiller")
    thinning = types.ModuleType("distiller.thinning")
    recipe = collections.namedtuple("ThinningRecipe", ["modules", "parameters"])
    recipe.__module__ = "distiller.thinning"
    thinning.ThinningRecipe = recipe
    quant = types.ModuleType("distiller.quantization")

    class PostTrainLinearQuantizer:   # any other class Distiller might have pickled
        pass
    PostTrainLinearQuantizer.__module__ = "distiller.quantization"
    PostTrainLinearQuantizer.__qualname__ = "PostTrainLinearQuantizer"
    quant.PostTrainLinearQuantizer = PostTrainLinearQuantizer
    pkg.thinning, pkg.quantization = thinning, quant
    for name, mod in (("distiller", pkg), ("distiller.thinning", thinning),
                      ("distiller.quantization", quant)):
        monkeypatch.setitem(sys.modules, name, mod)
    return pkg


def distiller_recipe(fake):
    t = lambda idx: torch.tensor(idx, dtype=torch.long)   # noqa: E731
    bn = lambda idx: {"num_features": len(idx), "running_mean": (0, t(idx)),   # noqa: E731
                      "running_var": (0, t(idx))}
    return fake.thinning.ThinningRecipe(
        modules={"module.conv1": {"out_channels": 4}, "module.bn1": bn(KEEP1),
                 "module.conv2": {"in_channels": 4, "out_channels": 2}, "module.bn2": bn(KEEP2),
                 "module.fc": {"in_features": 32}},
        parameters={"module.conv1.weight": [(0, t(KEEP1))], "module.conv1.bias": [(0, t(KEEP1))],
                    "module.bn1.weight": [(0, t(KEEP1))], "module.bn1.bias": [(0, t(KEEP1))],
                    "module.conv2.weight": [(0, t(KEEP2)), (1, t(KEEP1))],
                    "module.conv2.bias": [(0, t(KEEP2))],
                    "module.bn2.weight": [(0, t(KEEP2))], "module.bn2.bias": [(0, t(KEEP2))],
                    # Distiller's fc directive: view [5, 64] as [5, 4, 16], select, view back
                    "module.fc.weight": [(1, t(KEEP2), [5, 4, 16], [5, 32])]})


def save_distiller(path, fake, ref, **extra):
    """A file as Distiller (torch 1.x, DataParallel) wrote it for the thinned ``ref``."""
    state = collections.OrderedDict(
        ("module." + k, v) for k, v in ref.state_dict().items() if "num_batches_tracked" not in k)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref(torch.randn(2, 3, 4, 4, dtype=torch.float64)).sum().backward()
    opt.step()
    opt.zero_grad()
    masks = {"module." + n: None for n, _ in ref.named_parameters()}
    masks["module.conv2.weight"] = (ref.conv2.weight != 0).double()
    ckpt = {"epoch": 7, "arch": "net", "state_dict": state, "best_top1": 50.0,
            "optimizer_state_dict": opt.state_dict(), "optimizer_type": torch.optim.SGD,
            "compression_sched": {"masks_dict": masks, "parallel_model": True},
            "thinning_recipes": [distiller_recipe(fake)], **extra}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return opt


def test_a_distiller_thinned_checkpoint_loads_safely_and_computes_the_same(tmp_path, fake_distiller):
    ref = thinned_reference(trained_dense())
    path = str(tmp_path / "distiller.pth.tar")
    saved_opt = save_distiller(path, fake_distiller, ref)
    assert open(path, "rb").read(2) == b"\x80\x02"   # the legacy format, not a zip
    for name in ("distiller", "distiller.thinning", "distiller.quantization"):
        sys.modules.pop(name)   # loading must not need (or import) distiller

    model = Net().double()
    model, sched, opt, start = load_checkpoint(model, path)
    assert "distiller" not in sys.modules
    assert start == 8
    assert model.conv1.out_channels == 4 and model.bn2.num_features == 2
    assert model.fc.weight.shape == (5, 32)
    model.eval()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    # same tensors, same shapes, same kernels: the outputs are identical, not merely close
    assert torch.equal(model(x), ref(x))
    assert list(sched.masks) == ["conv2.weight"]        # None masks are no masks
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    momenta = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(a, saved_opt.state[p]["momentum_buffer"])
               for a, p in zip(momenta, ref.parameters()))
    assert model.bn1.num_batches_tracked.item() == 0   # filled: the file had no counter
    recipe = model.thinning_recipes[0]
    assert recipe["tensors"]["fc.weight"]["ops"] == [
        {"dim": 1, "index": [c * 16 + j for c in KEEP2 for j in range(16)]}]


def test_read_checkpoint_returns_plain_data(tmp_path, fake_distiller):
    path = str(tmp_path / "d.pth.tar")
    save_distiller(path, fake_distiller, thinned_reference(trained_dense()))
    ckpt = read_checkpoint(path)
    assert ckpt["optimizer_type"] == "SGD"
    recipe = ckpt["thinning_recipes"][0]
    assert recipe["format"] == "distiller"
    assert recipe["parameters"]["module.conv1.weight"] == [{"dim": 0, "index": KEEP1}]
    assert recipe["modules"]["module.bn1"]["running_mean"] == {"dim": 0, "index": KEEP1}


def test_loading_into_an_already_thinned_model_skips_the_recipe(tmp_path, fake_distiller):
    ref = thinned_reference(trained_dense())
    path = str(tmp_path / "d.pth.tar")
    save_distiller(path, fake_distiller, ref)
    model = Net().double()
    load_checkpoint(model, path)
    again, *_ = load_checkpoint(model, path)         # Distiller skipped already-thin dims too
    assert again.fc.weight.shape == (5, 32) and len(again.thinning_recipes) == 1
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert torch.equal(again.eval()(x), ref(x))


def test_other_distiller_classes_and_code_are_still_refused(tmp_path, fake_distiller):
    ref = thinned_reference(trained_dense())
    path = str(tmp_path / "quant.pth.tar")
    save_distiller(path, fake_distiller, ref, quantizer_metadata={
        "type": fake_distiller.quantization.PostTrainLinearQuantizer, "params": {}})
    with pytest.raises(CheckpointError, match=r"quant\.pth\.tar: refused: the file holds pickled "
                                              r"Python objects.*PostTrainLinearQuantizer"):
        read_checkpoint(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))
    evil = str(tmp_path / "evil.pth.tar")
    torch.save({"state_dict": {}, "optimizer_type": Evil()}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"refused: the file holds pickled Python objects"):
        read_checkpoint(evil)


@pytest.mark.parametrize("directive,match", [
    ((0, torch.tensor([0.5])), r"conv1\.weight: expected a 1-D integer index tensor"),
    ("conv", r"expected a \(dim, indices\) or \(dim, indices, view, shape\) directive"),
])
def test_malformed_distiller_recipes_are_named(tmp_path, fake_distiller, directive, match):
    recipe = fake_distiller.thinning.ThinningRecipe(modules={}, parameters={"conv1.weight": [directive]})
    path = str(tmp_path / "bad.pth.tar")
    torch.save({"state_dict": Net().state_dict(), "thinning_recipes": [recipe]}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_a_distiller_recipe_for_another_model_is_refused(tmp_path, fake_distiller):
    recipe = fake_distiller.thinning.ThinningRecipe(
        modules={}, parameters={"module.conv9.weight": [(0, torch.tensor([0]))]})
    path = str(tmp_path / "other.pth.tar")
    torch.save({"state_dict": Net().state_dict(), "thinning_recipes": [recipe]}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"names 'module\.conv9\.weight', which the model does not have"):
        load_checkpoint(Net(), path)


def real_checkpoints():
    if not MIRROR.is_dir():
        return []
    names = subprocess.run(["git", "-C", str(MIRROR), "ls-tree", "-r", "--name-only", "HEAD"],
                           capture_output=True, text=True).stdout.split()
    return [n for n in names if n.endswith(".pth.tar")]


@pytest.mark.slow
@pytest.mark.skipif(not MIRROR.is_dir(), reason="no local mirror of Distiller's repository")
@pytest.mark.parametrize("name", real_checkpoints())
def test_real_distiller_checkpoints_load(tmp_path, name):
    from compressor.models import create_model
    data = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{name}"], capture_output=True,
                          check=True).stdout
    path = tmp_path / "c.pth.tar"
    path.write_bytes(data)
    ckpt = read_checkpoint(str(path))
    assert ckpt["arch"] == "resnet20_cifar"
    model, _, _, _ = load_checkpoint(create_model("resnet20_cifar", "cifar10"), str(path))
    saved = {k.replace("module.", "", 1): tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    assert all(tuple(t.shape) == saved[k] for k, t in model.state_dict().items() if k in saved)
    torch.manual_seed(0)
    assert torch.isfinite(model.eval()(torch.randn(2, 3, 32, 32))).all()
    for recipe in ckpt.get("thinning_recipes") or []:   # the thinned shapes are the recipe's
        for pname, directives in recipe["parameters"].items():
            shape = dict(model.named_parameters())[pname.replace("module.", "", 1)].shape
            assert all(shape[d["dim"]] == len(d["index"]) for d in directives)
