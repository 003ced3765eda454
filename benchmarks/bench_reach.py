"""Reach: how much of every torchvision classifier compressor thins exactly, beside Torch-Pruning.

Per model (all of ``torchvision.models.list_models(module=torchvision.models)`` by default, random
weights drawn after ``torch.manual_seed(0)`` (weight matrices that torchvision initialises to
zeros, ViT's classifier, filled with N(0, 0.02²) so the output is not identically zero), eval
mode, GoogLeNet and Inception-v3 without
their training-only auxiliary heads; input 64x64, 96x96 for inception_v3, 224x224 for the ViTs and
MaxViT, whose position embeddings or windows fix the size):

* **compressor**, as a user would: the dry run (``compressor.thinning.analyze``) lists the
  thinnable layers; one schedule with two ``L1RankedStructureParameterPruner``s at 30% (``Filters``
  on the convolutions, ``Cols``, the output neurons, on the linear layers), automatic coupling,
  ``rounding_fn: ceil`` (ceil(0.3 N) pruned per layer or group: the count Torch-Pruning prunes,
  as it keeps ``int(0.7 N)``; ``--rounding-fn floor`` for the library's default),
  preceded, in models with attention modules (ViT, Swin, MaxViT), by an ``AttentionHeadPruner``
  at 30% of each attention layer's heads, is built with ``compressor.dict_config`` and applied (``on_epoch_begin(0)``); then
  ``compressor.thinning.contract_model``. All of it on a float64 copy of the model, so that
  EXACT compares the thinned output with the masked one under the bound of
  ``tests/helpers/exact.py`` (relative error <= 1e-9 of the output's scale). The thinned model is
  turned back into float32 for the sizes and the latency.
* **Torch-Pruning** (when importable): ``MetaPruner``, ``MagnitudeImportance(p=1)``,
  ``pruning_ratio=0.3``, the classifier ignored, one ``step()``, on the same weights; for models
  with ``nn.MultiheadAttention`` its own ViT recipe (``round_to`` the head count, ``hidden_dim``
  set after the step). PASS = it ran and the output shape is right (Torch-Pruning's pruning is not
  exact by design). Each model runs in its own process with a time limit and an address-space
  limit (``resource.setrlimit``), since its dependency graph can run away (tens of GB on Swin).

Columns: layers thinned (output width went down) / conv+linear layers the eval forward uses (their
weight gets a gradient from the output), the classifier (the last conv/linear layer the forward
calls) excluded; parameter and MAC ratios
after/before (MACs: ``compressor.summary.model_performance_summary``, convolutions and linear
layers called as modules, the same counter for both tools); thinning seconds (analysis + pruner
build + masks + ``contract_model`` for compressor; ``MetaPruner`` + ``step()`` for Torch-Pruning);
latency ratio pruned/dense at batch 1 and 32: one thread unless ``--threads``, the two models'
forward passes interleaved (order changing every round), median of N rounds (N in brackets; as
many rounds as fit ``--latency-budget`` seconds, 3 to 15; '-' when one dense forward pass takes
over ``--max-forward`` seconds).

Every model runs in a child process (``--one NAME --tool ours|tp``), so a crash, a hang or a
memory blow-up is a FAIL row, never the end of the benchmark; a time limit reached while timing
latency keeps the rest of the row (a note says so).

    /work/tvenv/bin/python -m benchmarks.bench_reach --quick
    /work/tvenv/bin/python -m benchmarks.bench_reach --models resnet18,swin_t --out /tmp/reach.md
    /work/tvenv/bin/python -m benchmarks.bench_reach --threads 1 --out docs_table.csv

Hugging Face transformers: when ``transformers`` imports, ``transformer_models()`` adds a BERT
encoder and a Llama-style decoder (small random configs) measured by the same ``measure_ours``;
otherwise the output says they were skipped.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):   # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn

from benchmarks import environment, interleaved, md_table, median

FRACTION = 0.3
EXACT_BOUND = 1e-9          # tests/helpers/exact.py::assert_same_function
QUICK_MODELS = ["alexnet", "resnet18", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small",
                "efficientnet_b0", "regnet_y_400mf", "convnext_tiny", "shufflenet_v2_x0_5",
                "squeezenet1_1", "googlenet", "densenet121", "swin_t", "vit_b_32"]
LATENCY_BATCHES = (1, 32)
RESULT_TAG = "RESULT "
PARTIAL_TAG = "PARTIAL "     # the row so far, printed before the latency is timed
STAGE_TAG = "STAGE "


# ----------------------------------------------------------------------------- models and inputs
def input_size(name: str) -> int:
    """The image side the reference protocol uses for a torchvision classifier."""
    if name.startswith("vit_") or name.startswith("maxvit"):
        return 224       # fixed position embeddings / attention windows
    if name == "inception_v3":
        return 96        # its stem needs more than 64 pixels
    return 64


def torchvision_models() -> List[str]:
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def fill_zero_weights(model: nn.Module) -> int:
    """Give small random values to weight matrices that are initialised to all zeros (ViT's
    classifier head): with a zero classifier the output is identically zero, and EXACT would
    compare zeros with zeros. Returns how many were filled."""
    g = torch.Generator().manual_seed(2)
    filled = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                filled += 1
    return filled


def build_model(name: str) -> Tuple[nn.Module, torch.Tensor]:
    """The named model with seed-0 random weights in eval mode, and its example input (batch 1).
    Torchvision names, or the transformer names of ``transformer_models()``."""
    extra = transformer_models()
    torch.manual_seed(0)
    if name in extra:
        return extra[name]()
    import torchvision
    # GoogLeNet and Inception-v3 without the auxiliary heads that only training uses
    kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # GoogLeNet / Inception's init-weights FutureWarning
        model = torchvision.models.get_model(name, **kwargs).eval()
    fill_zero_weights(model)
    s = input_size(name)
    return model, torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(1))


def transformer_models() -> Dict[str, Callable[[], Tuple[nn.Module, torch.Tensor]]]:
    """Hugging Face models as {name: factory -> (model, token ids)}, empty without transformers.

    The hook for transformer thinning: small random configs of a BERT encoder and a Llama-style
    decoder, measured with compressor's public API like the torchvision rows (today torch.fx cannot
    trace them, so expect FAIL rows naming why)."""
    try:
        import transformers
    except ImportError:
        return {}

    def bert():
        cfg = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=512)
        return transformers.BertModel(cfg).eval(), torch.randint(0, 1000, (1, 16))

    def llama():
        cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=384)
        return transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 1000, (1, 16))

    return {"hf_bert_tiny": bert, "hf_llama_tiny": llama}


# ----------------------------------------------------------------------------- shared measurements
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_macs(model: nn.Module, example: torch.Tensor) -> int:
    from compressor.summary import compute_totals, model_performance_summary
    return int(compute_totals(model_performance_summary(model, example))["MACs"])


def first_output(out: Any) -> torch.Tensor:
    """The tensor a model returns (first of a tuple, ``logits`` / first value of a mapping)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        return first_output(out["logits"] if "logits" in out else next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return first_output(out[0])
    raise TypeError(f"cannot find a tensor in a model output of type {type(out).__name__}")


def conv_linear_layers(model: nn.Module, example: torch.Tensor) -> Tuple[List[str], Optional[str]]:
    """(conv/linear layers the eval forward uses, the classifier).

    A layer is used when its weight gets a gradient from the output: that counts the weights a
    module reads without calling the layer (``nn.MultiheadAttention``'s ``out_proj``, Swin's
    ``F.linear(x, self.qkv.weight)``) and leaves out what eval mode skips. The classifier is the
    last conv/linear layer the forward calls."""
    names = {m: n for n, m in model.named_modules()}
    kinds = (nn.Conv2d, nn.Linear)
    called: List[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _args: called.append(names[mod]))
             for m in model.modules() if isinstance(m, kinds)]
    grads = {p: p.grad for p in model.parameters()}
    try:
        for p in grads:
            p.grad = None
        with torch.enable_grad():
            first_output(model(example)).float().sum().backward()
        layers = [n for n, m in model.named_modules()
                  if isinstance(m, kinds) and m.weight.grad is not None]
    finally:
        for h in hooks:
            h.remove()
        for p, g in grads.items():
            p.grad = g
    called_layers = [c for c in called if c in layers]
    return layers, (called_layers[-1] if called_layers else None)


