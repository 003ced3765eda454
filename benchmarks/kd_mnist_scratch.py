#!/usr/bin/env python3
"""Knowledge distillation on real MNIST, the rows of training the small architecture from scratch.

The companion of ``benchmarks/kd_mnist.py`` (which fine-tunes pruned networks with and without a
teacher). Here the small architecture gets fresh random weights and trains with the dense recipe
(SGD lr 0.05, momentum 0.9, weight decay 1e-4, batch 256, lr x 0.2 for the last two epochs), with
and without the dense network of ``--out`` as its teacher (T = 4, soft 0.7, hard 0.3, as in the
fine-tuning schedules):

- ``lenet5`` Scratch-E and Scratch-B (Liu et al. 2019): the thinned LeNet-5 of
  ``schedules/distillation/lenet5.l1_thin_kd.yaml`` (conv1 10 and conv2 25 filters); E trains as
  many epochs as that schedule fine-tunes (6), B as many as the dense training's compute buys (the
  dense epochs times dense MACs / thinned MACs, rounded up, as ``--scratch B`` of the app does).
- ``lenet_300_100`` small-dense: the 784-13-4-10 and 784-27-9-10 networks of
  ``schedules/rethinking/lenet_300_100.small_dense_{24x,12x}.yaml`` (as many weights as the 24.6x
  and 12.4x AGP networks keep), for as many epochs as the AGP schedule of ``kd_mnist.py`` runs (8,
  24x only) and with the large-sparse comparison's recipe (16 epochs, lr x 0.2 at 9 and 13).

The dense checkpoints must exist (``kd_mnist.py`` trains them). Prints one Markdown row per
(network, training): test top-1 mean ± standard deviation over seeds, each run, seconds per epoch.

    python benchmarks/kd_mnist_scratch.py ../shared/data/mnist --seeds 0 1 2 --out /tmp/kd_results
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from typing import Dict, List, Mapping

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import compressor  # noqa: E402
from compressor import models  # noqa: E402
from compressor.summary import model_performance_summary  # noqa: E402
from compressor.thinning import contract_model  # noqa: E402
from benchmarks.kd_mnist import train_and_test  # noqa: E402

NARROW: Dict[str, Dict[str, int]] = {   # output units kept per layer (the rest are thinned away)
    "lenet5": {"conv1": 10, "conv2": 25},
    "lenet_300_100_24x": {"fc1": 13, "fc2": 4},
    "lenet_300_100_12x": {"fc1": 27, "fc2": 9},
}
# row -> (arch, narrow shape, epochs or None for Scratch-B, LR milestones or None for epochs - 2)
ROWS = {
    "lenet5:Scratch-E": ("lenet5", "lenet5", 6, None),
    "lenet5:Scratch-B": ("lenet5", "lenet5", None, None),
    "lenet_300_100:small-dense-24x": ("lenet_300_100", "lenet_300_100_24x", 8, None),
    # the large-sparse comparison's recipe (schedules/dense/lenet_300_100.yaml): 16 epochs
    "lenet_300_100:small-dense-24x-16ep": ("lenet_300_100", "lenet_300_100_24x", 16, [9, 13]),
    "lenet_300_100:small-dense-12x-16ep": ("lenet_300_100", "lenet_300_100_12x", 16, [9, 13]),
}
DENSE_EPOCHS = {"lenet5": 4, "lenet_300_100": 8}   # as kd_mnist.NETWORKS trained them
LR, MOMENTUM, WD, BATCH = 0.05, 0.9, 1e-4, 256
KD_ARGS = {"temperature": 4.0, "distill_weight": 0.7, "student_weight": 0.3}


def narrow(arch: str, widths: Mapping[str, int]) -> nn.Module:
    """A fresh ``arch`` with only ``widths[layer]`` output units in each named layer.

    The surplus units are zeroed and thinned away (the library's thinning, so every layer that
    reads them shrinks too), then every layer gets new random weights: only the shapes matter.
    """
    model = models.create_model(arch)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in widths.items():
            mods[name].weight[keep:] = 0
            if mods[name].bias is not None:
                mods[name].bias[keep:] = 0
    contract_model(model, "mnist")
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    return model


def macs(model: nn.Module) -> int:
    """Multiply-accumulates of one MNIST image."""
    df = model_performance_summary(model, torch.zeros(1, *models.input_shape("mnist")))
    return int(df["MACs"].sum())


def scratch_b_epochs(dense_epochs: int, dense_macs: int, small_macs: int) -> int:
    """Liu et al.'s Scratch-B: the epochs that cost the small network what the dense run cost."""
    return int(math.ceil(dense_epochs * dense_macs / max(small_macs, 1)))


