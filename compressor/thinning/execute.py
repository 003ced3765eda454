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

from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ThinningError
from ..masks import unwrap
from .mha import make_thin
from .recipe import Recipe, Selection, SliceOp, as_recipe
from .record import record_recipe
from .rms import apply_rescale, check_rescale
from .selection import can_select, set_selection
from .shuffle import can_shuffle, set_shuffle


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


def shape_after(shape: List[int], ops: Sequence[SliceOp], name: str) -> List[int]:
    """The shape ``ops`` leave; a ``ThinningError`` when they do not fit ``shape``."""
    shape = list(shape)
    for o in ops:
        d, idx = o.dim, o.index
        if not 0 <= d < len(shape):
            raise ThinningError(f"recipe op on '{name}' has a bad dim {d!r} for shape {shape}")
        if o.groups is not None:
            g = o.groups
            if d != 1 or shape[0] % g:
                raise ThinningError(f"recipe op on '{name}': bad grouped selection for shape {shape}")
            sizes = {len(i) for i in idx}
            if len(sizes) != 1 or any(not 0 <= j < shape[1] for i in idx for j in i):
                raise ThinningError(f"recipe op on '{name}': grouped selection out of range or "
                                    f"unbalanced for shape {shape}")
            shape[1] = sizes.pop()
        else:
            if idx and max(idx) >= shape[d]:
                raise ThinningError(f"recipe op on '{name}': index out of range for dim {d} of "
                                    f"shape {shape}")
            shape[d] = len(idx)
    return shape


def _slice_op(o: Union[SliceOp, Mapping]) -> SliceOp:
    return o if isinstance(o, SliceOp) else SliceOp(o["dim"], o["index"], o.get("groups"))


def apply_ops(t: torch.Tensor, ops: Sequence[Union[SliceOp, Mapping]]) -> torch.Tensor:
    """The slices of ``t`` a tensor change's ops (typed, or their plain data) select (a new tensor)."""
    for o in map(_slice_op, ops):
        d, idx = o.dim, o.index
        if o.groups is not None:
            g = o.groups
            per = t.shape[0] // g
            t = torch.cat([t[j * per:(j + 1) * per].index_select(
                d, torch.tensor(idx[j], dtype=torch.long, device=t.device)) for j in range(g)], 0)
        else:
            t = t.index_select(d, torch.tensor(idx, dtype=torch.long, device=t.device))
    return t.contiguous()


def _check_recipe(model: nn.Module, recipe: Recipe, shapes: Dict[str, List[int]], where: str) -> None:
    """Validate one recipe against the (simulated) current shapes; updates ``shapes``."""
    for name, entry in recipe.tensors.items():
        mod, attr, _ = _resolve(model, name)
        current = shapes.get(name)
        if current is None:
            current = list(getattr(mod, attr).shape)
        if list(entry.shape) != current:
            raise ThinningError(f"{where}: '{name}' has shape {current}, the recipe expects "
                                f"{list(entry.shape)} (a different architecture, or "
                                f"a model that was already thinned?)")
        shapes[name] = shape_after(current, entry.ops, name)
    for mname, change in recipe.modules.items():
        try:
            mod = model.get_submodule(mname) if mname else model
        except AttributeError:
            raise ThinningError(f"{where}: the model has no module '{mname}'") from None
        for attr, value in change.attrs.items():
            if not hasattr(mod, attr):
                raise ThinningError(f"{where}: module '{mname}' ({type(mod).__name__}) has no "
                                    f"attribute '{attr}' to set to {value!r}")
    for mname, spec in (recipe.selections or {}).items():
        _check_selection(model, mname, spec, shapes, where)
    for mname, spec in (recipe.shuffles or {}).items():
        _check_shuffle(model, mname, spec, where)
    for mname, spec in (recipe.rms_norms or {}).items():
        check_rescale(model, mname, spec, shapes, where)


