"""Time the scheduler in this checkout and in another one, interleaved, in one run.

``python -m benchmarks.bench_scheduler --compare-with PATH`` calls :func:`compare`: each round runs
``scheduler_probe.py`` twice in fresh processes, once with ``PYTHONPATH`` set to this checkout and
once to ``PATH`` (an older commit's worktree, say), in an order that alternates between rounds, so
that load from other processes falls on both alike. The table gives each checkout's median over
rounds and the median of the per-round ratios (this / other) with their quartiles: a ratio near 1
within its quartiles is "no slowdown".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

from benchmarks import REPO_ROOT, md_table, median, quantile

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scheduler_probe.py")

METRICS = [
    ("build_ms", "dict_config: build the AGP schedule (22 weights)", "ms"),
    ("epoch_begin_ms", "on_epoch_begin(0): AGP ranks and masks (first call)", "ms"),
    ("plain_step_ms", "plain training step (no scheduler; control)", "ms"),
    ("agp_step_ms", "training step with the AGP scheduler's four events", "ms"),
    ("events_in_step_us", "the four per-minibatch events, timed inside that step", "us"),
    ("events_alone_us", "the four per-minibatch events alone, per step", "us"),
]


def describe(path: str) -> str:
    """``path`` with its commit (and ``+ uncommitted changes`` when its tree differs)."""
    def git(*args):
        return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{path} ({commit}{dirty})"


def probe(root: str, steps: int, blocks: int, threads: int) -> Dict[str, float]:
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as cwd:      # nothing importable from the working directory
        proc = subprocess.run([sys.executable, PROBE, root, str(steps), str(blocks), str(threads)],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the probe of {root} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(other: str, quick: bool = False, threads: int = 1, rounds: int = 0) -> str:
    """Markdown tables: this checkout against ``other`` (a directory holding ``compressor/``)."""
    this = REPO_ROOT
    other = os.path.abspath(other)
    rounds = rounds or (2 if quick else 8)
    steps, blocks = (2, 2) if quick else (10, 10)
    runs: Dict[str, List[Dict[str, float]]] = {"this": [], "other": []}
    roots = {"this": this, "other": other}
    for r in range(rounds):
        for name in (("this", "other") if r % 2 == 0 else ("other", "this")):
            runs[name].append(probe(roots[name], steps, blocks, threads))
    rows = []
    for key, label, unit in METRICS:
        a = [run[key] for run in runs["this"]]
        b = [run[key] for run in runs["other"]]
        ratios = [x / y for x, y in zip(a, b)]
        rows.append([label, f"{median(a):.3f} {unit}", f"{median(b):.3f} {unit}",
                     f"{median(ratios):.3f}", f"{quantile(ratios, .25):.3f}–{quantile(ratios, .75):.3f}"])
    return "\n".join([
        f"## Scheduler cost: this checkout against another, resnet20_cifar, batch 32, CPU, "
        f"{threads} thread(s)",
        "",
        f"this: {describe(this)}  ",
        f"other: {describe(other)}",
        "",
        f"{rounds} rounds; each runs both checkouts in fresh processes, in alternating order; "
        f"per process: 5 builds, {steps} steps (+1 warm-up), {blocks} blocks of 100 event "
        f"sequences (+1 warm-up); medians per process, then over rounds.",
        "",
        md_table(["measure", "this", "other", "ratio this/other (median of rounds)",
                  "ratio p25–p75"], rows),
    ])
