"""The thinning recipe as typed data: what one thinning changes, and its plain-data form.

A ``Recipe`` lists, per tensor (parameter or buffer, by full name), the shape it must have and the
index selections to apply (``TensorChange`` of ``SliceOp``); per module, the integer attributes
to set (``ModuleChange``); and per batch norm that reads only some input channels, which ones
(``Selection``). ``to_dict()`` gives the plain data checkpoints hold (dicts, lists, ints and
strings, in the layout and key order this library has always written) and ``from_dict()`` reads
it back, refusing a malformed recipe (a damaged or hostile checkpoint) with a one-line
``RecipeError``. Whether a recipe fits a given model is checked where it is applied (``execute``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from ..errors import ThinningError
from .rms import NormRescale, parse_rescale

RECIPE_VERSION = 1             # tensors and module attributes
SELECTION_RECIPE_VERSION = 2   # plus "selections"; older readers would ignore them
SHUFFLE_RECIPE_VERSION = 3     # plus "shuffles" (thin shuffle units); older readers would too
KNOWN_VERSIONS = (RECIPE_VERSION, SELECTION_RECIPE_VERSION, SHUFFLE_RECIPE_VERSION)
_KEYS = ("version", "kind", "modules", "tensors", "selections", "rms_norms", "shuffles")


class RecipeError(ThinningError):
    """A thinning recipe is malformed (not the layout ``Recipe.to_dict`` writes)."""


@dataclass
class SliceOp:
    """``index_select(dim, index)``; with ``groups``, the tensor's rows are cut into ``groups``
    equal blocks and block ``j`` keeps positions ``index[j]`` along ``dim``."""
    dim: int
    index: Union[List[int], List[List[int]]]
    groups: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        if self.groups is None:
            return {"dim": self.dim, "index": list(self.index)}
        return {"dim": self.dim, "groups": self.groups, "index": [list(i) for i in self.index]}


@dataclass
class TensorChange:
    """The shape a tensor must have before, and the selections applied to it in order."""
    shape: List[int]
    ops: List[SliceOp] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"shape": list(self.shape), "ops": [o.to_dict() for o in self.ops]}


@dataclass
class ModuleChange:
    """Integer attributes to set on one module (``out_channels``, ``num_features``, ...)."""
    attrs: Dict[str, int] = field(default_factory=dict)


@dataclass
class Selection:
    """A batch norm reads channels ``index`` of its ``in_channels``-channel input."""
    in_channels: int
    index: List[int]

    def to_dict(self) -> Dict[str, Any]:
        return {"in_channels": self.in_channels, "index": list(self.index)}


@dataclass
class ShuffleChange:
    """A shuffle unit made thin (``thinning.shuffle``): it splits its input into parts of
    ``split`` channels (None: a unit that does not split), and its output channel ``p`` is
    channel ``index[p]`` of its concatenated branches."""
    split: Optional[List[int]]
    index: List[int]

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {} if self.split is None else {"split": list(self.split)}
        out["index"] = list(self.index)
        return out


@dataclass
class Recipe:
    """One thinning: tensor selections, module attributes, batch-norm channel selections.

    ``kind`` is the thinning function (None for recipes mapped from Distiller's checkpoints);
    ``version`` is 2 exactly when the recipe was written with ``selections``.
    """
    kind: Optional[str] = None
    modules: Dict[str, ModuleChange] = field(default_factory=dict)
    tensors: Dict[str, TensorChange] = field(default_factory=dict)
    selections: Optional[Dict[str, Selection]] = None
    version: int = RECIPE_VERSION
    shuffles: Optional[Dict[str, ShuffleChange]] = None
    #: RMS norms that lose channels: their weight and epsilon rescaled (``thinning.rms``)
    rms_norms: Optional[Dict[str, NormRescale]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The plain data of this recipe, in the layout and key order checkpoints hold."""
        out: Dict[str, Any] = {"version": self.version}
        if self.kind is not None:
            out["kind"] = self.kind
        out["modules"] = {m: dict(c.attrs) for m, c in self.modules.items()}
        out["tensors"] = {n: t.to_dict() for n, t in self.tensors.items()}
        if self.selections is not None:
            out["selections"] = {m: s.to_dict() for m, s in self.selections.items()}
        if self.shuffles is not None:
            out["shuffles"] = {m: s.to_dict() for m, s in self.shuffles.items()}
        if self.rms_norms is not None:
            out["rms_norms"] = {m: s.to_dict() for m, s in self.rms_norms.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "thinning recipe") -> "Recipe":
        """Read a recipe's plain data; ``RecipeError`` (one line, prefixed ``where``) if malformed."""
        if isinstance(data, Recipe):
            return data
        if not isinstance(data, Mapping) or not isinstance(data.get("tensors"), Mapping) or \
                not isinstance(data.get("modules"), Mapping) or \
                not isinstance(data.get("selections", {}), Mapping) or \
                not isinstance(data.get("shuffles", {}), Mapping) or \
                not isinstance(data.get("rms_norms", {}), Mapping):
            raise RecipeError(f"{where}: not a thinning recipe (expected a dict with 'tensors' and "
                              f"'modules'); got {type(data).__name__}")
        version = data.get("version", RECIPE_VERSION)
        if type(version) is not int or version not in KNOWN_VERSIONS:
            raise RecipeError(f"{where}: recipe version {version!r} is not one this library knows "
                              f"({', '.join(map(str, KNOWN_VERSIONS))})")
        unknown = [str(k) for k in data if k not in _KEYS]
        if unknown:
            raise RecipeError(f"{where}: unknown recipe entries {', '.join(unknown)}; valid: "
                              f"{', '.join(_KEYS)}")
        kind = data.get("kind")
        if kind is not None and not isinstance(kind, str):
            raise RecipeError(f"{where}: 'kind' must be a thinning function name, got {kind!r}")
        selections = data.get("selections")
        shuffles = data.get("shuffles")
        rms = data.get("rms_norms")
        return cls(kind=kind,
                   modules={_name(m, where): _module(m, a, where) for m, a in data["modules"].items()},
                   tensors={_name(n, where): _tensor(n, e, where) for n, e in data["tensors"].items()},
                   selections=None if selections is None else
                   {_name(m, where): _selection(m, s, where) for m, s in selections.items()},
                   version=version,
                   shuffles=None if shuffles is None else
                   {_name(m, where): _shuffle(m, s, where) for m, s in shuffles.items()},
                   rms_norms=None if rms is None else
                   {_name(m, where): parse_rescale(m, s, where, RecipeError)
                    for m, s in rms.items()})


def as_recipe(recipe: Union[Recipe, Mapping], where: str = "thinning recipe") -> Recipe:
    """``recipe`` itself, or the Recipe its plain data describes."""
    return recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe, where)


