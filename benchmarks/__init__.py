"""Speed benchmarks that print tables; ``python benchmarks/run.py`` runs them all (see docs/benchmarks.md).

Each benchmark module exposes ``run(quick: bool) -> str`` and returns its tables as Markdown text.
This module holds the few helpers they share: interleaved timing of calls and lockstep timing of
whole training loops (so that the noise of a shared machine hits every variant alike), medians,
quartiles and confidence intervals, and a plain Markdown table renderer.
Nothing here asserts a speed: benchmarks measure and report, the reader judges.
"""
from __future__ import annotations

import gc
import os
import platform
import threading
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1])."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def round_order(names: Sequence[str], r: int) -> List[str]:
    """The order of round ``r``: rotated by ``r``, and reversed on odd rounds, so that over rounds
    each variant goes first, last, and after each of the others (a plain rotation would keep the
    cyclic order, and with it which variant always runs right after which)."""
    names = list(names)
    k = r % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int,
                warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each variant, over ``rounds`` rounds that call every variant once.

    The order changes every round (``round_order``), so neither a variant's position nor a burst
    of load from other processes favours one variant. ``warmup`` rounds run first and are not
    recorded. A variant that returns a float reports its own seconds (to leave set-up out).
    """
    names = list(variants)
    times: Dict[str, List[float]] = {n: [] for n in names}
    gc.collect()
    for r in range(warmup + rounds):
        for name in round_order(names, r):
            fn = variants[name]
            t0 = time.perf_counter()
            own = fn()
            dt = own if isinstance(own, float) else time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def interleaved_wall_cpu(variants: Mapping[str, Callable[[], object]], rounds: int,
                         warmup: int = 1) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """``interleaved``'s wall seconds per call and the CPU seconds (``time.process_time``: every
    thread of this process) of the same calls, both without the warm-up rounds."""
    cpu: Dict[str, List[float]] = {k: [] for k in variants}

    def timed(name, fn):
        def call():
            c0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
        return call

    wall = interleaved({k: timed(k, f) for k, f in variants.items()}, rounds=rounds, warmup=warmup)
    return wall, {k: v[warmup:] for k, v in cpu.items()}


class Lockstep:
    """Runs whole training loops side by side, one minibatch each in turn, timing each loop.

    Each loop runs in its own thread and iterates a loader wrapped by :meth:`loader`; at every next
    batch it hands the turn to the following loop and waits for its own turn again, so exactly one
    loop runs at a time and a burst of load from other processes costs every loop the same few
    steps. A loop's time is the sum of its turns (from getting the turn to handing it on), so the
    hand-overs are not counted. ``step_seconds[k]`` lists loop ``k``'s turns; the first turn also
    holds what the loop does before its first batch, the last what it does after its last one.
    """

    def __init__(self, n: int):
        self.n = n
        self._turn = [threading.Semaphore(0) for _ in range(n)]
        self._done = [False] * n
        self._lock = threading.Lock()
        self._t0 = [0.0] * n
        self.step_seconds: List[List[float]] = [[] for _ in range(n)]

    def _wait(self, k: int) -> None:
        self._turn[k].acquire()
        self._t0[k] = time.perf_counter()

    def _hand_on(self, k: int, finished: bool = False) -> None:
        self.step_seconds[k].append(time.perf_counter() - self._t0[k])
        with self._lock:
            self._done[k] = self._done[k] or finished
            nxt = next(((k + j) % self.n for j in range(1, self.n + 1)
                        if not self._done[(k + j) % self.n]), None)
        if nxt is not None:
            self._turn[nxt].release()

    def loader(self, k: int, loader: Iterable) -> "_TurnLoader":
        return _TurnLoader(self, k, loader)

    def run(self, loops: Sequence[Callable[[], None]]) -> List[float]:
        """Run ``loops`` (each iterating a loader from ``self.loader(k, ...)``); seconds of each."""
        errors: List[BaseException] = []

        def body(k: int) -> None:
            self._wait(k)
            try:
                loops[k]()
            except BaseException as e:   # re-raised in the calling thread
                errors.append(e)
            finally:
                self._hand_on(k, finished=True)

        threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(self.n)]
        for t in threads:
            t.start()
        gc.collect()
        self._turn[0].release()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [sum(s) for s in self.step_seconds]


class _TurnLoader:
    def __init__(self, lockstep: Lockstep, k: int, loader: Iterable):
        self.lockstep, self.k, self.inner = lockstep, k, loader

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator:
        for batch in self.inner:        # fetching a batch counts toward this loop's turn
            yield batch
            self.lockstep._hand_on(self.k)
            self.lockstep._wait(self.k)


def median_ci(xs: Sequence[float]) -> float:
    """Half-width of the ~95% confidence interval of the median (box-plot notch: 1.58 IQR / sqrt n)."""
    if len(xs) < 2:
        return float("inf")
    return 1.58 * (quantile(xs, 0.75) - quantile(xs, 0.25)) / len(xs) ** 0.5


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown (pipe) table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> str:
    """One line naming what the numbers were measured on (and how busy the machine was)."""
    try:
        load = "load average %.2f, %.2f, %.2f; " % os.getloadavg()
    except OSError:
        load = ""
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpu_name()}, {os.cpu_count()} logical CPUs; "
            f"{load}Python {platform.python_version()}, torch {torch.__version__}; "
            f"torch.get_num_threads() = {torch.get_num_threads()}")


def standalone_main(run: Callable[[bool], str], doc: str, argv=None) -> None:
    """``python -m benchmarks.bench_x [--quick] [--threads N]``: one benchmark on its own."""
    import argparse
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Measured {environment()}\n")
    print(run(args.quick))
