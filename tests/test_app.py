"""compress_classifier end to end: runs, outputs, resume exactness, and one-line errors (exit 2)."""
import gzip
import os
import re
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from compressor.checkpoint import read_checkpoint
from compressor_apps.compress_classifier import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGP = os.path.join(ROOT, "schedules", "agp", "simplenet_mnist.yaml")
FAST = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.4",
        "--lr", "0.05", "--no-progress-bar"]


def run_dir(out):
    (only,) = [d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))]
    return os.path.join(out, only)


@pytest.mark.slow          # trains with the app in-process
def test_training_run_prunes_on_schedule_and_leaves_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(FAST + ["--epochs", "7", "--compress", AGP, "-o", str(out), "-n", "agp"]) == 0
    folder = run_dir(out)
    assert os.path.basename(folder).startswith("agp___")
    files = set(os.listdir(folder))
    assert {"run.log", "simplenet_mnist.yaml", "metrics.csv", "checkpoint.pth.tar", "best.pth.tar",
            "sparsity.csv", "compute.csv"} <= files
    metrics = pd.read_csv(os.path.join(folder, "metrics.csv"))
    assert list(metrics["epoch"]) == list(range(7))
    ckpt = read_checkpoint(os.path.join(folder, "checkpoint.pth.tar"))
    fc1 = ckpt["state_dict"]["fc1.weight"]
    assert float((fc1 == 0).float().mean()) == pytest.approx(0.9, abs=1e-4)   # the schedule's target
    text = capsys.readouterr().out
    assert "Total sparsity:" in text and "==> Best (ranked by top-1, then top-5)" in text
    assert re.search(r"--- test -+\n==> Top1: [\d.]+", text)


@pytest.mark.slow          # trains with the app in-process
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    common = FAST + ["--compress", AGP, "--deterministic"]
    assert main(common + ["--epochs", "5", "-o", str(tmp_path / "full")]) == 0
    assert main(common + ["--epochs", "3", "-o", str(tmp_path / "part")]) == 0
    part = os.path.join(run_dir(tmp_path / "part"), "checkpoint.pth.tar")
    assert main(common + ["--epochs", "5", "--resume-from", part, "-o", str(tmp_path / "resumed")]) == 0
    full = read_checkpoint(os.path.join(run_dir(tmp_path / "full"), "checkpoint.pth.tar"))
    resumed = read_checkpoint(os.path.join(run_dir(tmp_path / "resumed"), "checkpoint.pth.tar"))
    assert resumed["epoch"] == full["epoch"] == 4
    for name, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    masks_full = full["compression_sched"]["masks_dict"]["masks"]
    masks_res = resumed["compression_sched"]["masks_dict"]["masks"]
    assert masks_full.keys() == masks_res.keys()
    assert all(torch.equal(masks_full[k], masks_res[k]) for k in masks_full)
    assert [m["val_top1"] for m in full["extras"]["metrics"]] == [m["val_top1"] for m in resumed["extras"]["metrics"]]


@pytest.mark.slow          # trains with the app in-process
def test_evaluate_and_summaries(tmp_path, capsys):
    assert main(FAST + ["--epochs", "1", "-o", str(tmp_path)]) == 0
    ckpt = os.path.join(run_dir(tmp_path), "checkpoint.pth.tar")
    capsys.readouterr()
    assert main(["--arch", "simplenet_mnist", "--dataset", "digits", "--evaluate", "--confusion",
                 "--resume-from", ckpt, "-o", str(tmp_path / "eval"), "--no-progress-bar"]) == 0
    text = capsys.readouterr().out
    assert "--- test" in text and "Confusion matrix" in text
    assert main(["--arch", "resnet20_cifar", "--summary", "compute", "--summary", "sparsity"]) == 0
    text = capsys.readouterr().out
    assert "Total MACs: 40,8" in text and "layer3.2.conv2.weight" in text