def _submodule(model: nn.Module, mname: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(mname)
    except AttributeError:
        raise ThinningError(f"{where}: the model has no module '{mname}'") from None


def _check_shuffle(model: nn.Module, mname: str, spec, where: str) -> None:
    """A shuffle entry names a shuffle unit; a unit that splits its input gets two sizes."""
    mod = _submodule(model, mname, where)
    if not can_shuffle(mod):
        raise ThinningError(f"{where}: module '{mname}' ({type(mod).__name__}) is not a shuffle "
                            f"unit (torchvision's ShuffleNet-V2 InvertedResidual is)")
    splits = getattr(mod, "stride", None) == 1
    if splits != (spec.split is not None and len(spec.split) == 2):
        raise ThinningError(f"{where}: the shuffle of '{mname}' must have "
                            f"{'two split sizes' if splits else 'no split'} (stride "
                            f"{getattr(mod, 'stride', None)})")


def _check_selection(model: nn.Module, mname: str, spec: Selection, shapes: Dict[str, List[int]],
                     where: str) -> None:
    """A selection names a batch norm and reads one input channel per its channel."""
    mod = _submodule(model, mname, where)
    if not can_select(mod):
        raise ThinningError(f"{where}: module '{mname}' ({type(mod).__name__}) cannot select "
                            f"channels (a BatchNorm1d/2d/3d can)")
    idx = spec.index
    features = next((shapes[f"{mname}.{t}"][0] if f"{mname}.{t}" in shapes
                     else getattr(mod, t).shape[0] for t in ("running_mean", "weight")
                     if getattr(mod, t, None) is not None), len(idx))
    if len(idx) != features:
        raise ThinningError(f"{where}: the selection of '{mname}' reads {len(idx)} channels, its "
                            f"batch norm will have {features}")


def _check_state(model: nn.Module, recipes: Sequence[Recipe], optimizer, store) -> None:
    """Optimizer state and masks must have their parameter's shape, so they can be sliced too."""
    names = {n for r in recipes for n in r.tensors}
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
def _apply_one(model: nn.Module, recipe: Recipe, optimizer, store) -> None:
    # attention whose forward ties its heads' width to its input width (nn.MultiheadAttention,
    # Swin, MaxViT) becomes its thin subclass, in place, before its tensors change (thinning.mha)
    for mname in {p for m in recipe.modules for p in _prefixes(m)}:
        make_thin(model.get_submodule(mname) if mname else model)
    for name, entry in recipe.tensors.items():
        ops = entry.ops
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
    for mname, change in recipe.modules.items():
        mod = model.get_submodule(mname) if mname else model
        for attr, value in change.attrs.items():   # a LayerNorm's width is a tuple
            setattr(mod, attr, (int(value),) if attr == "normalized_shape" else int(value))
    for mname, spec in (recipe.selections or {}).items():
        set_selection(model.get_submodule(mname), spec.in_channels, spec.index)
    for mname, spec in (recipe.shuffles or {}).items():   # a ShuffleNet unit (thinning.shuffle)
        set_shuffle(model.get_submodule(mname), spec.split, spec.index)
    for mname, spec in (recipe.rms_norms or {}).items():  # after its weight was sliced
        apply_rescale(model, mname, spec)


def _prefixes(name: str) -> List[str]:
    """``a.b.c`` -> ``['a.b.c', 'a.b', 'a']``: a module and the modules holding it."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _set_data(param: torch.Tensor, new: torch.Tensor) -> None:
    """``param.data = new`` for a new shape, also while an old autograd graph is alive.

    Autograd caches a leaf's gradient accumulator, with the leaf's shape, for as long as a graph
    using it lives (e.g. last step's loss held by the training loop); the next backward would then
    expect the old shape. Assigning data of another dtype first makes autograd drop that cache.
    """
    other = torch.float64 if param.dtype != torch.float64 else torch.float32
    param.data = torch.empty(0, dtype=other, device=param.device)
    param.data = new


def apply_recipe(model: nn.Module, recipe: Union[Recipe, Mapping], *, optimizer=None,
                 store=None) -> None:
    """Apply one recipe (typed, or its plain data) to ``model`` (unwrapped), its ``optimizer``
    state and ``store``'s masks. Checks everything first; records the recipe (``recipes_of``).
    """
    replay(model, [recipe], optimizer=optimizer, store=store)


def replay(model: nn.Module, recipes: Iterable[Union[Recipe, Mapping]], optimizer=None, *,
           store=None) -> nn.Module:
    """Re-apply ``recipes`` in order, e.g. on a freshly built dense model before loading weights.

    Recipes are ``Recipe``s or their plain data (a checkpoint's ``thinning_recipes``). All are
    checked against the model before any is applied. Each is recorded for the model
    (``recipes_of``), so a later checkpoint carries them again. Returns the model.
    """
    target = unwrap(model)
    raw = list(recipes or [])
    n = len(raw)
    recipes = [as_recipe(r, f"thinning recipe {i + 1} of {n}") for i, r in enumerate(raw)]
    store = _store_of(store)
    shapes: Dict[str, List[int]] = {}
    for i, recipe in enumerate(recipes):
        _check_recipe(target, recipe, shapes, f"thinning recipe {i + 1} of {n}")
    _check_state(target, recipes, optimizer, store)
    for recipe in recipes:
        _apply_one(target, recipe, optimizer, store)
        record_recipe(target, recipe)
    if store is not None:
        store.rebind(target)
    return model
