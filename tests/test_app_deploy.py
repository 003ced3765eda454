"""compress_classifier --export-deploy: at the end of a thinning run the saved program is the thinned
network (batch norms folded) and runs without compressor; --evaluate exports a checkpoint, also
as int8; bad flags end in one line and exit 2 before anything is written."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from compressor_apps.compress_classifier import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIN = os.path.join(ROOT, "schedules", "filters", "simplenet_mnist.l1_agp_thin.yaml")
FAST = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.4",
        "--lr", "0.05", "--no-progress-bar"]

RUN = ("import sys, torch\n{pre}\nm = torch.export.load(sys.argv[1]).module()\n"
       "print('x'.join(map(str, m(torch.zeros(3, 1, 28, 28)).shape)), sum(p.numel() for p in m.parameters()),\n"
       "      'compressor' in sys.modules)")


def _run_isolated(path, pre=""):
    proc = subprocess.run([sys.executable, "-I", "-c", RUN.format(pre=pre), str(path)],
                          capture_output=True, text=True, timeout=300, cwd=os.path.dirname(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def _run_dir(out):
    (only,) = [d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))]
    return os.path.join(out, only)


@pytest.mark.slow          # trains with the app in-process, then subprocesses
def test_thinning_run_exports_the_thinned_folded_model(tmp_path, capsys):
    out, pt2 = tmp_path / "runs", tmp_path / "m.pt2"
    assert main(FAST + ["--epochs", "5", "--compress", THIN, "-o", str(out),
                        "--export-deploy", str(pt2)]) == 0
    report = json.loads(open(os.path.join(_run_dir(out), "deploy_report.json")).read())
    assert report["path"] == str(pt2) and report["size_bytes"] == pt2.stat().st_size
    assert not report["int8"] and report["loads_with"] == "torch"
    assert set(report["latency_ms"]) == {"b1", "b32"}
    shape, params, imported = _run_isolated(pt2)
    assert shape == "3x10" and imported == "False"
    from compressor.models import create_model
    dense = sum(p.numel() for p in create_model("simplenet_mnist", "mnist").parameters())
    assert int(params) == report["params"] < dense          # the thinned network was exported
    assert "Deployable model (float) saved to" in capsys.readouterr().out

    # --evaluate on the run's checkpoint exports it too, here as int8
    q = tmp_path / "q.pt2"
    ckpt = os.path.join(_run_dir(out), "checkpoint.pth.tar")
    assert main(FAST + ["--evaluate", "--exp-load-weights-from", ckpt, "-o", str(tmp_path / "ev"),
                        "--export-deploy", str(q), "--export-deploy-int8",
                        "--export-deploy-calib-batches", "2"]) == 0
    report = json.loads(open(os.path.join(_run_dir(tmp_path / "ev"), "deploy_report.json")).read())
    assert report["int8"] and report["loads_with"].startswith("torch + import torch.ao.quantization")
    assert report["latency_mode"] == "compiled"
    shape, _, imported = _run_isolated(q, pre="import torch.ao.quantization.fx._decomposed")
    assert shape == "3x10" and imported == "False"


BAD = [
    (["--export-deploy", "m.onnx"], r"--export-deploy m\.onnx: the file name must end in \.pt2"),
    (["--export-deploy", "/nonexistent/dir/m.pt2"],
     r"--export-deploy /nonexistent/dir/m\.pt2: folder /nonexistent/dir does not exist"),
    (["--export-deploy-int8"], r"--export-deploy-int8 needs --export-deploy PATH"),
    (["--export-deploy-calib-batches", "4"], r"--export-deploy-calib-batches needs --export-deploy"),
    (["--export-deploy", "m.pt2", "--export-deploy-int8", "--export-deploy-calib-batches", "0"],
     r"--export-deploy-calib-batches must be >= 1; got 0"),
    (["--export-deploy", "m.pt2", "--thinnify", "--resume-from", __file__],
     r"--export-deploy cannot be used with --thinnify, which exits before the export"),
    (["--export-deploy", "m.pt2", "--summary", "compute"],
     r"--export-deploy cannot be used with --summary"),
    (["--export-deploy-calib-batches", "x"],
     r"argument --export-deploy-calib-batches: invalid int value: 'x'"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_deploy_flags_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(FAST + args + ["-o", str(tmp_path / "out")])
    except SystemExit as e:          # argparse's own errors
        code = e.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.pt2"))
