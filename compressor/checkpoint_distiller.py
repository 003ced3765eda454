"""Distiller's checkpoints: the few classes they pickled, allowed by name, and their recipes mapped.

Distiller saved ``torch.optim.SGD`` (the class itself) as ``optimizer_type`` and its thinning
recipes as ``distiller.thinning.ThinningRecipe`` namedtuples. ``safe_globals()`` lets
``torch.load(..., weights_only=True)`` resolve exactly those names, each to a harmless stand-in
defined here (nothing from distiller or the file is imported or called); any other class is still
refused. ``plain()`` turns the stand-ins into plain data (the optimizer's class name; recipes as
dicts of lists), and ``to_recipes()`` turns a Distiller recipe into this library's recipe format
against the model it will be replayed on (typed ``Recipe``s; their ``to_dict`` is what the next
checkpoint holds). Like Distiller, a directive whose dimension already has
the selected size is skipped, so a model thinned the same way beforehand loads as it is.
"""
from __future__ import annotations

import contextlib
from collections import namedtuple
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch
from torch import nn

from .errors import CheckpointError
from .thinning.recipe import RECIPE_VERSION, ModuleChange, Recipe, SliceOp, TensorChange

# the torch.optim classes a checkpoint may name; rebuilt by name, never imported from the file
OPTIMIZER_NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "ASGD",
                   "Rprop", "NAdam", "RAdam", "SparseAdam")
OPTIMIZERS = {n: getattr(torch.optim, n) for n in OPTIMIZER_NAMES if hasattr(torch.optim, n)}

DistillerRecipe = namedtuple("ThinningRecipe", ["modules", "parameters"])
RUNNING_STATS = ("running_mean", "running_var")


class OptimizerStandIn:
    """Stands in for a torch.optim class a checkpoint names; only ``optimizer_name`` is read."""
    optimizer_name = ""


def _stand_ins() -> list:
    pairs: list = [(DistillerRecipe, "distiller.thinning.ThinningRecipe")]
    for name in OPTIMIZERS:
        cls = type(name, (OptimizerStandIn,), {"optimizer_name": name})
        # torch 1.x pickled e.g. torch.optim.sgd.SGD; the module path is the only thing that varies
        pairs.append((cls, f"torch.optim.{name.lower()}.{name}"))
    return pairs


SAFE_GLOBALS = _stand_ins()
ALLOWED_NAMES = tuple(name for _, name in SAFE_GLOBALS)


def safe_globals():
    """A context in which weights_only loading resolves the allowed names to their stand-ins.

    Temporary (torch's own context manager adds and then removes them); on a torch without
    ``(stand-in, name)`` pairs it allows nothing extra, and such files are refused as before.
    """
    manager = getattr(torch.serialization, "safe_globals", None)
    if manager is None:
        return contextlib.nullcontext()
    return manager(SAFE_GLOBALS)


def _index_list(value: Any, where: str) -> List[int]:
    if torch.is_tensor(value) and value.dim() == 1 and not value.is_floating_point():
        return [int(i) for i in value.tolist()]
    if isinstance(value, (list, tuple)) and all(type(i) is int for i in value):
        return list(value)
    raise CheckpointError(f"{where}: expected a 1-D integer index tensor, got {type(value).__name__}")


def _directive(d: Any, where: str) -> Dict[str, Any]:
    if not isinstance(d, (tuple, list)) or len(d) not in (2, 4) or type(d[0]) is not int:
        raise CheckpointError(f"{where}: expected a (dim, indices) or (dim, indices, view, shape) "
                              f"directive, got {type(d).__name__}")
    out: Dict[str, Any] = {"dim": d[0], "index": _index_list(d[1], where)}
    if len(d) == 4:
        out["view"], out["shape"] = [int(x) for x in d[2]], [int(x) for x in d[3]]
    return out


def plain(ckpt: Dict[str, Any], path: str) -> Dict[str, Any]:
    """Replace the stand-ins in a freshly loaded checkpoint with plain data (in place)."""
    kind = ckpt.get("optimizer_type")
    if isinstance(kind, type) and issubclass(kind, OptimizerStandIn):
        ckpt["optimizer_type"] = kind.optimizer_name
    elif kind is not None and not isinstance(kind, str):
        raise CheckpointError(f"{path}: optimizer_type must name a torch.optim class; got "
                              f"{type(kind).__name__}")
    recipes = ckpt.get("thinning_recipes")
    if recipes:
        converted = []
        for i, r in enumerate(recipes):
            if isinstance(r, DistillerRecipe):
                where = f"{path}: Distiller thinning recipe {i + 1}"
                if not isinstance(r.modules, Mapping) or not isinstance(r.parameters, Mapping):
                    raise CheckpointError(f"{where}: modules and parameters must be dicts")
                modules = {}
                for m, attrs in r.modules.items():
                    modules[m] = {a: (_directive(v, f"{where} {m}.{a}") if a in RUNNING_STATS else v)
                                  for a, v in dict(attrs).items()}
                params = {n: [_directive(d, f"{where} {n}") for d in ds] for n, ds in r.parameters.items()}
                converted.append({"format": "distiller", "modules": modules, "parameters": params})
            else:
                converted.append(r)
        ckpt["thinning_recipes"] = converted
    return ckpt