def _is_int(x: Any) -> bool:
    return type(x) is int   # not bool, not float: checkpoints store plain ints


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(_is_int(i) and i >= 0 for i in x)


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise RecipeError(f"{where}: names must be strings, got {name!r}")
    return name


def _module(name: str, attrs: Any, where: str) -> ModuleChange:
    if not isinstance(attrs, Mapping) or not all(isinstance(a, str) and _is_int(v)
                                                 for a, v in attrs.items()):
        raise RecipeError(f"{where}: module '{name}' must map attribute names to integers, "
                          f"got {attrs!r}")
    return ModuleChange(dict(attrs))


def _tensor(name: str, entry: Any, where: str) -> TensorChange:
    if not isinstance(entry, Mapping) or not _int_list(entry.get("shape")) or \
            not isinstance(entry.get("ops"), list):
        raise RecipeError(f"{where}: tensor '{name}' must have 'shape' (a list of sizes) and 'ops' "
                          f"(a list of selections)")
    return TensorChange(list(entry["shape"]), [_op(name, o, where) for o in entry["ops"]])


def _op(name: str, o: Any, where: str) -> SliceOp:
    if not isinstance(o, Mapping) or not _is_int(o.get("dim")) or o["dim"] < 0:
        raise RecipeError(f"recipe op on '{name}' ({where}) has a bad dim "
                          f"{o.get('dim') if isinstance(o, Mapping) else o!r}")
    if "groups" in o:
        g, idx = o["groups"], o.get("index")
        if not _is_int(g) or g < 1 or not isinstance(idx, list) or len(idx) != g or \
                not all(_int_list(i) for i in idx):
            raise RecipeError(f"recipe op on '{name}' ({where}): bad grouped selection (expected "
                              f"'groups' >= 1 and one index list per group)")
        return SliceOp(o["dim"], [list(i) for i in idx], g)
    if not _int_list(o.get("index")):
        raise RecipeError(f"recipe op on '{name}' ({where}): 'index' must be a list of "
                          f"non-negative integers")
    return SliceOp(o["dim"], list(o["index"]))


def _selection(name: str, spec: Any, where: str) -> Selection:
    n = spec.get("in_channels") if isinstance(spec, Mapping) else None
    idx = spec.get("index") if isinstance(spec, Mapping) else None
    if not _is_int(n) or n < 1 or not _int_list(idx) or any(j >= n for j in idx):
        raise RecipeError(f"{where}: bad channel selection for '{name}' (expected in_channels "
                          f"> 0 and an index list within it)")
    return Selection(n, list(idx))


def _shuffle(name: str, spec: Any, where: str) -> ShuffleChange:
    split = spec.get("split") if isinstance(spec, Mapping) else None
    idx = spec.get("index") if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping) or any(k not in ("split", "index") for k in spec) or \
            not _int_list(idx) or sorted(idx) != list(range(len(idx))) or \
            (split is not None and (not _int_list(split) or sum(split) < 1)):
        raise RecipeError(f"{where}: bad shuffle for '{name}' (expected 'index', a permutation "
                          f"of 0..n-1, and optionally 'split', a list of part sizes)")
    return ShuffleChange(None if split is None else list(split), list(idx))
