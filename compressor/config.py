"""YAML text -> a plain, validated schedule description, every error located by file, line and key.

Loading is safe: a ``yaml.SafeLoader`` subclass that builds ordinary dicts and lists which remember
the line of every key and item, so later stages (the builder) can point at the exact place of a
mistake. Nothing here knows the model; name matching and class construction happen in ``builder``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import yaml

from .errors import ComponentArgError, ScheduleError, listing, short, suggest
from .lr_schedulers import check_args as check_lr_args, steps_allowed
from .policy_options import DEFAULT_OPTIONS, OPTION_TYPES, PolicyOptions, check_option
from .registry import SECTIONS

POLICY_KINDS = {"pruner": "pruners", "regularizer": "regularizers",
                "lr_scheduler": "lr_schedulers", "extension": "extensions", "quantizer": "quantizers"}
TOP_LEVEL_KEYS = ("version", "input_shape", "pruners", "regularizers", "quantizers", "lr_schedulers",
                  "extensions", "policies")
SCHEDULING_KEYS = ("epochs", "starting_epoch", "ending_epoch", "frequency")
PRUNING_POLICY_ARGS = OPTION_TYPES   # every PolicyOptions field
REGULARIZATION_POLICY_ARGS = {"keep_mask": bool}
# arguments that hold weight names or patterns (lists, or dicts keyed by them); as the builder's
NAME_ARGS = ("weights", "thresholds", "sensitivities", "levels", "reg_regims")
EXAMPLE_CLASS = {"pruners": "AutomatedGradualPruner", "regularizers": "L1Regularizer",
                 "lr_schedulers": "StepLR", "extensions": "FilterRemover",
                 "quantizers": "QuantAwareTrainRangeLinearQuantizer"}


class LDict(dict):
    """A dict that remembers the line of each key (1-based) and of itself."""
    line: Optional[int] = None
    key_lines: Dict[Any, int]


class LList(list):
    """A list that remembers the line of each item (1-based) and of itself."""
    line: Optional[int] = None
    item_lines: List[int]


#: Bounds checked before anything is built, so a small hostile file cannot exhaust memory: the
#: file's size, how deep collections nest, how many nodes the document has once every alias is
#: expanded (a "billion laughs" file is 600 bytes), the largest epoch, and an error's length.
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 100
MAX_NODES = 100_000
MAX_EPOCH = 100_000
MAX_MESSAGE = 300


def bounded(message: str) -> str:
    """``message`` on one line of at most ``MAX_MESSAGE`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that records line numbers; rejects duplicate keys (PyYAML silently keeps the last)
    and documents beyond the bounds above, while composing, before any object is built."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes: Dict[int, int] = {}   # id(node) -> nodes in it with aliases expanded

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"collections nest deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._sizes.get(id(node))
        if size is None:   # an alias returns its anchor's node, already counted
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            size = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            self._sizes[id(node)] = size
        if size > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"the document expands to more than {MAX_NODES} nodes once its "
                f"aliases (*name) are expanded", node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        # A merge key (``<<: *anchor``) brings the anchor's keys in first; the mapping's own keys
        # may then override them, as YAML and Distiller's loader allow. Only a key written twice
        # in the mapping itself is a duplicate.
        own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        self.flatten_mapping(node)
        out = LDict()
        out.line, out.key_lines = node.start_mark.line + 1, {}
        merged = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, (yaml.SequenceNode, yaml.MappingNode)):   # unhashable in Python
                what = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise yaml.constructor.ConstructorError(
                    None, None, f"a {what} cannot be a mapping key (a key is a name or a number; "
                    f"'? [a, b]' and '? {{a: 1}}' are not)", key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if id(key_node) not in own:
                merged.add(key)
            elif key in merged:
                merged.discard(key)   # overridden: from here on it is the mapping's own key
            elif key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {out.key_lines[key]})",
                    key_node.start_mark)
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out

    def construct_sequence(self, node, deep=False):
        out = LList(self.construct_object(child, deep=True) for child in node.value)
        out.line, out.item_lines = node.start_mark.line + 1, [c.start_mark.line + 1 for c in node.value]
        return out


_LocatingLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                _LocatingLoader.construct_mapping)
_LocatingLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
                                _LocatingLoader.construct_sequence)


def line_of(container: Any, key: Any = None) -> Optional[int]:
    """The line of ``container[key]`` (or of the container itself), when the YAML recorded it."""
    if key is not None:
        if isinstance(container, LDict):
            return container.key_lines.get(key, container.line)
        if isinstance(container, LList) and isinstance(key, int) and key < len(container.item_lines):
            return container.item_lines[key]
    return getattr(container, "line", None)


@dataclass
class Component:
    """One named entry of pruners/regularizers/lr_schedulers/extensions."""
    section: str
    name: str
    class_name: str
    args: Dict[str, Any]
    raw: Any = None            # the mapping as parsed, to locate argument errors
    line: Optional[int] = None  # the line of the instance name

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


@dataclass
class PolicySpec:
    """One entry of ``policies``: which component, when, and with which policy args."""
    index: int
    kind: str                  # pruner | regularizer | lr_scheduler | extension
    instance_name: str
    epochs: Optional[List[int]] = None
    starting_epoch: Optional[int] = None
    ending_epoch: Optional[int] = None
    frequency: int = 1
    args: Dict[str, Any] = field(default_factory=dict)   # as written in the schedule
    raw: Any = None
    #: ``args`` validated (pruner and regularizer policies); ``levels`` keys are not yet resolved
    #: against a model's parameter names (the builder does that).
    options: PolicyOptions = DEFAULT_OPTIONS

    @property
    def key(self) -> str:
        return f"policies[{self.index}]"

    def firing_epochs(self) -> List[int]:
        """The epochs at which this policy acts, in order (``ending_epoch`` is exclusive)."""
        if self.epochs is not None:
            return list(self.epochs)
        return list(range(self.starting_epoch, self.ending_epoch, self.frequency))


@dataclass
class ScheduleConfig:
    """A parsed and validated schedule, independent of any model."""
    path: Optional[str]
    version: Any
    components: Dict[str, Dict[str, Component]]
    policies: List[PolicySpec]
    raw: Any = None
    #: ``input_shape``: the shape of one input sample (no batch dimension), for every component
    #: that follows the model's graph (filter coupling, thinning); None when the schedule has none.
    input_shape: Optional[Tuple[int, ...]] = None

    def error(self, message: str, container: Any = None, key: Any = None,
              keypath: Optional[str] = None) -> ScheduleError:
        return ScheduleError(bounded(message), self.path, line_of(container, key) if container is not None
                             else None, keypath)


def load(path: Union[str, os.PathLike]) -> ScheduleConfig:
    """Read and validate a YAML schedule file."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ScheduleError("schedule file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleError(f"cannot read schedule file: {e}", path) from None
    return loads(text, path)


def loads(text: str, path: Optional[str] = "<string>") -> ScheduleConfig:
    """Parse and validate YAML text; ``path`` is only used in messages."""
    if len(text) > MAX_FILE_BYTES:
        raise ScheduleError(f"the schedule is larger than {MAX_FILE_BYTES} characters; a schedule "
                            f"is a short file of components and policies", path)
    try:
        data = yaml.load(text, Loader=_LocatingLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ScheduleError(bounded(f"YAML syntax error: {problem}"), path, line) from None
    except yaml.YAMLError as e:
        raise ScheduleError(bounded(f"YAML syntax error: {e}"), path) from None
    except RecursionError:   # a bound above should stop this first; never a traceback
        raise ScheduleError(f"the schedule nests too deeply (more than {MAX_DEPTH} levels)",
                            path) from None
    return from_dict(data, path)


def from_dict(data: Any, path: Optional[str] = "<dict>") -> ScheduleConfig:
    """Validate an already-parsed schedule (a mapping like the YAML's)."""
    def err(message, container=None, key=None, keypath=None):
        return ScheduleError(bounded(message), path, line_of(container, key) if container is not None
                             else None, keypath)

    if data is None:
        raise err("the schedule is empty; it needs at least a 'policies' list")
    if not isinstance(data, Mapping):
        raise err(f"the schedule must be a mapping of {', '.join(TOP_LEVEL_KEYS)}; "
                  f"got {type(data).__name__}", data)
    bad = _non_finite(data, "", set())
    if bad is not None:
        container, key, keypath, value = bad
        raise err(f"must be a finite number; got {value} (NaN and infinity are refused "
                  f"everywhere in a schedule)", container, key, keypath)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = suggest(key, TOP_LEVEL_KEYS)
            raise err(f"unknown top-level key{hint}; valid: {', '.join(TOP_LEVEL_KEYS)}",
                      data, key, str(key))

    components: Dict[str, Dict[str, Component]] = {}
    for section, registry in SECTIONS.items():
        entries = data.get(section) or {}
        components[section] = {}
        if not isinstance(entries, Mapping):
            raise err(f"must map instance names to components ({{name: {{class: ..., ...}}}}); "
                      f"got {type(entries).__name__}", data, section, section)
        for name, spec in entries.items():
            keypath = f"{section}.{name}"
            if not isinstance(spec, Mapping):
                raise err("a component must be a mapping with a 'class' key and its parameters",
                          entries, name, keypath)
            if "class" not in spec:
                raise err(f"missing 'class' (the registered class to build, e.g. {EXAMPLE_CLASS[section]})",
                          entries, name, keypath)
            class_name = spec["class"]
            if not isinstance(class_name, str) or class_name not in registry:
                raise err(registry.unknown_message(class_name), spec, "class", f"{keypath}.class")
            args = {k: v for k, v in spec.items() if k != "class"}
            for arg in NAME_ARGS:
                if arg in spec:
                    _check_patterns(spec[arg], spec, arg, f"{keypath}.{arg}", err)
            if section == "lr_schedulers":
                try:
                    check_lr_args(class_name, args)
                except ComponentArgError as e:
                    top = e.key.split("[", 1)[0]
                    raise err(e.reason, spec, top, f"{keypath}.{e.key}") from None
            components[section][str(name)] = Component(section, str(name), class_name, args, spec,
                                                        line_of(entries, name))

    if "policies" not in data:
        raise err("missing 'policies': a list saying when each component acts", data)
    raw_policies = data["policies"]
    if raw_policies is None:
        raw_policies = []
    if not isinstance(raw_policies, list):
        raise err(f"'policies' must be a list; got {type(raw_policies).__name__}",
                  data, "policies", "policies")
    if len(components["quantizers"]) > 1:
        raise err(f"one quantizer per schedule (as in Distiller); found "
                  f"{len(components['quantizers'])}: {', '.join(components['quantizers'])}",
                  data, "quantizers", "quantizers")
    policies = [_policy(i, p, raw_policies, components, err) for i, p in enumerate(raw_policies)]
    for spec in policies:
        if spec.kind == "lr_scheduler":
            component = components["lr_schedulers"][spec.instance_name]
            allowed_steps = steps_allowed(component.class_name, component.args)
            steps = len(spec.firing_epochs())
            if allowed_steps is not None and steps > allowed_steps:
                raise err(f"{component.class_name} '{spec.instance_name}' allows {allowed_steps} "
                          f"steps but this policy steps it {steps} times (once per epoch); give "
                          f"total_steps >= {steps} or fewer epochs", spec.raw, None, spec.key)
    input_shape = None
    if "input_shape" in data:
        input_shape = sample_shape(data["input_shape"])
        if input_shape is None:
            raise err(f"must be the shape of one input sample (no batch dimension) as a list of "
                      f"positive integers, e.g. [3, 32, 32]; got {short(data['input_shape'])}",
                      data, "input_shape", "input_shape")
    return ScheduleConfig(path, data.get("version"), components, policies, data, input_shape)


def _non_finite(value: Any, keypath: str, stack: set):
    """The first NaN or infinity inside ``value``: (container, key, keypath, number), or None."""
    if id(value) in stack:      # a mapping built in Python may contain itself
        return None
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        return None
    stack.add(id(value))
    try:
        for key, item in items:
            path = f"{keypath}[{key}]" if isinstance(key, int) else (
                f"{keypath}.{key}" if keypath else str(key))
            if isinstance(item, float) and not math.isfinite(item):
                return value, key, path, item
            found = _non_finite(item, path, stack)
            if found is not None:
                return found
    finally:
        stack.discard(id(value))
    return None


def _check_patterns(value: Any, container: Any, key: Any, keypath: str, err) -> None:
    """Compile every ``re:`` weight-name pattern in a name list or a dict keyed by names, so a bad
    regular expression is a located error here rather than a ``re.error`` in the builder."""
    if isinstance(value, str):
        items: List[Tuple[Any, Any, Any, str]] = [(value, container, key, keypath)]
    elif isinstance(value, list):
        items = [(v, value, i, f"{keypath}[{i}]") for i, v in enumerate(value)]
    elif isinstance(value, Mapping):
        items = [(k, value, k, f"{keypath}.{k}") for k in value]
    else:
        return   # the builder and PolicyOptions report the wrong type itself
    for pattern, where, at, path in items:
        if isinstance(pattern, str) and pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise err(f"invalid regular expression {short(pattern)}: {e}; a 're:' pattern is "
                          f"a Python regex matched against whole weight names, e.g. "
                          f"'re:features\\.\\d+\\.weight'", where, at, path) from None


def sample_shape(value: Any) -> Optional[Tuple[int, ...]]:
    """``value`` as a sample shape (a non-empty list of positive integers), or None if it is not one."""
    ok = isinstance(value, (list, tuple)) and len(value) >= 1 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)
    return tuple(value) if ok else None


def _policy(index, raw, parent, components, err) -> PolicySpec:
    keypath = f"policies[{index}]"
    if not isinstance(raw, Mapping):
        raise err("a policy must be a mapping, e.g. {pruner: {instance_name: p}, epochs: [0]}",
                  parent, index, keypath)
    kinds = [k for k in raw if k in POLICY_KINDS]
    if len(kinds) != 1:
        what = "names no component" if not kinds else f"names {len(kinds)} components ({', '.join(kinds)})"
        raise err(f"a policy {what}; it needs exactly one of {', '.join(POLICY_KINDS)}",
                  parent, index, keypath)
    kind = kinds[0]
    for key in raw:
        if key not in POLICY_KINDS and key not in SCHEDULING_KEYS:
            hint = suggest(key, list(POLICY_KINDS) + list(SCHEDULING_KEYS))
            raise err(f"unknown policy key{hint}; valid: {', '.join(list(POLICY_KINDS) + list(SCHEDULING_KEYS))}",
                      raw, key, f"{keypath}.{key}")

    ref = raw[kind]
    if isinstance(ref, str):  # tolerate {pruner: name}
        ref = {"instance_name": ref}
    if not isinstance(ref, Mapping) or "instance_name" not in ref:
        raise err("must be {instance_name: <name>, args: {...}}", raw, kind, f"{keypath}.{kind}")
    for key in ref:
        if key not in ("instance_name", "args"):
            raise err(f"unknown key{suggest(key, ['instance_name', 'args'])}; valid: instance_name, args",
                      ref, key, f"{keypath}.{kind}.{key}")
    name = ref["instance_name"]
    section = POLICY_KINDS[kind]
    defined = components[section]
    if str(name) not in defined:
        have = listing(defined) if defined else "none"
        raise err(f"'{name}' is not defined in '{section}'{suggest(name, defined)}; defined: {have}",
                  ref, "instance_name", f"{keypath}.{kind}.instance_name")

    args = ref.get("args") or {}
    if not isinstance(args, Mapping):
        raise err("'args' must be a mapping", ref, "args", f"{keypath}.{kind}.args")
    allowed = {"pruner": PRUNING_POLICY_ARGS, "regularizer": REGULARIZATION_POLICY_ARGS}.get(kind, {})
    try:
        for key, value in args.items():
            if key not in allowed:
                valid = ", ".join(allowed) if allowed else f"none ({kind} policies take no args)"
                raise err(f"unknown {kind} policy arg{suggest(key, allowed)}; valid: {valid}",
                          args, key, f"{keypath}.{kind}.args.{key}")
            check_option(key, value)   # the type and range PolicyOptions declares
            if key in NAME_ARGS:
                _check_patterns(value, args, key, f"{keypath}.{kind}.args.{key}", err)
        options = PolicyOptions.from_args(args) if allowed else DEFAULT_OPTIONS
    except ComponentArgError as e:
        raise err(e.reason, args, e.key, f"{keypath}.{kind}.args.{e.key}") from None

    spec = PolicySpec(index, kind, str(name), args=dict(args), raw=raw, options=options)
    _schedule_keys(spec, raw, keypath, err)
    return spec


def _int(raw, key, keypath, err, minimum=0):
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise err(f"must be an integer epoch; got {short(value)}", raw, key, f"{keypath}.{key}")
    if value < minimum:
        raise err(f"must be >= {minimum}; got {value}", raw, key, f"{keypath}.{key}")
    if value > MAX_EPOCH:
        raise err(f"must be <= {MAX_EPOCH} (the largest epoch a schedule may name); got {value}",
                  raw, key, f"{keypath}.{key}")
    return value


def _schedule_keys(spec: PolicySpec, raw, keypath, err) -> None:
    has_list = "epochs" in raw
    range_keys = [k for k in ("starting_epoch", "ending_epoch", "frequency") if k in raw]
    if has_list and range_keys:
        raise err(f"give either 'epochs' or starting_epoch/ending_epoch/frequency, not both "
                  f"(found epochs and {', '.join(range_keys)})", raw, "epochs", f"{keypath}.epochs")
    if has_list:
        epochs = raw["epochs"]
        if not isinstance(epochs, list) or not epochs:
            raise err(f"must be a non-empty list of epochs, e.g. [0, 2, 4]; got {short(epochs)}",
                      raw, "epochs", f"{keypath}.epochs")
        for i, e in enumerate(epochs):
            if not isinstance(e, int) or isinstance(e, bool) or e < 0:
                raise err(f"epochs must be integers >= 0; item {i} is {short(e)}", epochs, i,
                          f"{keypath}.epochs[{i}]")
            if e > MAX_EPOCH:
                raise err(f"epochs must be <= {MAX_EPOCH} (the largest epoch a schedule may "
                          f"name); item {i} is {e}", epochs, i, f"{keypath}.epochs[{i}]")
        if sorted(set(epochs)) != list(epochs):
            raise err(f"epochs must be strictly increasing; got {list(epochs)}", raw, "epochs",
                      f"{keypath}.epochs")
        spec.epochs = list(epochs)
        return
    if "starting_epoch" not in raw or "ending_epoch" not in raw:
        missing = [k for k in ("starting_epoch", "ending_epoch") if k not in raw]
        raise err(f"missing {' and '.join(missing)}: a policy needs 'epochs: [...]' or "
                  f"starting_epoch/ending_epoch (exclusive)/frequency", raw, None, keypath)
    spec.starting_epoch = _int(raw, "starting_epoch", keypath, err)
    spec.ending_epoch = _int(raw, "ending_epoch", keypath, err)
    if spec.ending_epoch <= spec.starting_epoch:
        raise err(f"ending_epoch ({spec.ending_epoch}) must be greater than starting_epoch "
                  f"({spec.starting_epoch}); ending_epoch is exclusive", raw, "ending_epoch",
                  f"{keypath}.ending_epoch")
    if "frequency" in raw:
        spec.frequency = _int(raw, "frequency", keypath, err, minimum=1)