def schedule(arch: str, epochs: int, teacher: str, kd: bool, milestones: List[int] = None) -> dict:
    """The scratch run's schedule: the LR drops (default: x 0.2 for the last two epochs, as the
    dense training of kd_mnist.py), and the teacher if ``kd``."""
    sched = {
        "version": 1,
        "lr_schedulers": {"lr": {"class": "MultiStepLR", "gamma": 0.2,
                                 "milestones": milestones or [max(epochs - 2, 1)]}},
        "policies": [{"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0,
                      "ending_epoch": epochs, "frequency": 1}],
    }
    if kd:
        sched["extensions"] = {"distill": dict(KD_ARGS, **{
            "class": "KnowledgeDistillationPolicy", "teacher": arch,
            "teacher_checkpoint": teacher, "dataset": "mnist"})}
        sched["policies"].insert(0, {"extension": {"instance_name": "distill"},
                                     "starting_epoch": 0, "ending_epoch": epochs, "frequency": 1})
    return sched


def run(row: str, data: str, teacher: str, epochs: int, seed: int, kd: bool,
        lr: float = LR) -> Dict[str, float]:
    """One scratch run of ``row``; test top-1, mean training seconds per epoch, weights."""
    arch, shape, _, milestones = ROWS[row]
    torch.manual_seed(seed)
    model = narrow(arch, NARROW[shape])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WD)
    sched = compressor.dict_config(model, opt, schedule(arch, epochs, teacher, kd, milestones),
                                   path=f"<scratch {arch}>")
    top1, sec = train_and_test(model, opt, sched, data, seed, epochs, BATCH)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    return {"top1": top1, "sec": sec, "weights": weights}


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="the MNIST folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--out", default="results/kd", help="where kd_mnist.py put the dense checkpoints")
    p.add_argument("--lr", type=float, default=LR, help="initial learning rate (the dense recipe's: 0.05)")
    args = p.parse_args(argv)
    lines = []
    for key in args.rows:
        arch, shape, epochs, milestones = ROWS[key]
        row = key.split(":")[1]
        teacher = os.path.join(args.out, f"{arch}_dense.pth.tar")
        if not os.path.isfile(teacher):
            p.error(f"{teacher}: no dense checkpoint; run benchmarks/kd_mnist.py --out {args.out} first")
        if epochs is None:
            dense_macs, small_macs = macs(models.create_model(arch)), macs(narrow(arch, NARROW[shape]))
            epochs = scratch_b_epochs(DENSE_EPOCHS[arch], dense_macs, small_macs)
            print(f"{arch} {row}: dense/small MACs = {dense_macs:,}/{small_macs:,}, "
                  f"{epochs} epochs for {DENSE_EPOCHS[arch]} dense", flush=True)
        runs = {False: [], True: []}
        for seed in args.seeds:
            for kd in (False, True):   # interleaved, so machine load falls on both alike
                r = run(key, args.data, teacher, epochs, seed, kd, args.lr)
                runs[kd].append(r)
                print(f"{arch} {row} seed {seed} kd={kd}: top-1 {r['top1']:.2f}, "
                      f"{r['sec']:.1f} s/epoch, {r['weights']} weights", flush=True)
        for kd in (False, True):
            top1 = [r["top1"] for r in runs[kd]]
            spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
            lines.append(f"| {arch} | {row} {'with KD' if kd else 'alone'}, lr {args.lr:g} | {epochs} "
                         f"| {statistics.mean(top1):.2f} ± {spread:.2f} "
                         f"[{', '.join(f'{t:.2f}' for t in top1)}] | {runs[kd][0]['weights']:,} "
                         "| " + " / ".join(f"{r['sec']:.1f}" for r in runs[kd]) + " |")
    print("\n| network | training | epochs | test top-1 | weights | train s/epoch (per seed) |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