def write_idx(path, array):
    magic = {1: 0x0801, 3: 0x0803}[array.ndim]
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow          # trains with the app in-process
def test_mnist_files_in_a_data_dir(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    assert main(["--arch", "lenet_300_100", str(data), "--epochs", "1", "-b", "50",
                 "-o", str(tmp_path / "o"), "--no-progress-bar"]) == 0


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "apps", "compress_classifier.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


BAD = [
    (["--arch", "resnet21_cifar", "x"], r"unknown architecture 'resnet21_cifar' \(did you mean .*'resnet20_cifar'"),
    (["--arch", "simplenet_mnist", "/nonexistent/mnist"], r"MNIST not found in /nonexistent/mnist \(no such directory\): expected train-images-idx3-ubyte"),
    (["--dataset", "svhn", "x"], r"unknown dataset 'svhn'"),
    (["--dataset", "digits", "--compress", "missing.yaml"], r"--compress: file not found: missing\.yaml"),
    (["--dataset", "digits", "--epochs", "-1"], r"--epochs must be >= 0; got -1"),
    (["--dataset", "digits", "--vs", "1.5"], r"--validation-split must be in \[0, 1\); got 1\.5"),
    (["--dataset", "digits", "--reset-optimizer"], r"--reset-optimizer needs --resume-from"),
    (["--dataset", "digits", "--summary", "png"], r"argument --summary: invalid choice: 'png'"),
    (["--dataset", "digits", "--epochs", "two"], r"argument --epochs: invalid int value: 'two'"),
]


@pytest.mark.slow          # the app in a subprocess, each
@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, args, expected):
    result = cli(*args, "-o", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()     # nothing written for a run that could not start


@pytest.mark.slow          # the app in subprocesses
def test_schedule_and_checkpoint_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners:\n  p:\n    class: LevelPruner\n    levels: {fc9.weight: 0.5}\npolicies:\n"
                   "  - pruner: {instance_name: p}\n    epochs: [0]\n")
    result = cli("--dataset", "digits", "--compress", str(bad), "-o", str(tmp_path / "o"))
    assert result.returncode == 2
    assert re.fullmatch(r".*bad\.yaml:4 pruners\.p\.levels\.fc9\.weight: 'fc9\.weight' matches no "
                        r"parameter of the model \(did you mean .*'fc1\.weight'.*\n", result.stderr)
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    result = cli("--dataset", "digits", "--resume-from", str(junk), "-o", str(tmp_path / "o"))
    assert result.returncode == 2 and "junk.pth.tar: damaged or not a checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow          # the app in a subprocess
