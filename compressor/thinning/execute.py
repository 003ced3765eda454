"""Apply a thinning recipe to a live model, its masks and its optimizer's state; replay recipes.

Parameters keep their identity: ``param.data`` (and ``param.grad``) are replaced by the selected
slices, so an optimizer built before thinning keeps working. Every per-parameter optimizer state
tensor with the parameter's shape (SGD's momentum buffer, Adam's moments, Adagrad's sums ...) is
sliced the same way; scalar state (``step``) is left alone. A recipe's ``selections`` then make
batch norms read only some input channels (``selection.set_selection``: the same module object,
a new ``index`` buffer). Everything is checked before anything is changed: a recipe that does not
fit raises ``ThinningError`` and leaves the model, the masks and the optimizer as they were.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..errors import ThinningError
from ..masks import unwrap
from .selection import can_select, set_selection

KNOWN_VERSIONS = (1, 2)


def _resolve(model: nn.Module, name: str) -> Tuple[nn.Module, str, str]:
    """(owning module, attribute, 'param' | 'buffer') of a tensor name, or ThinningError."""
    prefix, _, attr = name.rpartition(".")
    try:
        mod = model.get_submodule(prefix) if prefix else model
    except AttributeError:
        raise ThinningError(f"recipe names '{name}', but the model has no module '{prefix}'") from None
    if mod._parameters.get(attr) is not None:
        return mod, attr, "param"
    if mod._buffers.get(attr) is not None:
        return mod, attr, "buffer"
    raise ThinningError(f"recipe names '{name}', but module '{prefix or type(model).__name__}' "
                        f"has no parameter or buffer '{attr}'")


def _shape_after(shape: List[int], ops: Sequence[Mapping], name: str) -> List[int]:
    shape = list(shape)
    for o in ops:
        d = o.get("dim")
        if not isinstance(d, int) or not 0 <= d < len(shape):
            raise ThinningError(f"recipe op on '{name}' has a bad dim {d!r} for shape {shape}")
        idx = o.get("index")
        if "groups" in o:
            g = o["groups"]
            if d != 1 or not isinstance(g, int) or g < 1 or shape[0] % g or \
                    not isinstance(idx, list) or len(idx) != g:
                raise ThinningError(f"recipe op on '{name}': bad grouped selection for shape {shape}")
            sizes = {len(i) for i in idx}
            if len(sizes) != 1 or any(not 0 <= j < shape[1] for i in idx for j in i):
                raise ThinningError(f"recipe op on '{name}': grouped selection out of range or "
                                    f"unbalanced for shape {shape}")
            shape[1] = sizes.pop()
        else:
            if not isinstance(idx, list) or (idx and (
                    not all(type(j) is int for j in idx) or min(idx) < 0 or max(idx) >= shape[d])):
                raise ThinningError(f"recipe op on '{name}': index out of range for dim {d} of "
                                    f"shape {shape}")
            shape[d] = len(idx)
    return shape


def apply_ops(t: torch.Tensor, ops: Sequence[Mapping]) -> torch.Tensor:
    """The slices of ``t`` a tensor entry's ops select (a new tensor)."""
    for o in ops:
        d, idx = o["dim"], o["index"]
        if "groups" in o:
            g = o["groups"]
            per = t.shape[0] // g
            t = torch.cat([t[j * per:(j + 1) * per].index_select(
                d, torch.tensor(idx[j], dtype=torch.long, device=t.device)) for j in range(g)], 0)
        else:
            t = t.index_select(d, torch.tensor(idx, dtype=torch.long, device=t.device))
    return t.contiguous()


