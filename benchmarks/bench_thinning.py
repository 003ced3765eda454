"""Structured pruning that pays: 50% of the filters of ResNet-56 (CIFAR) and ResNet-50 (ImageNet)
removed by L1 norm and thinned, against the dense network, on the CPU.

For each model (untrained weights, seed 0):

1. ``compressor.dict_config`` builds an ``L1RankedStructureParameterPruner`` (``group_type:
   Filters``, ``desired_sparsity: 0.5``) over **every** convolution weight, without
   ``group_dependency``: the pruner then couples the convolutions whose outputs meet in a residual
   addition (the stem, every block's last convolution and the downsample shortcuts of a stage share
   one filter mask), so the residual stream is pruned too and nothing is left unthinnable.
   ``on_epoch_begin(0)`` masks the filters (and their biases and batch-norm entries).
2. ``compressor.thinning.contract_model(model, sample_shape, store=scheduler)`` removes them.
   The thinned output is checked against the masked one.
3. Parameters and MACs (``compressor.summary.model_performance_summary``: convolutions and linear
   layers, one sample) before and after; the MAC ratio dense / thinned.
4. CPU inference latency of the dense and the thinned model (eval mode, ``torch.no_grad``) at
   batch 1 and 64, interleaved one forward pass of each per round (order changing every round,
   warm-up rounds first), medians over rounds; the latency ratio dense / thinned is given as the
   ratio of the wall-clock medians, as the median of the per-round ratios, and as the ratio of the
   CPU-time medians (``time.process_time``: what the pass cost the process, less sensitive than
   wall time to other processes taking the core; equal to the latency with 1 idle thread). For
   ResNet-56, batch 64 is also timed in ``channels_last`` memory format (models and input).
5. The time thinning takes (``contract_model``: graph analysis, plan, recipe, execution), on
   fresh pruned copies, median of a few runs; the pruner's build and ``on_epoch_begin`` are timed
   apart.

When ``torch_pruning`` is importable (optional; never required), the same dense model is pruned
with its ``MagnitudePruner`` (L1 importance, ``pruning_ratio=0.5``, the classifier ignored): its
dependency graph couples the residual groups the same way, so the widths are the same as ours
(checked, layer by layer); its time (``DependencyGraph`` build + ``step()``) and its model's
latency are printed beside ours.

Run alone: ``python benchmarks/bench_thinning.py [--quick] [--threads N]`` (or ``python -m
benchmarks.bench_thinning``). ``--quick``: ResNet-56 only, batch 1 and 8, a few rounds.
"""
from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from typing import Dict, List, Tuple

if __package__ in (None, ""):   # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn

import compressor
from compressor.models import create_model
from compressor.summary import compute_totals, model_performance_summary
from compressor.thinning import contract_model

from benchmarks import interleaved_wall_cpu, md_table, median, quantile

FRACTION = 0.5
TARGET_LATENCY_SHARE = 0.8      # latency ratio >= 80% of the MAC ratio, at batch 64
TARGET_THIN_SECONDS = 2.0       # thinning ResNet-50

#   arch, sample shape, [(batch, channels_last, warm-up rounds, rounds)], thinning runs
FULL = [("resnet56_cifar", (3, 32, 32), [(1, False, 10, 200), (64, False, 2, 20), (64, True, 2, 20)], 5),
        ("resnet50", (3, 224, 224), [(1, False, 3, 30), (64, False, 1, 4)], 5)]
QUICK = [("resnet56_cifar", (3, 32, 32), [(1, False, 2, 10), (8, False, 1, 5)], 2)]


def conv_weights(model: nn.Module) -> List[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def schedule(weights: List[str]) -> dict:
    return {"version": 1,
            "pruners": {"filters": {"class": "L1RankedStructureParameterPruner",
                                    "group_type": "Filters", "desired_sparsity": FRACTION,
                                    "weights": weights}},
            "policies": [{"pruner": {"instance_name": "filters"}, "epochs": [0]}]}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, shape: Tuple[int, ...]) -> int:
    return int(compute_totals(model_performance_summary(model, torch.zeros(1, *shape)))["MACs"])


def widths(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d)}


def dense(arch: str, state: dict) -> nn.Module:
    model = create_model(arch)
    model.load_state_dict(state)
    return model.eval()


