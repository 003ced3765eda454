"""Smoke test of benchmarks/run.py --quick: every benchmark runs and prints its table rows.

Speeds are never asserted here (a shared CPU makes any time limit flaky); the benchmarks report
them and docs/benchmarks.md records what was measured.
"""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXPECTED_ROWS = [
    # bench_scheduler
    "## Training step with masks: resnet20_cifar, batch ",
    "| (a) plain step ",
    "| (b) AGP masks via CompressionScheduler ",
    "| (c) torch.nn.utils.prune (custom_from_mask) ",
    "| ours, scheduler events timed inside (b) ",
    "| ours, median(b) - median(a) ",
    "| on_minibatch_end (fused mask multiply) ",
    "| all four events ",
    "| torch.nn.utils.prune: its forward-pre-hooks + their backward ",
    "Target (engine issue",
    # bench_app_epoch
    "## One training epoch: simplenet_mnist, batch 256",
    "| (a) bare PyTorch loop (no scheduler) ",
    "| (a') compressor.training.train_epoch, no scheduler ",
    "| (b) on_epoch_begin + train_epoch with AGP scheduler ",
    "| (c) compress_classifier.main, 1 epoch: wall time ",
    "| (c) its epoch_seconds (train + validate, from metrics.csv) ",
    "| scheduler events timed inside (b), per epoch ",
    "Target (app issue",
    # bench_thinning
    "## Thinning 50% of the filters",
    "| thinned (ours) ",
    "| ours: contract_model (analysis + execution) = thinning",
    # bench_ddp
    "## AGP training under torchrun",
]


@pytest.mark.slow          # every benchmark, in a subprocess
def test_run_quick_prints_every_table():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                           "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "torch.get_num_threads() = 1" in out
    missing = [row for row in EXPECTED_ROWS if row not in out]
    assert not missing, f"missing rows: {missing}\n{out}"
    # Every table row carries numbers, not placeholders from a failed measurement.
    assert not re.search(r"\bnan\b", out, re.IGNORECASE)
    assert "FAILED" not in out


@pytest.mark.slow          # a fresh interpreter per benchmark and way of running it
def test_every_benchmark_runs_as_a_script_and_as_a_module():
    from_path = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                 "from benchmarks.run import BENCHMARKS; print(*BENCHMARKS)", str(ROOT)]
    names = subprocess.run(from_path, capture_output=True, text=True, check=True).stdout.split()
    assert names
    for name in names + ["benchmarks.run"]:
        script = ROOT / (name.replace(".", "/") + ".py")
        for cmd in ([sys.executable, str(script), "--help"], [sys.executable, "-m", name, "--help"]):
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{' '.join(cmd[1:])}: {proc.stderr[-2000:]}"
            assert "usage:" in proc.stdout


def test_compare_with_a_directory_without_the_library_is_a_usage_error(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.bench_scheduler import main
        with pytest.raises(SystemExit) as exc:
            main(["--compare-with", str(tmp_path)])
    finally:
        sys.path.remove(str(ROOT))
    assert exc.value.code == 2
    assert re.search(r"--compare-with .*: no compressor/__init__\.py there; give the root of a "
                     r"checkout", capsys.readouterr().err)


@pytest.mark.slow          # two fresh processes that build and train resnet20 for a few steps
def test_compare_with_times_both_checkouts_and_gives_ratios():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.checkout_compare import METRICS, compare
        out = compare(str(ROOT), quick=True, threads=1, rounds=1)   # this checkout against itself
    finally:
        sys.path.remove(str(ROOT))
    assert f"this: {ROOT}" in out and f"other: {ROOT}" in out
    for _, label, _ in METRICS:
        row = next(line for line in out.splitlines() if line.startswith(f"| {label} "))
        ratio = float(row.split("|")[4])
        assert ratio > 0
    assert not re.search(r"\bnan\b", out, re.IGNORECASE)


def test_benchmark_list_is_one_module_per_entry_with_run():
    sys.path.insert(0, str(ROOT))
    try:
        import importlib

        from benchmarks import md_table
        from benchmarks.run import BENCHMARKS
        for name in BENCHMARKS:
            assert callable(importlib.import_module(name).run), name
        assert md_table(["a", "b"], [["x", 1]]).splitlines() == ["| a | b |", "|:--|--:|", "| x | 1 |"]
    finally:
        sys.path.remove(str(ROOT))


def test_interleaved_wall_cpu_drops_the_warm_up_calls_from_both():
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from benchmarks import interleaved_wall_cpu
    calls = {"a": 0, "b": 0}

    def variant(name):
        def call():
            calls[name] += 1
            sum(range(2000))
        return call

    wall, cpu = interleaved_wall_cpu({k: variant(k) for k in calls}, rounds=3, warmup=2)
    assert calls == {"a": 5, "b": 5}
    assert {k: len(v) for k, v in wall.items()} == {k: len(v) for k, v in cpu.items()} == \
        {"a": 3, "b": 3}
    assert all(t >= 0 for v in cpu.values() for t in v)