def _check_recipe(model: nn.Module, recipe: Mapping, shapes: Dict[str, List[int]], where: str) -> None:
    """Validate one recipe against the (simulated) current shapes; updates ``shapes``."""
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("tensors"), Mapping) or \
            not isinstance(recipe.get("modules"), Mapping) or \
            not isinstance(recipe.get("selections", {}), Mapping):
        raise ThinningError(f"{where}: not a thinning recipe (expected a dict with 'tensors' and "
                            f"'modules'); got {type(recipe).__name__}")
    if recipe.get("version", 1) not in KNOWN_VERSIONS:
        raise ThinningError(f"{where}: recipe version {recipe.get('version')!r} is not one this "
                            f"library knows ({', '.join(map(str, KNOWN_VERSIONS))})")
    for name, entry in recipe["tensors"].items():
        mod, attr, _ = _resolve(model, name)
        current = shapes.get(name)
        if current is None:
            current = list(getattr(mod, attr).shape)
        if list(entry.get("shape", [])) != current:
            raise ThinningError(f"{where}: '{name}' has shape {current}, the recipe expects "
                                f"{list(entry.get('shape', []))} (a different architecture, or "
                                f"a model that was already thinned?)")
        shapes[name] = _shape_after(current, entry.get("ops", []), name)
    for mname, attrs in recipe["modules"].items():
        try:
            mod = model.get_submodule(mname) if mname else model
        except AttributeError:
            raise ThinningError(f"{where}: the model has no module '{mname}'") from None
        for attr, value in attrs.items():
            if not hasattr(mod, attr) or not isinstance(value, int):
                raise ThinningError(f"{where}: module '{mname}' ({type(mod).__name__}) has no "
                                    f"attribute '{attr}' to set to {value!r}")
    for mname, spec in recipe.get("selections", {}).items():
        _check_selection(model, mname, spec, shapes, where)


def _check_selection(model: nn.Module, mname: str, spec, shapes: Dict[str, List[int]],
                     where: str) -> None:
    """A selection entry names a batch norm and reads one valid input channel per its channel."""
    try:
        mod = model.get_submodule(mname)
    except AttributeError:
        raise ThinningError(f"{where}: the model has no module '{mname}'") from None
    if not can_select(mod):
        raise ThinningError(f"{where}: module '{mname}' ({type(mod).__name__}) cannot select "
                            f"channels (a BatchNorm1d/2d/3d can)")
    spec = spec if isinstance(spec, Mapping) else {}
    n, idx = spec.get("in_channels"), spec.get("index")
    if type(n) is not int or n < 1 or not isinstance(idx, list) or \
            not all(type(j) is int and 0 <= j < n for j in idx):
        raise ThinningError(f"{where}: bad channel selection for '{mname}' (expected in_channels "
                            f"> 0 and an index list within it)")
    features = next((shapes[f"{mname}.{t}"][0] if f"{mname}.{t}" in shapes
                     else getattr(mod, t).shape[0] for t in ("running_mean", "weight")
                     if getattr(mod, t, None) is not None), len(idx))
    if len(idx) != features:
        raise ThinningError(f"{where}: the selection of '{mname}' reads {len(idx)} channels, its "
                            f"batch norm will have {features}")


