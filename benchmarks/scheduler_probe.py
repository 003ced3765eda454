"""One measurement of the scheduler's cost, in a fresh process, on whichever ``compressor`` the
process imports (``bench_scheduler --compare-with`` runs it once per round for each checkout).

It is a plain script with no import from ``benchmarks`` (an older checkout may have none): it
imports ``compressor`` from ``PYTHONPATH``, refuses to run if that resolved elsewhere, and prints
one JSON line: medians of the schedule's build time, of a plain training step and of one under an
AGP schedule, and of the four per-minibatch events timed inside that step and alone.

    PYTHONPATH=/path/to/checkout python benchmarks/scheduler_probe.py EXPECTED_DIR STEPS BLOCKS THREADS
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
from torch import nn

BATCH = 32
PER_BLOCK = 100


def _median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _schedule(names):
    return {"version": 1,
            "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.5,
                                "final_sparsity": 0.9, "weights": names}},
            "policies": [{"pruner": {"instance_name": "agp"},
                          "starting_epoch": 0, "ending_epoch": 10, "frequency": 1}]}


def measure(steps: int, blocks: int) -> dict:
    import compressor
    from compressor.models import create_model

    torch.manual_seed(0)
    base = create_model("resnet20_cifar")
    names = [f"{n}.weight" for n, m in base.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    criterion = nn.CrossEntropyLoss()

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    build = []
    for _ in range(5):
        model = copy.deepcopy(base)
        opt = sgd(model)
        t0 = time.perf_counter()
        compressor.dict_config(model, opt, _schedule(names))
        build.append(time.perf_counter() - t0)

    model_a, model_b = copy.deepcopy(base), copy.deepcopy(base)
    opt_a, opt_b = sgd(model_a), sgd(model_b)
    sched = compressor.dict_config(model_b, opt_b, _schedule(names))
    t0 = time.perf_counter()
    sched.on_epoch_begin(0, opt_b)
    epoch_begin = time.perf_counter() - t0
    pc = time.perf_counter
    plain, ours, events = [], [], []
    # The per-minibatch events are timed one by one around the step, so this loop writes the
    # events out rather than calling a shared training loop.
    for i in range(steps + 1):                  # step 0 warms up and is not recorded
        t0 = pc()
        loss = criterion(model_a(x), y)
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()
        t1 = pc()
        sched.on_minibatch_begin(0, i, 1000, opt_b)
        t2a = pc()
        loss = criterion(model_b(x), y)
        t2 = pc()
        loss = sched.before_backward_pass(0, i, 1000, loss, opt_b)
        t3 = pc()
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        t4 = pc()
        sched.before_parameter_optimization(0, i, 1000, opt_b)
        t5 = pc()
        opt_b.step()
        t6 = pc()
        sched.on_minibatch_end(0, i, 1000, opt_b)
        t7 = pc()
        if i:
            plain.append(t1 - t0)
            ours.append(t7 - t1)
            events.append((t2a - t1) + (t3 - t2) + (t5 - t4) + (t7 - t6))
    loss0 = criterion(model_b(x), y).detach()
    alone = []
    for b in range(blocks + 1):                 # block 0 warms up
        t0 = pc()
        for i in range(PER_BLOCK):
            sched.on_minibatch_begin(0, i, 1000, opt_b)
            sched.before_backward_pass(0, i, 1000, loss0, opt_b)
            sched.before_parameter_optimization(0, i, 1000, opt_b)
            sched.on_minibatch_end(0, i, 1000, opt_b)
        if b:
            alone.append((pc() - t0) / PER_BLOCK)
    return {"compressor": os.path.dirname(os.path.abspath(compressor.__file__)),
            "build_ms": 1e3 * _median(build), "epoch_begin_ms": 1e3 * epoch_begin,
            "plain_step_ms": 1e3 * _median(plain), "agp_step_ms": 1e3 * _median(ours),
            "events_in_step_us": 1e6 * _median(events), "events_alone_us": 1e6 * _median(alone)}


def main(argv) -> int:
    expected, steps, blocks, threads = os.path.abspath(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    torch.set_num_threads(threads)
    import compressor
    found = os.path.dirname(os.path.dirname(os.path.abspath(compressor.__file__)))
    if found != expected:
        print(f"scheduler_probe: imported compressor from {found}, not {expected}", file=sys.stderr)
        return 2
    print(json.dumps(measure(steps, blocks)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
