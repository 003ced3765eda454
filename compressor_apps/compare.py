"""compare_checkpoints: test top-1, agreement with a reference model, weights and MACs kept.

    python apps/compare_checkpoints.py DATA_DIR REFERENCE.pth.tar OTHER.pth.tar [...]

Each checkpoint is rebuilt from its own architecture name (thinning recipes replayed) and evaluated
on the test set of its dataset; agreement is the share of test images on which a model predicts the
same class as the reference. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import List, Optional

import torch

from compressor import checkpoint as ckpt_io
from compressor import models, summary
from compressor.data import load_data
from compressor.errors import CompressorError
from compressor.training import predictions
from .common import weight_stats
from .run_config import model_dataset_of


def describe(path: str, data_dir: Optional[str], batch_size: int):
    ckpt = ckpt_io.read_checkpoint(path)
    arch, dataset = ckpt.get("arch"), ckpt.get("dataset") or None
    if not arch:
        raise CompressorError(f"{path}: the checkpoint names no architecture")
    model_dataset = model_dataset_of(dataset) if dataset else models.dataset_of(arch)
    model = models.create_model(arch, model_dataset)
    ckpt_io.restore(ckpt, model, path=path)
    _, _, test = load_data(dataset or model_dataset, data_dir, batch_size, validation_split=0.0)
    preds = predictions(model, test)
    targets = torch.cat([y for _, y in test])
    _, sparsity, nnz = weight_stats(model)
    shape = models.input_shape(model_dataset)
    df = summary.model_performance_summary(model, torch.zeros(1, *shape))
    totals = summary.compute_totals(df)
    return {"path": path, "arch": arch, "preds": preds, "top1": 100.0 * float((preds == targets).float().mean()),
            "nnz": nnz, "macs": int(totals["MACs"]), "nnz_macs": int(totals["NNZ MACs"]),
            "model": model.eval(), "shape": shape}


@torch.no_grad()
def latencies(rows, batch: int, rounds: int) -> List[float]:
    """Median forward time (ms) of each model at ``batch``, the models interleaved every round."""
    times: List[List[float]] = [[] for _ in rows]
    inputs = [torch.randn(batch, *r["shape"]) for r in rows]
    for _ in range(3):                                   # warm-up
        for r, x in zip(rows, inputs):
            r["model"](x)
    for k in range(rounds):
        order = list(range(len(rows)))[::1 if k % 2 == 0 else -1]
        for i in order:
            start = time.perf_counter()
            rows[i]["model"](inputs[i])
            times[i].append(1000.0 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="compare_checkpoints", description=__doc__.splitlines()[0])
    p.add_argument("data", metavar="DATA_DIR", help="the dataset folder (not needed for digits)")
    p.add_argument("reference", help="the reference (dense) checkpoint")
    p.add_argument("others", nargs="+", help="checkpoints to compare with it")
    p.add_argument("-b", "--batch-size", type=int, default=1000)
    p.add_argument("--latency", type=int, nargs="*", metavar="BATCH", default=None,
                   help="also time inference (median of interleaved runs) at these batch sizes "
                        "(default 1 64) and give each model's speed-up over the reference")
    p.add_argument("--rounds", type=int, default=200, help="timed runs per model and batch size")
    args = p.parse_args(argv)
    try:
        rows = [describe(path, args.data, args.batch_size) for path in [args.reference] + args.others]
    except CompressorError as e:
        sys.stderr.write(f"compare_checkpoints: error: {e}\n")
        return 2
    ref = rows[0]
    print("| checkpoint | arch | test top-1 | Δ top-1 | agreement | non-zero weights | kept | MACs | NNZ MACs kept |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        agree = 100.0 * float((r["preds"] == ref["preds"]).float().mean())
        print(f"| {r['path']} | {r['arch']} | {r['top1']:.2f} | {r['top1'] - ref['top1']:+.2f} | "
              f"{agree:.2f}% | {r['nnz']:,} | {100.0 * r['nnz'] / ref['nnz']:.1f}% "
              f"({ref['nnz'] / max(r['nnz'], 1):.1f}×) | {r['macs']:,} | {100.0 * r['nnz_macs'] / ref['nnz_macs']:.1f}% |")
    if args.latency is not None:
        batches = args.latency or [1, 64]
        print(f"\nCPU inference, torch.get_num_threads() = {torch.get_num_threads()}, median of "
              f"{args.rounds} interleaved runs:\n")
        print("| checkpoint | batch | ms | speed-up | MAC ratio |")
        print("|---|---:|---:|---:|---:|")
        for b in batches:
            ms = latencies(rows, b, args.rounds)
            for r, t in zip(rows, ms):
                print(f"| {r['path']} | {b} | {t:.3f} | {ms[0] / t:.2f}× | {ref['macs'] / r['macs']:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
