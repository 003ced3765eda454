#!/usr/bin/env python3
"""Knowledge distillation on real MNIST: fine-tuning a pruned network with and without a teacher.

For each network (the thinned LeNet-5 of ``schedules/distillation/lenet5.l1_thin_kd.yaml`` and the
24x AGP LeNet-300-100 of ``schedules/distillation/lenet_300_100.agp24x_kd.yaml``) it first trains
the dense network (seed 0; it is both the starting point and the teacher), then, for each seed,
runs the schedule from the dense weights twice, with its distillation policy and with that policy
removed, for the same epochs, and prints a Markdown table: test top-1 mean ± standard deviation
over seeds (and each run), and the mean training seconds per epoch of each. Results go to
``--out`` (dense checkpoints are reused when present).

    python benchmarks/kd_mnist.py ../shared/data/mnist --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import yaml  # noqa: E402

import compressor  # noqa: E402
from compressor import checkpoint as ckpt_io  # noqa: E402
from compressor import models  # noqa: E402
from compressor.data import load_data  # noqa: E402
from compressor.training import evaluate, train_epoch  # noqa: E402

NETWORKS = {   # arch -> (schedule, epochs, dense epochs)
    "lenet5": ("schedules/distillation/lenet5.l1_thin_kd.yaml", 6, 4),
    "lenet_300_100": ("schedules/distillation/lenet_300_100.agp24x_kd.yaml", 8, 8),
}
LR, MOMENTUM, WD, BATCH = 0.01, 0.9, 1e-4, 256


def optimizer_for(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WD)


def dense(arch: str, data: str, out: str, epochs: int) -> str:
    """Train (or reuse) the dense network of ``arch``, seed 0, lr 0.05; returns its checkpoint."""
    path = os.path.join(out, f"{arch}_dense.pth.tar")
    if os.path.isfile(path):
        return path
    torch.manual_seed(0)
    model = models.create_model(arch)
    opt = optimizer_for(model, 0.05)
    lr_drop = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs - 2], 0.2)
    train, _, test = load_data("mnist", data, BATCH, validation_split=0.0, seed=0)
    for epoch in range(epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        train_epoch(model, train, nn.CrossEntropyLoss(), opt, epoch)
        lr_drop.step()
    top1 = evaluate(model, test, nn.CrossEntropyLoss()).top1
    print(f"dense {arch}: {epochs} epochs, test top-1 {top1:.2f}", flush=True)
    ckpt_io.save_checkpoint(path, model, arch=arch, dataset="mnist", epoch=epochs - 1,
                            extras={"test_top1": top1})
    return path


def schedule(path: str, teacher: str, kd: bool) -> dict:
    """The schedule file as a dict: the teacher's checkpoint set, or the KD policy removed."""
    with open(path) as f:
        sched = yaml.safe_load(f)
    kd_names = [n for n, c in sched["extensions"].items() if c["class"] == "KnowledgeDistillationPolicy"]
    for name in kd_names:
        if kd:
            sched["extensions"][name]["teacher_checkpoint"] = teacher
        else:
            del sched["extensions"][name]
            sched["policies"] = [p for p in sched["policies"]
                                 if p.get("extension", {}).get("instance_name") != name]
    if not sched["extensions"]:
        del sched["extensions"]
    return sched


def student(arch: str, data: str, teacher: str, seed: int, kd: bool) -> Dict[str, float]:
    """One run of the schedule from the dense weights; test top-1 and seconds per epoch."""
    sched_path, epochs, _ = NETWORKS[arch]
    torch.manual_seed(seed)
    model = models.create_model(arch)
    ckpt_io.restore(ckpt_io.read_checkpoint(teacher), model, arch=arch, path=teacher)
    opt = optimizer_for(model, LR)
    sched = compressor.dict_config(model, opt, schedule(os.path.join(ROOT, sched_path), teacher, kd),
                                   path=sched_path)
    top1, sec = train_and_test(model, opt, sched, data, seed, epochs)
    nnz = sum(int((p != 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    return {"top1": top1, "sec": sec, "nnz": nnz}


def train_and_test(model: nn.Module, opt: torch.optim.Optimizer, sched, data: str, seed: int,
                   epochs: int, batch: int = BATCH) -> tuple:
    """Train ``epochs`` epochs of MNIST under ``sched`` (data order from ``seed``), then test:
    (test top-1, mean training seconds per epoch)."""
    train, _, test = load_data("mnist", data, batch, validation_split=0.0, seed=seed)
    seconds = []
    for epoch in range(epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        sched.on_epoch_begin(epoch, opt)
        seconds.append(train_epoch(model, train, nn.CrossEntropyLoss(), opt, epoch, sched).seconds)
        sched.on_epoch_end(epoch, opt)
    return evaluate(model, test, nn.CrossEntropyLoss()).top1, statistics.mean(seconds)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="the MNIST folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--out", default="results/kd", help="where the dense checkpoints go")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for arch in args.archs:
        sched_path, epochs, dense_epochs = NETWORKS[arch]
        teacher = dense(arch, args.data, args.out, dense_epochs)
        dense_top1 = ckpt_io.read_checkpoint(teacher)["extras"].get("test_top1")
        runs = {False: [], True: []}
        for seed in args.seeds:
            for kd in (False, True):   # interleaved, so machine load falls on both alike
                r = student(arch, args.data, teacher, seed, kd)
                runs[kd].append(r)
                print(f"{arch} seed {seed} kd={kd}: top-1 {r['top1']:.2f}, {r['sec']:.1f} s/epoch, "
                      f"{r['nnz']} non-zero weights", flush=True)
        for kd in (False, True):
            top1 = [r["top1"] for r in runs[kd]]
            spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
            sec = statistics.mean(r["sec"] for r in runs[kd])
            rows.append(f"| {arch} | `{sched_path}` | {'with KD' if kd else 'fine-tuning alone'} "
                        f"| {epochs} | {statistics.mean(top1):.2f} ± {spread:.2f} "
                        f"[{', '.join(f'{t:.2f}' for t in top1)}] | {dense_top1:.2f} "
                        f"| {runs[kd][0]['nnz']:,} | {sec:.1f} s |")
    print("\n| network | schedule | training | epochs | test top-1 (seeds " +
          " ".join(map(str, args.seeds)) + ") | dense teacher | non-zero weights | train s/epoch |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