def widths(model: nn.Module) -> Dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def latency_ratios(dense: nn.Module, pruned: nn.Module, example: torch.Tensor,
                   budget_s: float, max_forward_s: float) -> Dict[str, Any]:
    """{"lat_b1": ratio, "lat_b1_rounds": N, ...}: median pruned / median dense forward time.

    One probe pass of the dense model sets N (3..15 rounds within ``budget_s``); a probe over
    ``max_forward_s`` skips the batch size (None)."""
    out: Dict[str, Any] = {}
    for b in LATENCY_BATCHES:
        x = example.expand(b, *example.shape[1:]).contiguous()
        key = f"lat_b{b}"
        with torch.no_grad():
            t0 = time.perf_counter()
            dense(x)
            probe = time.perf_counter() - t0
        if probe > max_forward_s:
            out[key], out[key + "_rounds"] = None, 0
            continue
        rounds = int(max(3, min(15, budget_s / max(2 * probe, 1e-6))))

        def call(m):
            def f():
                with torch.no_grad():
                    m(x)
            return f
        times = interleaved({"dense": call(dense), "pruned": call(pruned)}, rounds=rounds, warmup=1)
        out[key] = median(times["pruned"]) / median(times["dense"])
        out[key + "_rounds"] = rounds
    return out


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:240]