def ours(arch: str, shape, state: dict) -> Tuple[nn.Module, Dict[str, float], float]:
    """A fresh pruned copy, thinned; the seconds of each phase; max |thinned - masked| output."""
    model = dense(arch, state)
    pc = time.perf_counter
    t0 = pc()
    sched = compressor.dict_config(model, None, schedule(conv_weights(model)))
    t1 = pc()
    sched.on_epoch_begin(0)
    t2 = pc()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        masked = model(x)
    t3 = pc()
    contract_model(model, shape, store=sched)
    t4 = pc()
    with torch.no_grad():
        err = float((model(x) - masked).abs().max())
    return model, {"build": t1 - t0, "prune": t2 - t1, "thin": t4 - t3}, err


def torch_pruning_module():
    try:
        import torch_pruning
    except ImportError:
        return None
    return torch_pruning


def theirs(tp, arch: str, shape, state: dict) -> Tuple[nn.Module, Dict[str, float]]:
    """The same dense model pruned to 50% of its filters by torch_pruning; seconds of each phase."""
    model = dense(arch, state)
    example = torch.zeros(1, *shape)
    pc = time.perf_counter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = pc()
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=FRACTION, ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)])
        t1 = pc()
        pruner.step()
        t2 = pc()
    return model.eval(), {"build": t1 - t0, "thin": t2 - t1}


def latency(models: Dict[str, nn.Module], shape, batch: int, channels_last: bool, warmup: int,
            rounds: int) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Wall seconds and CPU seconds (``time.process_time``: every thread of this process) per
    forward pass of each model, interleaved."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(2)).to(memory_format=fmt)
    def forward(model):
        model = model.to(memory_format=fmt)

        def call():
            with torch.no_grad():
                model(x)
        return call

    return interleaved_wall_cpu({k: forward(m) for k, m in models.items()}, rounds, warmup)


