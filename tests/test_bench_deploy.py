"""Smoke test of benchmarks/bench_deploy.py --quick: it trains, exports, times and prints its tables
(numbers are not asserted: a shared CPU makes them vary; docs/deploy.md records what was measured)."""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.mark.slow          # trains LeNet-5 twice, compiles, in a subprocess
@pytest.mark.skipif(not (MNIST / "t10k-labels-idx1-ubyte.gz").is_file(), reason="no MNIST copy")
def test_bench_deploy_quick_prints_its_tables():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_deploy.py"), "--quick",
                           "--data", str(MNIST)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for row in ("## LeNet-5 on MNIST: dense, thinned, thinned + int8 PTQ", "| dense ", "| thinned ",
                "| thinned + int8 ", "| thinned float / thinned + int8, compiled ",
                "Goal (issue 15): thinned + int8 >= 2x faster", "## ResNet CIFAR shapes",
                "| resnet20_cifar, batch 1 "):
        assert row in out, f"missing {row!r}\n{out}"
    assert not re.search(r"\bnan\b", out, re.IGNORECASE)