def _check_state(model: nn.Module, recipes: Sequence[Mapping], optimizer, store) -> None:
    """Optimizer state and masks must have their parameter's shape, so they can be sliced too."""
    names = {n for r in recipes for n in r["tensors"]}
    params = dict(model.named_parameters())
    if optimizer is not None:
        for name in names:
            p = params.get(name)
            state = optimizer.state.get(p) if p is not None else None
            for key, value in (state or {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise ThinningError(
                        f"cannot thin the state of {type(optimizer).__name__}: its '{key}' for "
                        f"'{name}' has shape {tuple(value.shape)}, not the parameter's "
                        f"{tuple(p.shape)}, so it cannot be sliced with it. Nothing was changed.")
    if store is not None:
        for name in names:
            mask = store.masks.get(name)
            if mask is not None and name in params and mask.shape != params[name].shape:
                raise ThinningError(f"the mask of '{name}' has shape {tuple(mask.shape)}, the "
                                    f"parameter {tuple(params[name].shape)}. Nothing was changed.")


def _store_of(store):
    """A MaskStore from a MaskStore or anything holding one as ``.store`` (a scheduler)."""
    if store is None or hasattr(store, "rebind"):
        return store
    inner = getattr(store, "store", None)
    if inner is None or not hasattr(inner, "rebind"):
        raise TypeError(f"store must be a MaskStore or a CompressionScheduler, not "
                        f"{type(store).__name__}")
    return inner


@torch.no_grad()
def _apply_one(model: nn.Module, recipe: Mapping, optimizer, store) -> None:
    for name, entry in recipe["tensors"].items():
        ops = entry["ops"]
        mod, attr, kind = _resolve(model, name)
        t = getattr(mod, attr)
        if kind == "param":
            old_shape = t.shape
            grad = t.grad
            t.grad = None
            _set_data(t, apply_ops(t.data, ops))
            if grad is not None:
                t.grad = apply_ops(grad, ops)
            if optimizer is not None and t in optimizer.state:
                state = optimizer.state[t]
                for key, value in list(state.items()):
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape == old_shape:
                        state[key] = apply_ops(value, ops)
            if store is not None and name in store.masks:
                store.masks[name] = apply_ops(store.masks[name], ops)
        else:
            t.data = apply_ops(t.data, ops)
    for mname, attrs in recipe["modules"].items():
        mod = model.get_submodule(mname) if mname else model
        for attr, value in attrs.items():
            setattr(mod, attr, int(value))
    for mname, spec in recipe.get("selections", {}).items():
        set_selection(model.get_submodule(mname), spec["in_channels"], spec["index"])


def _set_data(param: torch.Tensor, new: torch.Tensor) -> None:
    """``param.data = new`` for a new shape, also while an old autograd graph is alive.

    Autograd caches a leaf's gradient accumulator, with the leaf's shape, for as long as a graph
    using it lives (e.g. last step's loss held by the training loop); the next backward would then
    expect the old shape. Assigning data of another dtype first makes autograd drop that cache.
    """
    other = torch.float64 if param.dtype != torch.float64 else torch.float32
    param.data = torch.empty(0, dtype=other, device=param.device)
    param.data = new


def _record(model: nn.Module, recipe: Mapping) -> None:
    recipes = getattr(model, "thinning_recipes", None)
    if not isinstance(recipes, list):
        recipes = []
        model.thinning_recipes = recipes
    recipes.append(copy_recipe(recipe))


def copy_recipe(recipe: Mapping) -> dict:
    """A copy sharing nothing with ``recipe`` (faster than deepcopy on long index lists)."""
    def op(o):
        idx = o["index"]
        idx = [list(i) for i in idx] if "groups" in o else list(idx)
        return {**{k: v for k, v in o.items() if k != "index"}, "index": idx}
    out = {**{k: v for k, v in recipe.items() if k not in ("tensors", "modules", "selections")},
           "modules": {m: dict(a) for m, a in recipe["modules"].items()},
           "tensors": {n: {"shape": list(e["shape"]), "ops": [op(o) for o in e["ops"]]}
                       for n, e in recipe["tensors"].items()}}
    if "selections" in recipe:
        out["selections"] = {m: {**s, "index": list(s["index"])}
                             for m, s in recipe["selections"].items()}
    return out


def apply_recipe(model: nn.Module, recipe: Mapping, *, optimizer=None, store=None) -> None:
    """Apply one recipe to ``model`` (unwrapped), its ``optimizer`` state and ``store``'s masks.

    Checks everything first; records the recipe in ``unwrap(model).thinning_recipes``.
    """
    replay(model, [recipe], optimizer=optimizer, store=store)


def replay(model: nn.Module, recipes: Iterable[Mapping], optimizer=None, *, store=None) -> nn.Module:
    """Re-apply ``recipes`` in order, e.g. on a freshly built dense model before loading weights.

    All recipes are checked against the model before any is applied. Each is appended to
    ``unwrap(model).thinning_recipes`` so a later checkpoint carries them again. Returns the model.
    """
    target = unwrap(model)
    recipes = list(recipes or [])
    store = _store_of(store)
    shapes: Dict[str, List[int]] = {}
    for i, recipe in enumerate(recipes):
        _check_recipe(target, recipe, shapes, f"thinning recipe {i + 1} of {len(recipes)}")
    _check_state(target, recipes, optimizer, store)
    for recipe in recipes:
        _apply_one(target, recipe, optimizer, store)
        _record(target, recipe)
    if store is not None:
        store.rebind(target)
    return model