def fmt_s(xs: List[float]) -> str:
    return f"{median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def run(quick: bool = False) -> str:
    tp = torch_pruning_module()
    configs = QUICK if quick else FULL
    out = [f"## Thinning 50% of the filters by L1: latency and thinning time, CPU, "
           f"torch.get_num_threads() = {torch.get_num_threads()}", ""]
    out.append("Every Conv2d weight listed, no group_dependency (automatic coupling of residual "
               "groups); untrained weights, seed 0. MACs and parameters per sample; MACs count "
               "convolutions and linear layers (compressor.summary). Latency: eval mode, "
               "torch.no_grad, dense and thinned forward passes interleaved per round, medians.")
    out.append("")
    if tp is None:
        out.append("torch_pruning: not installed (optional; `pip install torch-pruning` to print "
                   "its figures beside ours).")
    else:
        out.append(f"torch_pruning {getattr(tp, '__version__', '?')}: MagnitudePruner(importance="
                   f"MagnitudeImportance(p=1), pruning_ratio={FRACTION}, classifier ignored) on the "
                   f"same dense weights.")
    verdicts = []
    for arch, shape, batches, runs in configs:
        torch.manual_seed(0)
        base = create_model(arch).eval()
        state = copy.deepcopy(base.state_dict())
        p0, m0 = params(base), macs(base, shape)

        timings: Dict[str, List[float]] = {"build": [], "prune": [], "thin": []}
        errs = []
        thinned = None
        for _ in range(runs):
            model, t, err = ours(arch, shape, state)
            for k, v in t.items():
                timings[k].append(v)
            errs.append(err)
            thinned = model
        p1, m1 = params(thinned), macs(thinned, shape)

        tp_model, tp_t, tp_error = None, {"build": [], "thin": []}, None
        if tp is not None:
            try:
                for _ in range(runs):
                    tp_model, t = theirs(tp, arch, shape, state)
                    for k, v in t.items():
                        tp_t[k].append(v)
            except Exception as e:   # an optional comparison must not sink the benchmark
                tp_model, tp_error = None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
            same = tp_model is not None and widths(tp_model) == widths(thinned)

        variants = {"dense": base, "ours": thinned}
        if tp_model is not None:
            variants["torch_pruning"] = tp_model
        lat_rows, tp_lat_rows, ratio_big, big = [], [], None, max(b for b, cl, _, _ in batches)
        mac_ratio = m0 / m1
        for batch, channels_last, warmup, rounds in batches:
            wall, cpu = latency(variants, shape, batch, channels_last, warmup, rounds)
            ms = {k: [t * 1e3 for t in v] for k, v in wall.items()}
            med = {k: median(v) for k, v in ms.items()}
            cpu_med = {k: median(v) for k, v in cpu.items()}
            per_round = [d / o for d, o in zip(ms["dense"], ms["ours"])]
            ratio = med["dense"] / med["ours"]
            cpu_ratio = cpu_med["dense"] / cpu_med["ours"]
            if batch == big and not channels_last:
                ratio_big = ratio
            label = f"batch {batch}" + (", channels_last" if channels_last else "")
            lat_rows.append([label, rounds,
                             f"{med['dense']:.1f} ({quantile(ms['dense'], .25):.1f}-"
                             f"{quantile(ms['dense'], .75):.1f})",
                             f"{med['ours']:.1f} ({quantile(ms['ours'], .25):.1f}-"
                             f"{quantile(ms['ours'], .75):.1f})",
                             f"{ratio:.2f}", f"{median(per_round):.2f}", f"{cpu_ratio:.2f}",
                             f"{100 * ratio / mac_ratio:.1f}%", f"{100 * cpu_ratio / mac_ratio:.1f}%"])
            if tp_model is not None:
                tp_lat_rows.append([label, f"{med['torch_pruning']:.1f}",
                                    f"{med['dense'] / med['torch_pruning']:.2f}",
                                    f"{cpu_med['dense'] / cpu_med['torch_pruning']:.2f}"])

        out += ["", f"### {arch}, input 1x{'x'.join(map(str, shape))}", ""]
        size_rows = [["dense", f"{p0:,}", f"{m0:,}", "1.00"],
                     ["thinned (ours)", f"{p1:,}", f"{m1:,}", f"{m0 / m1:.2f}"]]
        if tp_model is not None:
            tp_m = macs(tp_model, shape)
            size_rows.append(["thinned (torch_pruning)", f"{params(tp_model):,}", f"{tp_m:,}",
                              f"{m0 / tp_m:.2f}"])
        out.append(md_table(["model", "parameters", "MACs", "MAC ratio dense/thinned"], size_rows))
        out.append("")
        out.append(f"Thinned output vs masked output: max |difference| {max(errs):.1e}."
                   + ("" if tp_error is None else f" torch_pruning failed: {tp_error}.")
                   + ("" if tp_model is None else
                      f" torch_pruning's conv widths equal ours layer by layer: {'yes' if same else 'NO'}."))
        out.append("")
        out.append(md_table(["latency", "rounds", "dense ms (p25-p75)", "thinned ms (p25-p75)",
                             "ratio (wall medians)", "median per-round ratio", "ratio (CPU-time medians)",
                             "wall ratio / MAC ratio", "CPU ratio / MAC ratio"], lat_rows))
        if tp_lat_rows:
            out += ["", md_table(["latency, torch_pruning's model", "ms", "ratio dense/it (wall)",
                                  "ratio dense/it (CPU time)"], tp_lat_rows)]
        time_rows = [["ours: dict_config (pruner build: traces the graph for coupled groups)",
                      fmt_s(timings["build"])],
                     ["ours: on_epoch_begin (L1 ranking, masks)", fmt_s(timings["prune"])],
                     ["ours: contract_model (analysis + execution) = thinning", fmt_s(timings["thin"])]]
        if tp_model is not None:
            time_rows += [["torch_pruning: MagnitudePruner(...) (dependency graph)", fmt_s(tp_t["build"])],
                          ["torch_pruning: step() (ranking + pruning) = thinning", fmt_s(tp_t["thin"])]]
        out += ["", md_table([f"time, {runs} runs on fresh copies", "median s (min-max)"], time_rows)]
        share = ratio_big / mac_ratio
        verdicts.append(f"{arch}: latency ratio at batch {big} is {100 * share:.1f}% of "
                        f"the MAC ratio ({'met' if share >= TARGET_LATENCY_SHARE else 'NOT met'})")
        if arch == "resnet50":
            thin_s = median(timings["thin"])
            verdicts.append(f"thinning resnet50 takes {thin_s:.2f} s (median) "
                            f"({'met' if thin_s < TARGET_THIN_SECONDS else 'NOT met'})")
    verdict = "; ".join(verdicts)
    if quick:
        verdict = f"(--quick: resnet56 only, too few rounds to judge; would read: {verdict})"
    out += ["", f"Targets (structured pruning issue: latency ratio >= {100 * TARGET_LATENCY_SHARE:.0f}% "
                f"of the MAC ratio at batch 64; thinning ResNet-50 < {TARGET_THIN_SECONDS:g} s): {verdict}."]
    return "\n".join(out)


def main(argv=None) -> None:
    from benchmarks import standalone_main
    standalone_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
