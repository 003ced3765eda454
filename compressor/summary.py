"""Sparsity and compute tables of a model, as pandas DataFrames; rendering and CSV export apart.

The tables and their column names follow Distiller's ``model_summaries.py`` so that scripts and
notebooks reading Distiller's output keep working:

* ``weights_sparsity_summary``: per-weight element and structure sparsity, plus a total row;
* ``masks_sparsity_summary``: per-mask sparsity, plus a total row;
* ``model_performance_summary``: per-layer feature-map sizes, weight volume and MACs of one
  forward pass, plus ``NNZ MACs`` (MACs that touch non-zero weights), which Distiller lacks;
* ``model_summary_modules``: the leaf modules.

These functions never print and never change the model they are given (the compute table runs
one forward pass in eval mode, under ``torch.no_grad()``, and restores every module's training
flag and removes its hooks, also when the forward pass raises).  ``render`` turns a table into
text with tabulate; ``to_csv`` writes it atomically.  See docs/summaries.md for every column.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import pandas as pd
import torch
from torch import nn
from tabulate import tabulate

from .atomic import atomic_write
from .graph.attention import MAXVIT, find_heads, window_base, window_heads
from .masks import unwrap
from .metrics import (DEFAULT_PARAM_DIMS, DEFAULT_PARAM_TYPES, selected_params, size_to_str,
                      sparsity_2D, sparsity_3D, sparsity_ch, sparsity_cols, sparsity_rows)

__all__ = [
    "SPARSITY_COLUMNS", "MASKS_COLUMNS", "PERFORMANCE_COLUMNS", "MODULES_COLUMNS", "TOTAL_LABEL",
    "weights_sparsity_summary", "masks_sparsity_summary", "model_performance_summary",
    "model_summary_modules", "compute_totals", "render", "to_csv",
]

#: Label of the last row of the sparsity tables (Distiller's spelling, colon included).
TOTAL_LABEL = "Total sparsity:"

SPARSITY_COLUMNS: Tuple[str, ...] = (
    "Name", "Shape", "NNZ (dense)", "NNZ (sparse)", "Cols (%)", "Rows (%)", "Ch (%)", "2D (%)",
    "3D (%)", "Fine (%)", "Std", "Mean", "Abs-Mean")
MASKS_COLUMNS: Tuple[str, ...] = ("Name", "Fine (%)")
PERFORMANCE_COLUMNS: Tuple[str, ...] = (
    "Name", "Type", "Attrs", "IFM", "IFM volume", "OFM", "OFM volume", "Weights volume", "MACs",
    "NNZ MACs")
MODULES_COLUMNS: Tuple[str, ...] = ("Name", "Type", "Parameters")

_INT_COLUMNS = frozenset({"NNZ (dense)", "NNZ (sparse)", "IFM volume", "OFM volume",
                          "Weights volume", "MACs", "NNZ MACs", "Parameters"})
_STR_COLUMNS = frozenset({"Name", "Shape", "Type", "Attrs", "IFM", "OFM"})

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

PathLike = Union[str, "os.PathLike[str]"]


def _frame(rows: List[List[Any]], columns: Tuple[str, ...]) -> pd.DataFrame:
    """A frame with stable dtypes, also when ``rows`` is empty."""
    df = pd.DataFrame(rows, columns=list(columns))
    for col in columns:
        if col in _INT_COLUMNS:
            df[col] = df[col].astype("int64")
        elif col in _STR_COLUMNS:
            df[col] = df[col].astype(object)
        else:
            df[col] = df[col].astype("float64")
    return df


# ---------------------------------------------------------------------------------------------
# Sparsity


def _stats(t: torch.Tensor) -> Tuple[float, float, float]:
    """(std, mean, mean |t|) in float64; NaN where undefined (std of fewer than 2 values)."""
    x = t.detach().double()
    if x.numel() == 0:
        return math.nan, math.nan, math.nan
    std = x.std().item() if x.numel() > 1 else math.nan
    return std, x.mean().item(), x.abs().mean().item()


def weights_sparsity_summary(model: nn.Module, return_total_sparsity: bool = False,
                             param_dims: Iterable[int] = DEFAULT_PARAM_DIMS,
                             param_types: Iterable[str] = DEFAULT_PARAM_TYPES
                             ) -> Union[pd.DataFrame, Tuple[pd.DataFrame, float]]:
    """Per-weight sparsity table with Distiller's exact columns (``SPARSITY_COLUMNS``).

    One row per parameter whose rank is in ``param_dims`` and whose name contains one of
    ``param_types`` (Distiller: ``weight`` or ``bias``; with the default ranks 2 and 4 only
    weights qualify), named as the model names it (so ``module.``-prefixed inside
    ``DataParallel``).  Percent columns are in ``[0, 100]``.  A last row labelled
    ``Total sparsity:`` holds the summed ``NNZ`` columns and the element sparsity of all the rows
    together in ``Fine (%)``; its other numeric cells are 0 and its Shape is ``-``, as in
    Distiller.  With ``return_total_sparsity=True`` returns ``(df, total_sparsity_percent)``.
    """
    rows: List[List[Any]] = []
    dense_total = sparse_total = 0
    for name, param in selected_params(model, param_dims, param_types):
        t = param.detach()
        numel = t.numel()
        nnz = int(torch.count_nonzero(t))
        fine = 100.0 * (1.0 - nnz / numel) if numel else 0.0
        dense_total += numel
        sparse_total += nnz
        rows.append([name, size_to_str(t.shape), numel, nnz,
                     100.0 * sparsity_cols(t), 100.0 * sparsity_rows(t), 100.0 * sparsity_ch(t),
                     100.0 * sparsity_2D(t), 100.0 * sparsity_3D(t), fine, *_stats(t)])
    total = 100.0 * (1.0 - sparse_total / dense_total) if dense_total else 0.0
    rows.append([TOTAL_LABEL, "-", dense_total, sparse_total, 0.0, 0.0, 0.0, 0.0, 0.0, total,
                 0.0, 0.0, 0.0])
    df = _frame(rows, SPARSITY_COLUMNS)
    if return_total_sparsity:
        return df, total
    return df


def masks_sparsity_summary(masks: Mapping[str, Optional[torch.Tensor]], *,
                           model: Optional[nn.Module] = None) -> pd.DataFrame:
    """Per-mask sparsity table: ``Name``, ``Fine (%)`` (percent of zeros in the mask).

    One row per entry of ``masks``, in its order, then a ``Total sparsity:`` row: the percent of
    zeros over all masked elements.  A ``None`` mask means "not pruned": its row shows 0 %.  Its
    size counts in the total (as dense) only when ``model`` is given and has a parameter of that
    name, since a ``None`` carries no size.
    """
    params = dict(model.named_parameters()) if model is not None else {}
    rows: List[List[Any]] = []
    numel_total = nnz_total = 0
    for name, mask in masks.items():
        if mask is None:
            n = params[name].numel() if name in params else 0
            numel_total += n
            nnz_total += n
            rows.append([name, 0.0])
            continue
        n = mask.numel()
        nnz = int(torch.count_nonzero(mask.detach()))
        numel_total += n
        nnz_total += nnz
        rows.append([name, 100.0 * (1.0 - nnz / n) if n else 0.0])
    total = 100.0 * (1.0 - nnz_total / numel_total) if numel_total else 0.0
    rows.append([TOTAL_LABEL, total])
    return _frame(rows, MASKS_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Compute


def _first_tensor(obj: Any) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _to_device(obj: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _model_device(model: nn.Module) -> Optional[torch.device]:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _attrs(module: nn.Module) -> str:
    if isinstance(module, _CONV + _CONV_T):
        attrs = "k=" + size_to_str(module.kernel_size)
        if module.groups != 1:
            attrs += f", g={module.groups}"
        return attrs
    return ""


def model_performance_summary(model: nn.Module, dummy_input: Any,
                              batch_size: int = 1) -> pd.DataFrame:
    """Compute table of one forward pass (``PERFORMANCE_COLUMNS``), one row per layer call.

    Forward hooks on ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` and ``nn.Linear``
    (subclasses included) record each call, in call order; a module called twice gives two
    rows.  Batch norm, pooling, activations, element-wise and functional ops (``F.conv2d``,
    ``x @ w``) are not counted, and neither are biases, as in Distiller.  Attention modules the
    graph recognises (``compressor.graph.attention``: Hugging Face BERT/Llama-style) add one row
    each for their two matmuls, ``2 x heads x T x T x head_dim`` MACs per sample for T tokens
    (no weights, so ``NNZ MACs`` equals ``MACs``).  ``nn.MultiheadAttention`` (and thinning's
    ``ThinMultiheadAttention``) computes its projections functionally: one row for them
    (the q block of ``in_proj_weight`` x Lq, its k and v blocks x Lk, ``out_proj`` x Lq, per
    sample) and one for the matmuls, ``2 x heads x Lq x Lk x head_dim``.  torchvision's window
    attention: Swin's functional ``qkv`` and ``proj`` over the windows its input is padded to
    (one row), and for Swin and MaxViT the two matmuls, ``2 x heads x t x t x head_dim`` per
    window of t tokens (one row).

    ``dummy_input`` is passed as ``model(x)``, or ``model(*x)`` for a tuple/list, or
    ``model(**x)`` for a dict; its tensors are moved to the model's device.  Its batch size
    ``N`` is the first dimension of its first tensor.  ``IFM`` and ``OFM`` show the shapes that
    the dummy input produced; every volume and MAC count is per sample (divided by ``N``) times
    ``batch_size``.  ``MACs`` of a convolution = OFM volume x (C_in / groups) x prod(kernel);
    of a transposed convolution = IFM volume x (C_out / groups) x prod(kernel); of a linear
    layer = in_features x out_features per input vector.  ``NNZ MACs`` counts only the MACs
    whose weight is non-zero: MACs x nnz(weight) / numel(weight), exactly.

    ``DataParallel``/``DistributedDataParallel`` (and ``torch.compile``) wrappers are removed first
    (the forward pass runs on the wrapped module, on one device) and names are relative to the
    wrapped module, as in Distiller.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = unwrap(model)
    names = {id(m): name for name, m in net.named_modules()}
    first = _first_tensor(dummy_input)
    n_dummy = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
    n_dummy = max(n_dummy, 1)

    def scale(count: int) -> int:
        return count * batch_size // n_dummy

    rows: List[List[Any]] = []

    def hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        x = inputs[0]
        weight = module.weight.detach()
        nnz = int(torch.count_nonzero(weight))
        if isinstance(module, _CONV_T):
            # Each input element is multiplied by a (C_out/groups) x prod(k) slice of the weight.
            uses = x.numel() // module.in_channels
        elif isinstance(module, _CONV):
            # Each output element is a dot product with a (C_in/groups) x prod(k) slice.
            uses = output.numel() // module.out_channels
        else:
            uses = output.numel() // module.out_features
        # uses = how many times every weight element is used in this call
        rows.append([names.get(id(module), ""), type(module).__name__, _attrs(module),
                     size_to_str(x.shape), scale(x.numel()),
                     size_to_str(output.shape), scale(output.numel()),
                     weight.numel(), scale(uses * weight.numel()), scale(uses * nnz)])

    def attention_hook(heads) -> Any:
        def record(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any):
            x = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(x, torch.Tensor) or x.dim() < 2:
                return
            # self-attention: scores Q K^T and the weighted sum A V, T x T x head_dim MACs per
            # head each (the projections are the Linear rows)
            t, batch = x.shape[-2], x.numel() // (x.shape[-2] * x.shape[-1])
            macs = 2 * heads.heads * t * t * heads.head_dim * batch
            rows.append([names.get(id(module), ""), "attention (QK^T, AV)",
                         f"heads={heads.heads}, kv={heads.kv_heads}, d={heads.head_dim}",
                         size_to_str(x.shape), scale(x.numel()), "", 0, 0, scale(macs),
                         scale(macs)])
        return record

    def mha_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any):
        # nn.MultiheadAttention (and its thinned subclass) use their weights functionally, so the
        # Linear hook never fires: q/k/v and output projections here, then the two matmuls
        q = args[0] if args else kwargs.get("query")
        k = args[1] if len(args) > 1 else kwargs.get("key")
        if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
            return
        tok = 1 if q.dim() == 3 and module.batch_first else 0
        lq, lk = q.shape[tok], k.shape[tok]
        batch = q.numel() // (lq * q.shape[-1])
        h, d = module.num_heads, module.head_dim
        inner = h * d
        w, o = module.in_proj_weight.detach(), module.out_proj.weight.detach()
        nz = [int(torch.count_nonzero(w[j * inner:(j + 1) * inner])) for j in range(3)]
        macs = (lq * w[:inner].numel() + 2 * lk * w[:inner].numel() + lq * o.numel()) * batch
        nnz = (lq * nz[0] + lk * (nz[1] + nz[2]) + lq * int(torch.count_nonzero(o))) * batch
        out = output[0] if isinstance(output, tuple) else output
        name = names.get(id(module), "")
        rows.append([name, type(module).__name__, f"heads={h}, d={d}", size_to_str(q.shape),
                     scale(q.numel()), size_to_str(out.shape), scale(out.numel()),
                     w.numel() + o.numel(), scale(macs), scale(nnz)])
        att = 2 * h * lq * lk * d * batch
        rows.append([name, "attention (QK^T, AV)", f"heads={h}, kv={h}, d={d}",
                     size_to_str(q.shape), scale(q.numel()), "", 0, 0, scale(att), scale(att)])

    def window_hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        # torchvision's window attention: Swin computes qkv and proj functionally (counted here,
        # over the windows its input is padded to); MaxViT calls its Linear layers (counted
        # there). Both: the two matmuls, 2 x heads x t x t x head_dim per window of t tokens
        x = inputs[0]
        wh = window_heads(module)
        if isinstance(wh, str) or not isinstance(x, torch.Tensor) or x.dim() != 4:
            return
        name = names.get(id(module), "")
        if window_base(module) == MAXVIT:
            windows, t = x.shape[0] * x.shape[1], x.shape[2]
        else:
            (wy, wx), (hh, ww) = module.window_size, x.shape[1:3]
            windows = x.shape[0] * -(-hh // wy) * -(-ww // wx)
            t = wy * wx
            ws = [getattr(module, p).weight.detach() for p in (wh.qkv, wh.proj)]
            uses = windows * t
            rows.append([name, type(module).__name__, f"heads={wh.heads}, d={wh.head_dim}",
                         size_to_str(x.shape), scale(x.numel()), size_to_str(output.shape),
                         scale(output.numel()), sum(w.numel() for w in ws),
                         scale(uses * sum(w.numel() for w in ws)),
                         scale(uses * sum(int(torch.count_nonzero(w)) for w in ws))])
        att = 2 * wh.heads * t * t * wh.head_dim * windows
        rows.append([name, "attention (QK^T, AV)", f"heads={wh.heads}, kv={wh.heads}, "
                     f"d={wh.head_dim}", size_to_str(x.shape), scale(x.numel()), "", 0, 0,
                     scale(att), scale(att)])

    modes = {m: m.training for m in net.modules()}
    handles = []
    try:
        for m in net.modules():
            if isinstance(m, nn.MultiheadAttention):
                handles.append(m.register_forward_hook(mha_hook, with_kwargs=True))
            elif window_base(m) is not None:
                handles.append(m.register_forward_hook(window_hook))
            elif isinstance(m, _CONV + _CONV_T + (nn.Linear,)):
                handles.append(m.register_forward_hook(hook))
            heads = find_heads(names.get(id(m), ""), m)
            if heads is not None:
                handles.append(m.register_forward_hook(attention_hook(heads), with_kwargs=True))
        net.eval()
        args = _to_device(dummy_input, _model_device(net))
        with torch.no_grad():
            if isinstance(args, Mapping):
                net(**args)
            elif isinstance(args, (list, tuple)):
                net(*args)
            else:
                net(args)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return _frame(rows, PERFORMANCE_COLUMNS)


def model_summary_modules(model: nn.Module) -> pd.DataFrame:
    """Leaf modules (modules without children): ``Name``, ``Type``, ``Parameters``.

    Names are the model's own; ``Parameters`` is the number of elements of the module's own
    parameters.  A module registered under two names is listed once.
    """
    rows = [[name, type(m).__name__, sum(p.numel() for p in m.parameters(recurse=False))]
            for name, m in model.named_modules() if next(m.children(), None) is None]
    return _frame(rows, MODULES_COLUMNS)


def compute_totals(df: pd.DataFrame) -> pd.Series:
    """Sum of every integer column of a summary table, skipping its total rows.

    For the compute table this gives ``IFM volume``, ``OFM volume``, ``Weights volume``,
    ``MACs`` and ``NNZ MACs``; for the sparsity table the two ``NNZ`` columns (its
    ``Total sparsity:`` row is skipped, so nothing is counted twice).
    """
    body = df
    if "Name" in df.columns:
        body = df[~df["Name"].astype(str).str.startswith("Total")]
    cols = [c for c in df.columns if pd.api.types.is_integer_dtype(df[c].dtype)]
    return pd.Series({c: int(body[c].sum()) for c in cols}, dtype="int64")


# ---------------------------------------------------------------------------------------------
# Output


def render(df: pd.DataFrame, floatfmt: str = ".5f", tablefmt: str = "psql",
           showindex: bool = True) -> str:
    """The table as text, with tabulate (Distiller prints ``psql`` with 5 decimals and the index)."""
    return tabulate(df, headers="keys", tablefmt=tablefmt, floatfmt=floatfmt,
                    showindex=showindex)


def to_csv(df: pd.DataFrame, path: PathLike, index: bool = False) -> Path:
    """Write ``df`` as CSV to ``path`` atomically: a reader sees the old file or the whole new one.

    The text goes to a temporary file in the same directory, is flushed to disk, then renamed
    over ``path`` with ``os.replace``.  An existing file keeps its permission bits; a new one
    gets ``0o644``.  Returns ``path`` as a ``Path``.
    """
    return atomic_write(path, lambda f: df.to_csv(f, index=index), binary=False)

