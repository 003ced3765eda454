"""Saving a thinned Hugging Face model so that it loads again, with ``from_pretrained`` when it can.

A Hugging Face config has one ``intermediate_size`` and one ``num_attention_heads`` for all
layers, and some architectures derive the head size from the hidden size (BERT:
``hidden_size / num_attention_heads``). ``save_thinned`` therefore

* rewrites the config's widths and head counts (``intermediate_size``, ``num_attention_heads``,
  ``num_key_value_heads``, and ``head_dim`` where the config has one; for a Llama-style decoder
  whose residual stream was thinned, ``hidden_size`` and ``rms_norm_eps``, the epsilon its RMS
  norms were rescaled to) when every layer has the same widths and the config can say them: the directory then loads with the architecture's own
  ``from_pretrained``, nothing of this library needed;
* otherwise (per-layer widths differ, or BERT lost heads) keeps the dense config and says why; the
  directory then loads with ``load_thinned``, which builds the dense model, replays the recorded
  thinning recipes and loads the weights. ``from_pretrained`` on such a directory fails loudly
  (the checkpoint's shapes differ from the config's), never silently.

Both kinds carry ``compressor_thinning.json``: the dense config and the recipes. Pruning the same
fraction of every layer (``compressor.thinning.heads.class_masks`` does) gives equal widths.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from torch import nn

from ..errors import CompressorError
from ..graph.attention import find_heads
from ..graph.stream import find_decoder, rms_eps_attr
from ..thinning.record import recipes_of

RECORD = "compressor_thinning.json"


class HFSaveError(CompressorError):
    """A thinned Hugging Face model cannot be saved or loaded as asked."""


@dataclass
class SavedModel:
    """Where a thinned model went and how to load it: ``loads_with`` is ``'from_pretrained'``
    (the config says its widths) or ``'load_thinned'`` (``reason`` says why not)."""
    directory: str
    loads_with: str
    widths: Dict[str, List[int]]
    reason: Optional[str] = None


def layer_widths(model: nn.Module) -> Dict[str, List[int]]:
    """Per layer, in model order: MLP neurons ('intermediate_size'), query heads
    ('num_attention_heads'), key/value heads ('num_key_value_heads'), head sizes ('head_dim');
    for a Llama-style decoder, the width of its embedding and of every RMS norm ('hidden_size')."""
    out: Dict[str, List[int]] = {"intermediate_size": [], "num_attention_heads": [],
                                 "num_key_value_heads": [], "head_dim": []}
    dec = find_decoder(model)
    if not isinstance(dec, str):
        mods = dict(model.named_modules())
        out["hidden_size"] = [mods[dec.embed].embedding_dim] + [
            mods[p].weight.shape[0] for p in _norms(dec)]
    for name, mod in model.named_modules():
        h = find_heads(name, mod)
        if h is not None:
            out["num_attention_heads"].append(h.heads)
            out["num_key_value_heads"].append(h.kv_heads)
            out["head_dim"].append(h.head_dim)
        up = getattr(mod, "up_proj", None)
        if isinstance(up, nn.Linear) and isinstance(getattr(mod, "down_proj", None), nn.Linear):
            out["intermediate_size"].append(up.out_features)
        inter = getattr(getattr(mod, "intermediate", None), "dense", None)
        if isinstance(inter, nn.Linear):
            out["intermediate_size"].append(inter.out_features)
    return out


def _norms(dec) -> List[str]:
    return [p for L in dec.layers for p in (L.norm1, L.norm2)] + [dec.norm]


def _rms_eps(model: nn.Module) -> List[float]:
    """The epsilon of every RMS norm of a Llama-style decoder (empty for other models)."""
    dec = find_decoder(model)
    if isinstance(dec, str):
        return []
    mods = dict(model.named_modules())
    eps = [getattr(mods[p], rms_eps_attr(mods[p]) or "", None) for p in _norms(dec)]
    return [e for e in eps if isinstance(e, float)]


def _config_for(model: nn.Module, widths: Dict[str, List[int]]):
    """(a config with the thinned widths, None) or (None, why the config cannot say them)."""
    config = copy.deepcopy(model.config)
    uneven = [f"{k} {sorted(set(v))}" for k, v in widths.items() if len(set(v)) > 1]
    if uneven:
        return None, (f"the layers have different widths ({'; '.join(uneven)}) and a config has "
                      f"one per model; prune the same fraction of every layer")
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads"):
        if widths[key] and hasattr(config, key):
            setattr(config, key, widths[key][0])
    hidden = widths.get("hidden_size")
    if hidden and hidden[0] != getattr(config, "hidden_size", hidden[0]):
        eps = sorted(set(_rms_eps(model)))
        if len(eps) != 1 or not hasattr(config, "rms_norm_eps") or \
                not hasattr(config, "head_dim"):
            return None, (f"the hidden size is now {hidden[0]}, and {type(config).__name__} cannot "
                          f"say it with one rms_norm_eps and an explicit head_dim (norm epsilons "
                          f"{eps})")
        config.hidden_size, config.rms_norm_eps = hidden[0], eps[0]
    if widths["head_dim"]:
        d = widths["head_dim"][0]
        if hasattr(config, "head_dim"):
            config.head_dim = d
        elif config.hidden_size // config.num_attention_heads != d:
            return None, (f"{type(config).__name__} derives the head size from hidden_size / "
                          f"num_attention_heads ({config.hidden_size} / "
                          f"{config.num_attention_heads} != {d}), so it cannot say fewer heads")
    return config, None


def save_thinned(model: nn.Module, directory: str) -> SavedModel:
    """Save ``model`` (a thinned Hugging Face ``PreTrainedModel``) to ``directory``; see the module
    docstring for what loads it. Returns a ``SavedModel``."""
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise HFSaveError(f"save_thinned saves Hugging Face models; {type(model).__name__} has no "
                          f"save_pretrained/config")
    widths = layer_widths(model)
    config, reason = _config_for(model, widths)
    dense = model.config
    os.makedirs(directory, exist_ok=True)
    try:
        if config is not None:
            model.config = config
        model.save_pretrained(directory)
    finally:
        model.config = dense
    record = {"dense_config": dense.to_dict(), "architecture": type(model).__name__,
              "recipes": [r.to_dict() for r in recipes_of(model)]}
    with open(os.path.join(directory, RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f)
    return SavedModel(directory, "from_pretrained" if config is not None else "load_thinned",
                      widths, reason)


def load_thinned(directory: str, model_class=None):
    """Load a directory ``save_thinned`` wrote, whatever its widths: the dense model built from
    the recorded config, the recorded recipes replayed, then the saved weights loaded."""
    import transformers                     # lazily: an optional dependency ('hf' extra)
    from safetensors.torch import load_file
    from ..thinning.execute import replay
    path = os.path.join(directory, RECORD)
    if not os.path.exists(path):
        raise HFSaveError(f"{directory}: no {RECORD}; was it written by save_thinned?")
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if model_class is None:
        model_class = getattr(transformers, record["architecture"], None)
        if model_class is None:
            raise HFSaveError(f"{path}: unknown architecture {record['architecture']!r}; pass "
                              f"model_class")
    dense = dict(record["dense_config"])
    config_class = transformers.AutoConfig.for_model(dense.pop("model_type")).__class__
    model = model_class(config_class(**dense))
    replay(model, record["recipes"])
    state = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(directory, name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise HFSaveError(f"{directory}: the saved weights do not fit the replayed model (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
