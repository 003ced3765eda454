"""compare_checkpoints: top-1, agreement with the reference, weights kept."""
import os
import re

import pytest

from compressor_apps.compare import main as compare
from compressor_apps.compress_classifier import main as app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGP = os.path.join(ROOT, "schedules", "agp", "simplenet_mnist.yaml")


@pytest.mark.slow          # trains two runs with the app
def test_compare_reports_agreement_and_weights_kept(tmp_path, capsys):
    common = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.4",
              "--lr", "0.05", "--deterministic", "--no-progress-bar"]
    assert app(common + ["--epochs", "2", "-o", str(tmp_path / "dense")]) == 0
    assert app(common + ["--epochs", "7", "--compress", AGP, "-o", str(tmp_path / "agp")]) == 0
    dense = os.path.join(tmp_path / "dense", os.listdir(tmp_path / "dense")[0], "checkpoint.pth.tar")
    agp = os.path.join(tmp_path / "agp", os.listdir(tmp_path / "agp")[0], "checkpoint.pth.tar")
    capsys.readouterr()
    assert compare(["unused", dense, dense, agp, "--latency", "2", "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| /") and "%" in line]
    assert len(rows) == 3
    timed = [line for line in out.splitlines() if line.startswith("| /") and "%" not in line]
    assert len(timed) == 3 and all(re.search(r"\| 2 \| [\d.]+ \| [\d.]+× \| 1\.00× \|", t) for t in timed)
    assert "| +0.00 | 100.00% | 430,500 | 100.0% (1.0×)" in rows[1]          # itself
    assert re.search(r"\| 55,500 \| 12\.9% \(7\.8×\)", rows[2])               # 87.1% pruned


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert compare(["unused", str(tmp_path / "nope.pth.tar"), str(tmp_path / "nope.pth.tar")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