def is_distiller_recipe(recipe: Any) -> bool:
    return isinstance(recipe, Mapping) and recipe.get("format") == "distiller"


def _norm(name: str, known: Mapping[str, Any]) -> str:
    """Drop DataParallel's ``module.`` prefix when the model has no such name."""
    if name in known or not name.startswith("module."):
        return name
    return name[len("module."):]


def _flat_op(shape: List[int], d: Dict[str, Any], where: str) -> Optional[Dict[str, Any]]:
    """A (dim, indices, view, shape) directive as one index op on the tensor's own shape.

    Distiller viewed the tensor (e.g. a linear weight as [out, channels, positions]), selected, and
    viewed back; the result is a selection along one dimension of the tensor whenever the view
    only splits that dimension, which is what such directives do. None when already applied.
    """
    final = d["shape"]
    if len(final) != len(shape) or sum(a != b for a, b in zip(final, shape)) > 1:
        if final == shape:
            return None
        raise CheckpointError(f"{where}: cannot map a view directive from {shape} to {final}")
    if final == shape:
        return None
    k = next(i for i, (a, b) in enumerate(zip(final, shape)) if a != b)
    n = 1
    for s in shape:
        n *= s
    try:
        ar = torch.arange(n).view(shape)
        got = ar.view(d["view"]).index_select(d["dim"], torch.tensor(d["index"])).reshape(final)
    except (RuntimeError, IndexError) as e:
        raise CheckpointError(f"{where}: view directive does not fit shape {shape} ({e})") from None
    base = ar.movedim(k, 0).reshape(shape[k], -1)
    sel = got.movedim(k, 0).reshape(final[k], -1)
    first = {int(v): i for i, v in enumerate(base[:, 0])}
    index = [first.get(int(v)) for v in sel[:, 0]]
    if any(i is None for i in index) or not torch.equal(base[index], sel):
        raise CheckpointError(f"{where}: view directive is not a selection along one dimension")
    return {"dim": k, "index": index}


def to_recipes(model: nn.Module, recipes: List[Mapping], path: str) -> Iterator[Recipe]:
    """This library's recipes for Distiller's, checked against ``model``'s current shapes.

    Directives whose dimension already has the selected size are dropped (Distiller did the same:
    the model was thinned that way already); a recipe left with nothing to do is dropped.
    """
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    shapes: Dict[str, List[int]] = {}
    for i, r in enumerate(recipes):
        where = f"{path}: Distiller thinning recipe {i + 1}"
        out_tensors: Dict[str, TensorChange] = {}
        out_modules: Dict[str, ModuleChange] = {}
        entries = [(n, ds) for n, ds in r["parameters"].items()]
        for m, attrs in r["modules"].items():
            for a, v in attrs.items():
                if a in RUNNING_STATS:
                    entries.append((f"{m}.{a}", [v]))
                elif type(v) is int:
                    name = _norm(m, dict(model.named_modules()))
                    out_modules.setdefault(name, ModuleChange()).attrs[a] = v
                else:
                    raise CheckpointError(f"{where}: module attribute {m}.{a} = {v!r} is not an "
                                          f"integer (only sizes such as out_channels can be set)")
        for raw, directives in entries:
            name = _norm(raw, tensors)
            if name not in tensors:
                raise CheckpointError(f"{where} names '{raw}', which the model does not have")
            before = shapes.get(name, list(tensors[name].shape))
            cur, ops = list(before), []   # type: List[int], List[SliceOp]
            for d in directives:
                if "view" in d:
                    op = _flat_op(cur, d, f"{where} {raw}")
                elif not 0 <= d["dim"] < len(cur):
                    raise CheckpointError(f"{where} {raw}: dim {d['dim']} out of range for {cur}")
                else:
                    op = None if cur[d["dim"]] == len(d["index"]) else {"dim": d["dim"], "index": d["index"]}
                if op is not None:
                    ops.append(SliceOp(op["dim"], list(op["index"])))
                    cur[op["dim"]] = len(op["index"])
            if ops:
                out_tensors[name] = TensorChange(before, ops)
                shapes[name] = cur
        if out_tensors:
            yield Recipe(modules=out_modules, tensors=out_tensors, version=RECIPE_VERSION)