def partial(row: Dict[str, Any]) -> None:
    """In a child process, the row without latency: a time limit hit while timing keeps it."""
    if os.environ.get("BENCH_REACH_CHILD"):
        print(PARTIAL_TAG + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- compressor
def has_attention(model: nn.Module) -> bool:
    """Whether the model has attention modules (``nn.MultiheadAttention``, Swin's and MaxViT's
    attention classes: any module class whose name contains 'Attention')."""
    return any("Attention" in type(m).__name__ for m in model.modules())


def schedule(convs: Sequence[str], linears: Sequence[str], sample_shape: Optional[Sequence[int]],
             rounding_fn: str = "ceil", heads: bool = False) -> dict:
    """The schedule a user writes: 30% of the filters of the convolutions and of the output
    neurons (``Cols``) of the linear layers, by L1, with automatic coupling (``rounding_fn``:
    the count rule's rounding; ``ceil`` prunes at least 30%, as Torch-Pruning's kept count
    ``int(N * 0.7)`` does). With ``heads``, first an ``AttentionHeadPruner`` at 30% of each
    attention layer's heads (whole heads: the layer-wise L1 ranking rarely zeroes all of a
    head's q/k/v rows, so without it heads stay)."""
    pruners, policies = {}, []
    if heads:
        pruners["heads"] = {"class": "AttentionHeadPruner", "desired_sparsity": FRACTION}
        policies.append({"pruner": {"instance_name": "heads"}, "epochs": [0]})
    for key, group, layers in (("filters", "Filters", convs), ("neurons", "Cols", linears)):
        if layers:
            pruners[key] = {"class": "L1RankedStructureParameterPruner", "group_type": group,
                            "desired_sparsity": FRACTION, "rounding_fn": rounding_fn,
                            "weights": [f"{n}.weight" for n in layers]}
            policies.append({"pruner": {"instance_name": key}, "epochs": [0]})
    sched = {"version": 1, "pruners": pruners, "policies": policies}
    if sample_shape is not None:      # token ids: the example input is passed instead
        sched["input_shape"] = list(sample_shape)
    return sched


def measure_ours(model: nn.Module, example: torch.Tensor, *, latency_budget: float = 3.0,
                 max_forward: float = 2.0, stage: Callable[[str], None] = lambda s: None,
                 rounding_fn: str = "ceil") -> Dict[str, Any]:
    """One row of compressor's columns for ``model`` (float32, eval) on ``example`` (batch 1).

    Never raises: an error in compressor gives ``ours = "FAIL (<stage>): <first line>"``."""
    import compressor
    from compressor.thinning import analyze, contract_model

    row: Dict[str, Any] = {"ours": "FAIL", "layers_thinned": None, "layers_total": None,
                           "params_ratio": None, "macs_ratio": None, "thin_s": None,
                           "exact_err": None, "lat_b1": None, "lat_b1_rounds": 0,
                           "lat_b32": None, "lat_b32_rounds": 0}
    where = "setup"
    try:
        stage(where := "count layers")
        layers, classifier = conv_linear_layers(model, example)
        counted = [n for n in layers if n != classifier]
        row["layers_total"] = len(counted)
        p0, m0 = n_params(model), n_macs(model, example)
        w0 = widths(model)

        stage(where := "float64 copy")
        work = copy.deepcopy(model).double()
        x64 = example.double() if example.is_floating_point() else example
        sample_shape = tuple(example.shape[1:]) if example.is_floating_point() else None
        kinds = dict(model.named_modules())

        stage(where := "analyze")
        t0 = time.perf_counter()
        report = analyze(work, x64)
        targets = [n for n in report.thinnable if n in counted]
        convs = [n for n in targets if isinstance(kinds[n], nn.Conv2d)]
        linears = [n for n in targets if isinstance(kinds[n], nn.Linear)]
        stage(where := "build pruner")
        sched = compressor.dict_config(work, None, schedule(convs, linears, sample_shape, rounding_fn,
                                                             heads=has_attention(model)),
                                       example_input=x64) if targets else None
        stage(where := "prune")
        if sched is not None:
            sched.on_epoch_begin(0)
        t1 = time.perf_counter()
        stage(where := "masked forward")
        with torch.no_grad():
            masked = first_output(work(x64))
        stage(where := "contract_model")
        t2 = time.perf_counter()
        if sched is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # "kept channel 0 of ..." notes
                contract_model(work, x64, store=sched)
        t3 = time.perf_counter()
        row["thin_s"] = (t1 - t0) + (t3 - t2)

        stage(where := "thinned forward")
        with torch.no_grad():
            thinned = first_output(work(x64))
        scale = masked.abs().max().item() + 1e-300
        err = ((thinned - masked).abs().max().item() / scale if thinned.shape == masked.shape
               else float("inf"))
        row["exact_err"] = err

        stage(where := "sizes")
        small = work.float()
        w1 = widths(small)
        row["layers_thinned"] = sum(1 for n in counted if w1.get(n, w0[n]) < w0[n])
        row["params_ratio"] = n_params(small) / p0
        row["macs_ratio"] = n_macs(small, example) / m0 if m0 else None
        row["ours"] = "PASS" if err <= EXACT_BOUND else f"FAIL (not exact): relative error {err:.2g}"

        stage(where := "latency")
        partial(row)
        row.update(latency_ratios(model, small, example, latency_budget, max_forward))
    except Exception as e:    # a model our code cannot handle is a row, not the end of the run
        row["ours"] = f"FAIL ({where}): {first_line(e)}"
    return row


# ----------------------------------------------------------------------------- Torch-Pruning
def torch_pruning_version() -> Optional[str]:
    try:
        from importlib.metadata import version
        import torch_pruning  # noqa: F401
        return version("torch-pruning")
    except Exception:
        return None


def measure_tp(model: nn.Module, example: torch.Tensor, *, latency_budget: float = 3.0,
               max_forward: float = 2.0, stage: Callable[[str], None] = lambda s: None
               ) -> Dict[str, Any]:
    """Torch-Pruning's columns for ``model``: MetaPruner, L1 magnitude, 30%, classifier ignored."""
    import torch_pruning as tp
    row: Dict[str, Any] = {"tp": "FAIL", "tp_params_ratio": None, "tp_macs_ratio": None,
                           "tp_s": None, "tp_lat_b1": None, "tp_lat_b1_rounds": 0,
                           "tp_lat_b32": None, "tp_lat_b32_rounds": 0}
    where = "setup"
    try:
        _, classifier = conv_linear_layers(model, example)
        dense = copy.deepcopy(model)
        p0, m0 = n_params(model), n_macs(model, example)
        with torch.no_grad():
            shape = first_output(model(example)).shape
        ignored = [model.get_submodule(classifier)] if classifier else []
        # Torch-Pruning's own recipe for attention: keep the embedding divisible by the heads
        heads = {m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stage(where := "build pruner")
            t0 = time.perf_counter()
            pruner = tp.pruner.MetaPruner(model, example,
                                          importance=tp.importance.MagnitudeImportance(p=1),
                                          pruning_ratio=FRACTION, ignored_layers=ignored,
                                          round_to=max(heads) if heads else None)
            stage(where := "step")
            pruner.step()
            row["tp_s"] = time.perf_counter() - t0
        if hasattr(model, "hidden_dim") and hasattr(model, "conv_proj"):
            model.hidden_dim = model.conv_proj.out_channels    # torchvision's ViT reads it
        model.eval()
        stage(where := "forward")
        with torch.no_grad():
            out = first_output(model(example))
        if out.shape != shape:
            raise RuntimeError(f"output shape {tuple(out.shape)}, expected {tuple(shape)}")
        row["tp_params_ratio"] = n_params(model) / p0
        row["tp_macs_ratio"] = n_macs(model, example) / m0 if m0 else None
        row["tp"] = "PASS"
        stage(where := "latency")
        partial(row)
        lat = latency_ratios(dense, model, example, latency_budget, max_forward)
        row.update({"tp_" + k: v for k, v in lat.items()})
    except TimeoutError as e:   # the child's alarm (see ``child``)
        row["tp"] = f"FAIL (timeout): {e} (in {where})"
    except Exception as e:
        row["tp"] = f"FAIL ({where}): {first_line(e)}"
    return row


# ----------------------------------------------------------------------------- child processes
def child(name: str, tool: str, latency_budget: float, max_forward: float,
          tp_timeout: float = 0.0, rounding_fn: str = "ceil") -> None:
    """``--one NAME --tool T``: measure one model, print ``RESULT {json}`` (stages before it).

    For Torch-Pruning, ``tp_timeout`` seconds are allowed from building its pruner to the checked
    output (an alarm raises ``TimeoutError`` in its Python code); building the model, counting
    its layers and timing latency are not counted."""
    import signal

    def stage(s: str) -> None:
        if s == "latency":
            signal.setitimer(signal.ITIMER_REAL, 0)
        elif s == "build pruner" and tool == "tp" and tp_timeout > 0:
            signal.signal(signal.SIGALRM, alarm)
            signal.setitimer(signal.ITIMER_REAL, tp_timeout)
        print(STAGE_TAG + s, flush=True)

    def alarm(_signum, _frame):
        raise TimeoutError(f"over {tp_timeout:g} s")

    stage("build model")
    model, example = build_model(name)
    if tool == "ours":
        row = measure_ours(model, example, latency_budget=latency_budget,
                           max_forward=max_forward, stage=stage, rounding_fn=rounding_fn)
    else:
        row = measure_tp(model, example, latency_budget=latency_budget, max_forward=max_forward,
                         stage=stage)
    print(RESULT_TAG + json.dumps(row), flush=True)


def _limit_memory(gb: float) -> Callable[[], None]:
    def apply() -> None:
        import resource
        limit = int(gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def run_child(name: str, tool: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Run one measurement in a child process; a timeout, a crash or a memory error is a FAIL."""
    key = "ours" if tool == "ours" else "tp"
    # Torch-Pruning's own limit is an alarm in the child; this one only stops a hung process
    timeout = args.ours_timeout if tool == "ours" else args.tp_timeout + 600
    memory = args.ours_memory_gb if tool == "ours" else args.tp_memory_gb
    cmd = [sys.executable, "-m", "benchmarks.bench_reach", "--one", name, "--tool", tool,
           "--threads", str(args.threads), "--latency-budget", str(args.latency_budget),
           "--max-forward", str(args.max_forward), "--tp-timeout", str(args.tp_timeout),
           "--rounding-fn", args.rounding_fn]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BENCH_REACH_CHILD="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_limit_memory(memory))
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        lines = stdout.splitlines()
        stages = [ln[len(STAGE_TAG):] for ln in lines if ln.startswith(STAGE_TAG)]
        rows = [json.loads(ln[len(PARTIAL_TAG):]) for ln in lines if ln.startswith(PARTIAL_TAG)]
        if rows:    # pruned and measured; only the latency ran out of time
            rows[-1][f"{key}_note"] = f"{key} latency not timed: over the {timeout:g} s limit"
            return rows[-1]
        return {key: f"FAIL (timeout): over {timeout:g} s (in {stages[-1] if stages else 'start'})"}
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    stages = [ln[len(STAGE_TAG):] for ln in stdout.splitlines() if ln.startswith(STAGE_TAG)]
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    why = tail[-1][:200] if tail else f"exit code {rc}"
    if "MemoryError" in stderr or "std::bad_alloc" in stderr or "DefaultCPUAllocator" in stderr:
        why = f"over the {memory:g} GB memory limit ({why})"
    return {key: f"FAIL (crash, in {stages[-1] if stages else 'start'}): {why}",
            "elapsed_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- the table
COLUMNS = [("model", "model"), ("size", "input"), ("ours", "compressor"),
           ("layers", "layers thinned / conv+linear (excl. classifier)"),
           ("params_ratio", "params ratio"), ("macs_ratio", "MACs ratio"),
           ("thin_s", "thin s"), ("exact_err", "EXACT (rel. err)"),
           ("lat_b1", "latency b1 (N)"), ("lat_b32", "latency b32 (N)"),
           ("tp", "Torch-Pruning"), ("tp_params_ratio", "TP params ratio"),
           ("tp_macs_ratio", "TP MACs ratio"), ("tp_s", "TP s"),
           ("tp_lat_b1", "TP latency b1 (N)"), ("tp_lat_b32", "TP latency b32 (N)"),
           ("diff", "params ours - TP")]


def _num(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cells(row: Dict[str, Any]) -> List[str]:
    def lat(key):
        return "-" if row.get(key) is None else f"{row[key]:.2f} ({row.get(key + '_rounds', 0)})"
    err = row.get("exact_err")
    exact = "-" if err is None else (f"yes ({err:.0e})" if err <= EXACT_BOUND else f"NO ({err:.1e})")
    layers = ("-" if row.get("layers_total") is None else
              f"{_num(row.get('layers_thinned'), 0) if row.get('layers_thinned') is not None else '-'}"
              f" / {row['layers_total']}")
    diff = diff_of(row)
    return [row["model"], str(row.get("size", "-")), row.get("ours", "-"), layers,
            _num(row.get("params_ratio")), _num(row.get("macs_ratio")), _num(row.get("thin_s"), 2),
            exact, lat("lat_b1"), lat("lat_b32"), row.get("tp", "-"),
            _num(row.get("tp_params_ratio")), _num(row.get("tp_macs_ratio")),
            _num(row.get("tp_s"), 2), lat("tp_lat_b1"), lat("tp_lat_b32"),
            "-" if diff is None else f"{diff:+.3f}"]


def diff_of(row: Dict[str, Any]) -> Optional[float]:
    if row.get("ours") == "PASS" and row.get("tp") == "PASS":
        return row["params_ratio"] - row["tp_params_ratio"]
    return None


def summary(rows: Sequence[Dict[str, Any]], tp_ran: bool) -> List[str]:
    n = len(rows)
    ours_pass = [r for r in rows if r.get("ours") == "PASS"]
    full = [r for r in ours_pass if r.get("layers_total") is not None
            and r.get("layers_thinned") == r["layers_total"]]
    lines = [f"- models: {n}; compressor PASS (ran, thinned ≡ masked in float64): {len(ours_pass)}; "
             f"FAIL: {n - len(ours_pass)}",
             f"- every conv/linear layer (excl. classifier) thinned: {len(full)} of {n}"]
    if ours_pass:
        lines.append(f"- compressor median params ratio over its PASS models: "
                     f"{median([r['params_ratio'] for r in ours_pass]):.3f}")
    if tp_ran:
        tp_pass = [r for r in rows if r.get("tp") == "PASS"]
        kinds: Dict[str, int] = {}
        for r in rows:
            if r.get("tp", "PASS") != "PASS":
                k = r["tp"].split(")")[0] + ")" if r["tp"].startswith("FAIL (") else "FAIL"
                kinds[k] = kinds.get(k, 0) + 1
        lines.append(f"- Torch-Pruning PASS: {len(tp_pass)} of {n}"
                     + "".join(f"; {k}: {v}" for k, v in sorted(kinds.items())))
        both = [r for r in rows if diff_of(r) is not None]
        if both:
            close = [r for r in both if abs(diff_of(r)) <= 0.03]
            lines.append(f"- on the {len(both)} models both run: median params ratio compressor "
                         f"{median([r['params_ratio'] for r in both]):.3f}, Torch-Pruning "
                         f"{median([r['tp_params_ratio'] for r in both]):.3f}; "
                         f"|compressor - TP| <= 0.03 on {len(close)} of {len(both)}")
    else:
        lines.append("- Torch-Pruning: not run (--no-tp, or not installed: `pip install torch-pruning`)")
    return lines


def render(rows: Sequence[Dict[str, Any]], tp_ran: bool, notes: Sequence[str]) -> str:
    out = [md_table([h for _, h in COLUMNS], [cells(r) for r in rows]), "", "Summary:", ""]
    out += summary(rows, tp_ran)
    out += [f"- note: {n}" for n in notes]
    out += [f"- note: {r['model']}: {r[k]}" for r in rows for k in ("ours_note", "tp_note") if r.get(k)]
    return "\n".join(out)


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def measure_all(names: Sequence[str], args: argparse.Namespace, tp_ran: bool,
                notes: Sequence[str], header: str) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for i, name in enumerate(names):
        size = input_size(name) if name not in transformer_models() else "tokens"
        row: Dict[str, Any] = {"model": name, "size": size}
        t0 = time.perf_counter()
        row.update(run_child(name, "ours", args))
        if tp_ran and not args.no_tp:
            row.update(run_child(name, "tp", args))
        rows.append(row)
        print(f"[{i + 1}/{len(names)}] {name}: {row.get('ours')} | {row.get('tp', '-')} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if args.out:     # rewritten after every model, so a long run leaves a partial table
            save(rows, args.out, tp_ran and not args.no_tp, notes, header)
    return rows


def save(rows, path: str, tp_ran: bool, notes, header: str) -> None:
    if path.endswith(".csv"):
        write_csv(rows, path)
    else:
        with open(path, "w") as f:
            f.write(header + "\n\n" + render(rows, tp_ran, notes) + "\n")


def run(quick: bool = False) -> str:
    """The ``benchmarks/run.py`` entry: the quick set (needs torchvision)."""
    return main_text(["--quick"] if quick else [])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated model names (default: every "
                   "torchvision classifier, plus the transformer rows when transformers imports)")
    p.add_argument("--quick", action="store_true", help=f"only {len(QUICK_MODELS)} representative "
                   f"models: {', '.join(QUICK_MODELS)}")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", default="", help="also write the table here (.csv: CSV, else markdown); "
                   "rewritten after every model")
    p.add_argument("--no-tp", action="store_true", help="leave Torch-Pruning out")
    p.add_argument("--tp-timeout", type=float, default=60.0, help="seconds per Torch-Pruning model")
    p.add_argument("--tp-memory-gb", type=float, default=12.0,
                   help="address-space limit of a Torch-Pruning child process")
    p.add_argument("--ours-timeout", type=float, default=900.0, help="seconds per compressor model")
    p.add_argument("--ours-memory-gb", type=float, default=20.0,
                   help="address-space limit of a compressor child process")
    p.add_argument("--latency-budget", type=float, default=3.0,
                   help="seconds of timing per batch size (sets the rounds N, 3..15)")
    p.add_argument("--max-forward", type=float, default=2.0,
                   help="skip a batch size's latency when one dense pass takes longer (seconds)")
    p.add_argument("--rounding-fn", choices=["floor", "ceil", "round"], default="ceil",
                   help="compressor's count rule rounding (default ceil: ceil(0.3 N) pruned per "
                        "layer or group, the count Torch-Pruning prunes (it keeps int(0.7 N)), so "
                        "both tools prune the same numbers; floor, the library's and Distiller's "
                        "default, prunes at most 30%%, which matters for the small groups of "
                        "grouped convolutions)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--tool", choices=["ours", "tp"], default="ours", help=argparse.SUPPRESS)
    return p


def main_text(argv: Optional[Sequence[str]] = None) -> str:
    args = parser().parse_args(argv)
    if args.threads < 1:
        parser().error(f"--threads must be >= 1; got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        import torchvision
    except ImportError:
        return ("## Reach on torchvision classifiers\n\ntorchvision is not installed: nothing to "
                "measure (`pip install -e .[reach]`, or run with /work/tvenv/bin/python).")
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    else:
        names = QUICK_MODELS if args.quick else torchvision_models() + list(transformer_models())
    notes = []
    if not transformer_models():
        notes.append("transformers is not installed: the BERT / Llama rows are skipped")
    tp_version = torch_pruning_version()
    tp_ran = tp_version is not None and not args.no_tp
    header = (f"## Reach: {FRACTION:.0%} of the filters of every thinnable layer, compressor vs "
              f"Torch-Pruning\n\nMeasured {environment()}; torchvision {torchvision.__version__}, "
              f"torch-pruning {tp_version or 'not installed'}\n\nCommand: python -m "
              f"benchmarks.bench_reach {' '.join(argv if argv is not None else sys.argv[1:])}")
    rows = measure_all(names, args, tp_ran, notes, header)
    return header + "\n\n" + render(rows, tp_ran, notes)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parser().parse_args(argv)
    if args.one:
        torch.set_num_threads(args.threads)
        child(args.one, args.tool, args.latency_budget, args.max_forward, args.tp_timeout,
              args.rounding_fn)
        return
    print(main_text(argv))


if __name__ == "__main__":
    main()