def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    assert main(FAST + ["--epochs", "1", "-o", str(tmp_path)]) == 0
    ckpt = os.path.join(run_dir(tmp_path), "checkpoint.pth.tar")
    result = cli("--arch", "lenet_300_100", "--dataset", "digits", "--resume-from", ckpt, "-o", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "checkpoint is for architecture 'simplenet_mnist', not 'lenet_300_100'" in result.stderr


@pytest.mark.slow          # the console command in a subprocess
def test_console_command_is_installed():
    exe = shutil.which("compress-classifier")
    assert exe is not None, "pip install -e . installs the compress-classifier command"
    assert subprocess.run([exe, "--help"], capture_output=True, text=True).returncode == 0


@pytest.mark.slow          # the app in a subprocess
def test_help_is_grouped():
    out = cli("--help").stdout
    for group in ("model and data:", "training:", "compression:", "checkpoints and resuming:",
                  "modes (each runs instead of training, then exits):", "reports:", "output and devices:"):
        assert group in out


@pytest.mark.slow          # trains with the app in-process
def test_stop_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """A stop request (SIGINT/SIGTERM) is honoured after the current step; the checkpoint it leaves
    resumes at the next minibatch and ends bit-identical to a run that never stopped."""
    from compressor_apps import epochs
    common = FAST + ["--compress", AGP, "--deterministic", "--epochs", "5"]
    assert main(common + ["-o", str(tmp_path / "full")]) == 0

    calls = {"n": 0}

    def stop_at_step_20(self):
        calls["n"] += 1
        if calls["n"] == 20:          # epoch 2 (9 steps an epoch), after minibatch 1: after pruning
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(epochs.StopFlag, "__call__", stop_at_step_20)
    assert main(common + ["-o", str(tmp_path / "part")]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    part = os.path.join(run_dir(tmp_path / "part"), "checkpoint.pth.tar")
    saved = read_checkpoint(part)
    assert (saved["extras"]["resume_epoch"], saved["extras"]["resume_minibatch"]) == (2, 2)
    assert (saved["extras"]["resume_batch_size"], saved["extras"]["resume_samples"]) == (64, 128)
    assert saved["extras"]["resume_meters"]["loss"][1] == 128
    # another batch size would resume at the wrong sample: refused, naming the one to use
    other = [a if a != "64" else "32" for a in common]
    assert main(other + ["--resume-from", part, "-o", str(tmp_path / "refused")]) == 2
    assert re.search(r"stopped inside epoch 2 after 2 minibatches of 64 samples; resume it with "
                     r"--batch-size 64", capsys.readouterr().err)
    assert not (tmp_path / "refused").exists()
    assert main(common + ["--resume-from", part, "-o", str(tmp_path / "resumed")]) == 0
    full = read_checkpoint(os.path.join(run_dir(tmp_path / "full"), "checkpoint.pth.tar"))
    resumed = read_checkpoint(os.path.join(run_dir(tmp_path / "resumed"), "checkpoint.pth.tar"))
    for name, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    # the interrupted epoch's training metrics cover the whole epoch, as if it never stopped
    # (the same operations in the same order: equal exactly; only the wall time differs)
    rows_full, rows_resumed = full["extras"]["metrics"], resumed["extras"]["metrics"]
    assert len(rows_full) == len(rows_resumed) == 5
    for a, b in zip(rows_full, rows_resumed):
        a, b = dict(a), dict(b)
        a.pop("epoch_seconds"), b.pop("epoch_seconds")
        assert a == b, a["epoch"]


@pytest.mark.slow          # the app in a subprocess
def test_sigterm_saves_a_resumable_checkpoint_and_exits_with_a_message(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "apps", "compress_classifier.py"),
                             *FAST, "-b", "16", "--epochs", "100", "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("Training epoch 1"):
            proc.send_signal(signal.SIGTERM)
            break
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert re.search(r"Stopped by SIGTERM at epoch 1, minibatch \d+; saved .*checkpoint\.pth\.tar", output)
    ckpt = read_checkpoint(os.path.join(run_dir(tmp_path), "checkpoint.pth.tar"))
    assert ckpt["extras"]["resume_epoch"] == 1
    assert not [f for f in os.listdir(run_dir(tmp_path)) if f.startswith(".tmp")]


def test_gpus_without_a_gpu_falls_back_to_the_cpu_with_a_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(FAST + ["--gpus", "0", "--summary", "sparsity", "-o", str(tmp_path)]) == 0
    assert "--gpus 0: no GPU is available here; running on the CPU" in capsys.readouterr().out


@pytest.mark.slow          # trains an epoch in-process (~10 s)
def test_deprecated_resume_means_resume_from_with_reset_optimizer(tmp_path, capsys):
    from compressor.checkpoint import save_checkpoint
    from compressor.models import create_model
    model = create_model("simplenet_mnist")
    adam = torch.optim.Adam(model.parameters())   # --resume-from would refuse it: the app uses SGD
    path = save_checkpoint(str(tmp_path / "c.pth.tar"), model, adam, arch="simplenet_mnist",
                           dataset="mnist", epoch=5)
    assert main(FAST + ["--epochs", "1", "--etrs", "0.05", "--evs", "0.1", "--etes", "0.1",
                        "--resume", path, "-o", str(tmp_path / "out")]) == 0
    assert "--resume is deprecated" in capsys.readouterr().out
    metrics = pd.read_csv(os.path.join(run_dir(tmp_path / "out"), "metrics.csv"))
    assert list(metrics["epoch"]) == [0]           # epoch count reset, as Distiller did


def test_a_non_finite_training_loss_stops_the_run_with_exit_2_and_no_best_checkpoint(tmp_path, capsys):
    # lr 1e30 makes the first SGD step blow the weights up, so minibatch 1's loss is not finite
    out = tmp_path / "out"
    code = main(["--arch", "simplenet_mnist", "--dataset", "digits", "--epochs", "2", "--lr", "1e30",
                 "--seed", "1", "--no-progress-bar", "-o", str(out)])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert re.search(r"the training loss is (nan|inf|-inf) at epoch 0, minibatch \d+; stopped", lines[0])
    d = run_dir(out)
    assert not os.path.exists(os.path.join(d, "best.pth.tar"))
    assert not os.path.exists(os.path.join(d, "checkpoint.pth.tar"))


def test_an_epoch_with_non_finite_validation_metrics_is_never_the_best():
    from compressor_apps.best import BestScores
    best = BestScores("top1")
    assert not best.add({"epoch": 0, "top1": 90.0, "top5": 99.0, "nnz": 5, "sparsity": 0.0,
                         "finite": False})
    assert best.best(1) == []
    assert best.add({"epoch": 1, "top1": 10.0, "top5": 50.0, "nnz": 5, "sparsity": 0.0, "finite": True})
    assert [s["epoch"] for s in best.best(5)] == [1]
    old = BestScores("top1", [{"epoch": 0, "top1": 1.0, "top5": 2.0, "nnz": 5, "sparsity": 0.0}])
    assert old.best(1)[0]["epoch"] == 0     # histories from older checkpoints have no "finite" key


def test_a_non_finite_loss_names_the_minibatch_of_a_resumed_epoch_and_is_not_stepped_on():
    from compressor.errors import NonFiniteLossError
    from compressor.training import train_epoch
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.ones(1, 2), torch.zeros(1)) for _ in range(8)]
    # resumed at minibatch 6: its loss is infinite, but its gradient is finite, so a step on it
    # would move the weights
    crit = lambda out, tgt: out.sum() + float("inf")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 3, minibatch 6;"):
        train_epoch(model, batches, crit, optimizer, epoch=3, skip=6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
