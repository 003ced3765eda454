"""The corpus in tests/bad_inputs/: each broken input gives exit code 2, one clear line naming the
problem, no traceback, and leaves no file behind.

``*.yaml`` files are schedules given to ``--compress``; ``*.args`` files are command lines (with
placeholders for files made here: damaged checkpoints, an empty data folder). The first line of
each file is ``# expect: <regex>`` matched against the one error line.
"""
import os
import pathlib
import shlex
import sys
import types

import pytest
import torch

from compressor_apps.compress_classifier import main
from compressor.models import create_model
from compressor.checkpoint import save_checkpoint
from compressor.thinning import contract_model

CORPUS = pathlib.Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".yaml", ".args"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


class PostTrainLinearQuantizer:
    """Stands for a Distiller class outside the allow-list (saved under distiller's name)."""


def save_distiller_with_quantizer(path):
    """A Distiller-style legacy file whose quantizer_metadata pickles a Distiller class."""
    mod = types.ModuleType("distiller.quantization")
    PostTrainLinearQuantizer.__module__ = mod.__name__
    mod.PostTrainLinearQuantizer = PostTrainLinearQuantizer
    saved = {n: sys.modules.get(n) for n in ("distiller", "distiller.quantization")}
    sys.modules.update({"distiller": types.ModuleType("distiller"), "distiller.quantization": mod})
    try:
        torch.save({"state_dict": create_model("simplenet_mnist").state_dict(), "arch": "simplenet_mnist",
                    "epoch": 3, "optimizer_type": torch.optim.SGD,
                    "quantizer_metadata": {"type": PostTrainLinearQuantizer, "params": {}}},
                   path, _use_new_zipfile_serialization=False)
    finally:
        PostTrainLinearQuantizer.__module__ = __name__
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty").mkdir()
    good = str(d / "good.pth.tar")
    save_checkpoint(good, create_model("simplenet_mnist"), arch="simplenet_mnist", dataset="digits", epoch=0)
    thinned = create_model("simplenet_mnist")
    with torch.no_grad():
        thinned.conv1.weight[:10] = 0
        thinned.conv1.bias[:10] = 0
    contract_model(thinned, (1, 28, 28))
    assert thinned.conv1.out_channels == 10
    save_checkpoint(str(d / "thinned.pth.tar"), thinned, arch="simplenet_mnist", dataset="digits", epoch=0)
    sgd_model = create_model("simplenet_mnist")
    save_checkpoint(str(d / "sgd.pth.tar"), sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=0.1),
                    arch="simplenet_mnist", dataset="digits", epoch=0)
    flipped_model = create_model("simplenet_mnist")
    save_checkpoint(str(d / "flipped.pth.tar"), flipped_model, arch="simplenet_mnist", dataset="digits", epoch=0)
    from checkpoint_damage import flip_exponent_bit_in_file
    flip_exponent_bit_in_file(str(d / "flipped.pth.tar"), flipped_model.state_dict()["conv1.weight"])
    data = open(good, "rb").read()
    (d / "truncated.pth.tar").write_bytes(data[: len(data) // 3])
    torch.save({"state_dict": {}, "payload": Evil()}, d / "pickled.pth.tar")
    torch.save({"weights": torch.ones(3)}, d / "plain.pt")
    save_distiller_with_quantizer(str(d / "distiller_quantizer.pth.tar"))
    from hostile_data import make_bad_data   # dataset files for the 3xx cases
    data_files = make_bad_data(d / "data")
    from crafted_checkpoints import make_crafted   # wrong-typed checkpoint fields for the 6xx cases
    data_files.update(make_crafted(d))
    return {**data_files, "tmp": str(d), "empty_dir": str(d / "empty"), "ckpt_good": good,
            "ckpt_thinned": str(d / "thinned.pth.tar"), "ckpt_sgd": str(d / "sgd.pth.tar"),
            "ckpt_truncated": str(d / "truncated.pth.tar"), "ckpt_pickled": str(d / "pickled.pth.tar"),
            "ckpt_plain": str(d / "plain.pt"), "ckpt_flipped": str(d / "flipped.pth.tar"),
            "ckpt_distiller_quantizer": str(d / "distiller_quantizer.pth.tar")}


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_broken_input(case, files, tmp_path, capsys):
    path = CORPUS / case
    first, _, rest = path.read_text().partition("\n")
    assert first.startswith("# expect: ")
    expected = first[len("# expect: "):]
    out = tmp_path / "out"
    if path.suffix == ".yaml":
        argv = ["--arch", "simplenet_mnist", "--dataset", "digits", "--compress", str(path)]
    else:
        argv = shlex.split(rest.strip().format(**files))
    try:
        code = main(argv + ["-o", str(out), "--epochs", "1"] if "--epochs" not in argv else argv + ["-o", str(out)])
    except SystemExit as e:          # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    import re
    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists() or not any(out.rglob("*")), "a failed start must not write files"
