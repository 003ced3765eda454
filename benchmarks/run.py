#!/usr/bin/env python3
"""Run every benchmark and print its tables (see docs/benchmarks.md).

    python benchmarks/run.py                 # the full measurements (several minutes)
    python benchmarks/run.py --quick         # a smoke run: a few seconds per benchmark
    python benchmarks/run.py --threads 2 --only scheduler

Each module listed in BENCHMARKS exposes ``run(quick: bool) -> str`` and returns its tables as
Markdown; adding a benchmark is adding its module name to the list.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BENCHMARKS = [
    "benchmarks.bench_scheduler",
    "benchmarks.bench_app_epoch",
    "benchmarks.bench_thinning",
    "benchmarks.bench_ddp",
]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Run the compressor speed benchmarks and print tables.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a few seconds per benchmark; numbers are not meaningful")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1 keeps numbers steady on a shared machine)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only benchmarks whose module name contains NAME; repeatable")
    args = p.parse_args(argv)
    selected = [b for b in BENCHMARKS if not args.only or any(o in b for o in args.only)]
    if not selected:
        p.error(f"--only {args.only} matches no benchmark; benchmarks: {', '.join(BENCHMARKS)}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1; got {args.threads}")

    import torch
    from benchmarks import environment
    torch.set_num_threads(args.threads)
    print("# compressor benchmarks" + (" (--quick: smoke run, numbers not meaningful)" if args.quick else ""))
    print()
    print(f"Measured {environment()}")
    shown = argv if argv is not None else sys.argv[1:]
    print(f"Command: python benchmarks/run.py {' '.join(shown)}".rstrip())
    print(flush=True)
    failed = []
    for name in selected:
        t0 = time.perf_counter()
        try:
            text = importlib.import_module(name).run(quick=args.quick)
        except Exception:
            failed.append(name)
            print(f"## {name} FAILED\n\n```\n{traceback.format_exc()}```\n", flush=True)
            continue
        print(text)
        print(f"\n({name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
