"""Schedule config + model + optimizer -> a CompressionScheduler with its policies.

Every ``class:`` is looked up in a registry; arguments are checked against the constructor; weight
names are matched against the model (exactly, with or without DataParallel's ``module.`` segments,
as globs, as ``re:`` regular expressions, or by a selector such as ``thinnable``, see
``pruners/selectors.py``). A schedule that thins (a thinning extension, or ``thins=True`` from an
app that will) may not list, for filter or neuron pruning, a layer the thinning analysis blocks.
Everything is validated before anything is changed: a schedule that fails leaves the model, the
optimizer and a passed-in scheduler as they were.
"""
from __future__ import annotations

import fnmatch
import inspect
import math
import re
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import config as cfg
from .errors import ComponentArgError, CompressorError, ScheduleError, listing, suggest
from .graph.example_input import ExampleInput, as_sample_shape, example_input_of, record_first_input, \
    set_example_input
from .lr_schedulers import resume_position
from .masks import normalize_name, unwrap
from .policies import GatePolicy, LRPolicy, PruningPolicy, RegularizationPolicy
from .pruners.autopruner import AutoPruner
from .pruners.coupling import layer_facts
from .pruners.selectors import SELECTORS, parse_selector
from .quantization import QuantizationPolicy
from .registry import SECTIONS
from .scheduler import CompressionScheduler

# Constructor arguments that carry parameter names: lists of names, and dicts keyed by names.
NAME_LIST_ARGS = ("weights",)
NAME_DICT_ARGS = ("thresholds", "sensitivities", "levels", "reg_regims")
_GLOB_CHARS = set("*?[")


def is_pattern(key: str) -> bool:
    return key.startswith("re:") or bool(_GLOB_CHARS & set(key))


def _plain(name: str) -> str:
    """A parameter name without wrapper segments: DataParallel/DDP's ``module.`` and
    ``torch.compile``'s ``_orig_mod.`` (a compiled submodule's parameters carry it)."""
    name = normalize_name(name)
    return ".".join(p for p in name.split(".") if p != "_orig_mod") if "_orig_mod" in name else name


def match_names(pattern: str, names: Sequence[str]) -> List[str]:
    """The parameter names ``pattern`` selects, in model order.

    An exact name, the same name with or without ``module.`` / ``_orig_mod.`` segments, a glob (``*``, ``?``,
    ``[...]``, matched against names without those segments) or ``re:<regex>`` (a full match).
    """
    if pattern in names:
        return [pattern]
    norm = _plain(pattern)
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return [n for n in names if rx.fullmatch(_plain(n)) or rx.fullmatch(n)]
    if is_pattern(pattern):
        return [n for n in names if fnmatch.fnmatchcase(_plain(n), norm)
                or fnmatch.fnmatchcase(n, pattern)]
    return [n for n in names if _plain(n) == norm]


def _no_match(key: str, names: Sequence[str]) -> str:
    norm = [normalize_name(n) for n in names]
    near = suggest(normalize_name(key), norm)
    return (f"'{key}' matches no parameter of the model{near}; parameters: {listing(norm, 8)}")


class _Locator:
    """Turns an argument path of a component into a file:line:key error."""

    def __init__(self, path: Optional[str], component: cfg.Component):
        self.path, self.component = path, component

    def error(self, key: str, message: str) -> ScheduleError:
        raw = self.component.raw
        parts = key.split(".", 1)
        line = cfg.line_of(raw, parts[0]) if isinstance(raw, Mapping) and parts[0] in raw else self.component.line
        if len(parts) == 2 and isinstance(raw, Mapping) and isinstance(raw.get(parts[0]), Mapping):
            inner = raw[parts[0]]
            for k in inner:
                if k == parts[1] or normalize_name(str(k)) == normalize_name(parts[1]):
                    line = cfg.line_of(inner, k)
                    break
        return ScheduleError(message, self.path, line, f"{self.component.key}.{key}")


def _item_error(component: cfg.Component, loc: _Locator, key: str, i: int, message: str) -> ScheduleError:
    """An error located at item ``i`` of the list argument ``key`` (or at ``key`` for a string)."""
    raw_list = component.raw.get(key)
    if not isinstance(raw_list, list):
        return loc.error(key, message)
    return ScheduleError(message, loc.path, cfg.line_of(raw_list, i), f"{component.key}.{key}[{i}]")


def _select(entry: str, names: Sequence[str], model: Optional[nn.Module],
            group_type: Optional[str]) -> Optional[List[str]]:
    """The names a selector entry (``thinnable``, ``thinnable:<pattern>``) stands for; None when
    ``entry`` is not a selector. Raises ``ComponentArgError`` with the reason."""
    parsed = parse_selector(entry)
    if parsed is None:
        return None
    word, narrow = parsed
    if entry in names or _plain(entry) in {_plain(n) for n in names}:
        raise ComponentArgError("weights", f"'{entry}' is both a selector and a parameter of the "
                                           f"model; write the parameter as 're:{entry}'")
    if model is None:
        raise ComponentArgError("weights", f"the '{word}' selector needs the model")
    found = SELECTORS[word](model, group_type)
    if narrow is not None:
        found = match_names(narrow, found) if found else []
    if not found:
        what = f" matching '{narrow}'" if narrow is not None else ""
        kind = f" for group_type {group_type}" if group_type is not None else ""
        raise ComponentArgError("weights", f"'{entry}' selects no layer: the thinning analysis "
                                           f"finds no thinnable layer{what}{kind}")
    return found


def resolve_args(component: cfg.Component, names: Sequence[str], loc: _Locator,
                 model: Optional[nn.Module] = None, group_type: Optional[str] = None) -> Dict[str, Any]:
    """The component's YAML args with name lists/dicts resolved to the model's parameter names
    (``model`` and the component's ``group_type`` serve the selectors)."""
    args = dict(component.args)
    for key in NAME_LIST_ARGS:
        if key in args:
            value = args[key]
            if isinstance(value, str):   # Distiller matched a bare string by substring; we take it as one name
                value = [value]
            if not isinstance(value, list) or not value:
                raise loc.error(key, f"must be a non-empty list of weight names or patterns; got {cfg.short(value)}")
            resolved: List[str] = []
            for i, pattern in enumerate(value):
                try:
                    found = _select(str(pattern), names, model, group_type)
                except ComponentArgError as e:
                    raise _item_error(component, loc, key, i, e.reason) from None
                if found is None:
                    found = match_names(str(pattern), names)
                if not found:
                    raise _item_error(component, loc, key, i, _no_match(str(pattern), names))
                resolved.extend(n for n in found if n not in resolved)
            args[key] = resolved
    for key in NAME_DICT_ARGS:
        if key in args:
            value = args[key]
            if not isinstance(value, Mapping) or not value:
                raise loc.error(key, f"must map weight names (or patterns, '*' for all) to values; got {cfg.short(value)}")
            resolved_d: Dict[str, Any] = {}
            # exact names first, then patterns in order, and Distiller's '*' default last
            ordered = sorted(value.items(), key=lambda kv: (str(kv[0]) == "*") + is_pattern(str(kv[0])))
            for pattern, v in ordered:
                found = match_names(str(pattern), names)
                if not found:
                    raise loc.error(f"{key}.{pattern}", _no_match(str(pattern), names))
                for n in found:
                    resolved_d.setdefault(n, v)
            args[key] = {n: resolved_d[n] for n in names if n in resolved_d}   # model order
    return args


def construct(component: cfg.Component, path: Optional[str], params: Mapping[str, torch.Tensor],
              extra: Mapping[str, Any]):
    """Instantiate a registered class from its YAML args, checking them against its signature."""
    cls = SECTIONS[component.section].get(component.class_name)
    loc = _Locator(path, component)
    sig = inspect.signature(cls.__init__)
    group_type = component.args.get("group_type")
    if group_type is None and "group_type" in sig.parameters:
        default = sig.parameters["group_type"].default
        group_type = default if isinstance(default, str) else None
    args = resolve_args(component, list(params), loc, extra.get("model"),
                        None if group_type is None else str(group_type))
    accepted = [p for p in list(sig.parameters.values())[1:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    injected = {"name", "model", "optimizer", "last_epoch"}
    valid = [p.name for p in accepted if p.name not in injected]
    for key in args:
        if key not in valid:
            raise loc.error(str(key), f"{component.class_name} has no parameter '{key}'"
                            f"{suggest(key, valid)}; valid: {', '.join(valid) or 'none'}")
    missing = [p.name for p in accepted if p.default is p.empty and p.name not in injected
               and p.name not in args]
    if missing:
        raise ScheduleError(f"{component.class_name} needs {', '.join(missing)}", path,
                            component.line, component.key)
    kwargs = dict(args)
    for key, value in extra.items():
        if key in sig.parameters:
            kwargs[key] = value
    try:
        obj = cls(**kwargs)
        check = getattr(obj, "check", None)
        if check is not None and component.section in ("pruners", "regularizers"):
            check({n: params[n] for n in getattr(obj, "param_names", [])})
    except ComponentArgError as e:
        raise loc.error(e.key, e.reason) from None
    except (TypeError, ValueError) as e:
        raise ScheduleError(cfg.bounded(f"{component.class_name}: {e}"), path, component.line,
                            component.key) from None
    return obj


def _dry_run_lr_scheduler(component: cfg.Component, path, optimizer, steps: int) -> None:
    """Build the scheduler on a stand-in optimizer (same class, same hyper-parameters, one tiny
    parameter per group) and step it as its policy will, so an argument torch checks only when
    stepping, or a learning rate that overflows to inf/NaN, is refused now rather than after an
    epoch of training. Skipped when no stand-in can be made (an optimizer with unusual arguments)."""
    if component.class_name == "ReduceLROnPlateau":
        return   # steps on a metric; its arguments are checked by config's table
    try:
        groups = [{k: v for k, v in g.items() if k not in ("params", "initial_lr")}
                  for g in optimizer.param_groups]
        for g in groups:
            g["params"] = [torch.zeros(1, requires_grad=True)]
        stand_in = type(optimizer)(groups)
    except Exception:   # a custom optimizer we cannot imitate: the real build still checks
        return
    sched = construct(component, path, {}, {"optimizer": stand_in})
    for step in range(1, steps + 1):
        try:
            stand_in.step()
            sched.step()
        except (ValueError, TypeError, ArithmeticError) as e:
            raise ScheduleError(cfg.bounded(f"{component.class_name} fails at step {step} of "
                                            f"{steps}: {e}"), path, component.line,
                                component.key) from None
        bad = [g["lr"] for g in stand_in.param_groups if not math.isfinite(float(g["lr"]))]
        if bad:
            raise ScheduleError(f"{component.class_name} makes the learning rate {bad[0]} at step "
                                f"{step} of {steps}; check its arguments", path, component.line,
                                component.key)


def _build_lr_scheduler(component: cfg.Component, path, params, optimizer, resumed_epoch,
                        n_steps_done: int, n_steps_total: int = 0):
    """Build an LR scheduler without moving the learning rate of a resumed run.

    PyTorch schedulers take a step when constructed. For a fresh run that is the intended start;
    for a resumed one, the optimizer already holds the lr the run had reached, so it is kept and
    the scheduler is told how many steps it has already taken.
    """
    if optimizer is None:
        raise ScheduleError("an lr_scheduler needs the optimizer: pass it to file_config/dict_config",
                            path, component.line, component.key)
    before = [g["lr"] for g in optimizer.param_groups]
    if resumed_epoch is not None:
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
    _dry_run_lr_scheduler(component, path, optimizer, n_steps_total)
    sched = construct(component, path, params, {"optimizer": optimizer})
    if resumed_epoch is not None:
        resume_position(sched, n_steps_done, before)
    return sched


def _policy_levels(spec: cfg.PolicySpec, params: Mapping[str, torch.Tensor], path) -> Dict[str, float]:
    """A pruning policy's ``levels`` arg, names resolved like a pruner's and values checked."""
    raw = spec.raw[spec.kind]["args"]["levels"]
    names = list(params)
    out: Dict[str, float] = {}
    for key, value in sorted(raw.items(), key=lambda kv: (str(kv[0]) == "*") + is_pattern(str(kv[0]))):
        keypath = f"{spec.key}.{spec.kind}.args.levels.{key}"
        found = match_names(str(key), names)
        if not found:
            raise ScheduleError(_no_match(str(key), names), path, cfg.line_of(raw, key), keypath)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ScheduleError(f"must be a sparsity in [0, 1); got {cfg.short(value)}", path,
                                cfg.line_of(raw, key), keypath)
        for n in found:
            out.setdefault(n, float(value))
    return out


def _check_consecutive(epochs: Sequence[int]) -> None:
    """AutoPruner's gates train on every minibatch of their epochs, so the epochs must not skip."""
    gaps = [e for e, nxt in zip(epochs, epochs[1:]) if nxt != e + 1]
    if gaps:
        raise ValueError(f"the AutoPruner policy must fire on consecutive epochs (frequency: 1); "
                         f"it skips after epoch {gaps[0]}")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _example_shape(schedule: cfg.ScheduleConfig, model: nn.Module,
                   example_input: ExampleInput) -> Optional[Tuple[int, ...]]:
    """The schedule's one example input, checked: against the argument, the thinning extensions'
    own ``input_shape`` and one forward pass of the model."""
    path, raw = schedule.path, schedule.raw
    given = as_sample_shape(example_input)
    shape = schedule.input_shape
    if shape is not None and given is not None and shape != given:
        raise ScheduleError(f"input_shape {list(shape)} disagrees with the example input passed to "
                            f"the builder (one sample of shape {list(given)}); give one of them",
                            path, cfg.line_of(raw, "input_shape"), "input_shape")
    if shape is None:
        return given
    for name, component in schedule.components["extensions"].items():
        own = component.args.get("input_shape")
        if own is not None and cfg.sample_shape(own) is not None and tuple(own) != shape:
            raise ScheduleError(f"{list(own)} disagrees with the top-level input_shape {list(shape)}; "
                                f"give the example input once, at the top level",
                                path, cfg.line_of(component.raw, "input_shape"),
                                f"{component.key}.input_shape")
    inner = unwrap(model)
    ref = next(iter(inner.parameters()), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    flags = [(m, m.training) for m in inner.modules()]
    inner.eval()   # no batch-norm statistics change, and a batch of one is fine
    try:
        with torch.no_grad():
            inner(torch.zeros((1,) + shape, **kw))
    except Exception as e:   # any failure of the user's forward means the shape does not fit
        raise ScheduleError(f"input_shape {list(shape)} does not fit the model: a forward pass on "
                            f"one sample of that shape failed ({_first_line(e)})", path,
                            cfg.line_of(raw, "input_shape"), "input_shape") from None
    finally:
        for m, t in flags:
            m.training = t
    return shape


def _await_first_input(scheduler: CompressionScheduler, model: nn.Module) -> None:
    """Record the first input the model sees; pruning steps owed for want of it run then.

    Filter coupling needs the input's shape, but a pruner first fires at ``on_epoch_begin``,
    before any batch: such a step is owed (see ``RankedStructurePruner.owed_epoch``) and runs in
    this hook, before the first forward pass uses the weights.
    """
    def then(shape) -> None:
        for policy in scheduler.ordered:
            if isinstance(policy, PruningPolicy):
                policy.run_owed_step(scheduler.store, scheduler.model)

    for policy in scheduler.ordered:
        pruner = getattr(policy, "pruner", None)
        if hasattr(pruner, "awaits_input"):
            pruner.awaits_input = True
    record_first_input(model, then)


#: Thinning kinds that remove channels for their zero filters (``remove_channels`` reads inputs).
_BY_FILTERS = ("remove_filters", "contract_model")


def _thinning_reason(built: Mapping[Tuple[str, str], Any], thins: bool) -> Optional[str]:
    """Why the schedule thins ("extension 'net_thinner' (remove_filters)"), or None."""
    for (section, name), obj in built.items():
        kind = getattr(obj, "thinning_func_str", None)
        if section == "extensions" and kind in _BY_FILTERS:
            return f"extension '{name}' ({kind})"
    return "the caller thins the model afterwards (thins=True)" if thins else None


def _refuse_unthinnable(schedule: cfg.ScheduleConfig, built: Mapping[Tuple[str, str], Any],
                        model: nn.Module, why: str) -> None:
    """A filter (or neuron) pruner of a schedule that thins may not list a layer whose zero
    filters thinning would refuse: say so now, located at the weight's entry, not after training.

    Layers the analysis keeps quietly (the classifier: its channels are the model's output) pass.
    When the graph cannot be analyzed yet (no example input: the first batch will give it, or an
    untraceable model) nothing is checked here; thinning then says what is wrong.
    """
    facts = None
    for (section, name), obj in built.items():
        granularity = getattr(obj, "granularity", None)
        if section != "pruners" or granularity is None or not granularity.along_outputs:
            continue
        if facts is None:
            try:
                facts = layer_facts(model)
            except CompressorError:
                return
        for w in getattr(obj, "weights", []):
            f = facts.get(w)
            if f is None or not f.refused:
                continue
            component = schedule.components["pruners"][name]
            loc = _Locator(schedule.path, component)
            raw = component.args.get("weights")
            entries = raw if isinstance(raw, list) else [raw]
            # the entry that named it (a selector never does: it takes thinnable layers only)
            i = next((k for k, e in enumerate(entries) if match_names(str(e), [w])), 0)
            raise _item_error(component, loc, "weights", i,
                              f"'{w}' cannot be thinned: {f.reason}; this schedule thins ({why}), "
                              f"so its pruned filters could not be removed: leave {f.module} out of "
                              f"weights, or select layers with 'weights: thinnable'")


def build(schedule: cfg.ScheduleConfig, model: nn.Module, optimizer=None,
          scheduler: Optional[CompressionScheduler] = None,
          resumed_epoch: Optional[int] = None,
          example_input: ExampleInput = None, thins: bool = False) -> CompressionScheduler:
    """Build (or extend) a CompressionScheduler from a parsed schedule.

    ``example_input`` (a batch tensor or the shape of one sample) or the schedule's top-level
    ``input_shape`` is recorded as the model's example input; with neither (and none recorded
    before), the shape of the first batch the model sees is recorded when it comes. ``thins``:
    the caller will thin the model (by filters) after the schedule, as a thinning extension
    does; a filter pruner listing a layer that thinning would refuse is then refused now.
    """
    path = schedule.path
    params = dict(unwrap(model).named_parameters())
    shape = _example_shape(schedule, model, example_input)
    if shape is not None:
        set_example_input(model, shape)
    built: Dict[Tuple[str, str], Any] = {}
    for section in ("pruners", "regularizers", "extensions"):
        for name, component in schedule.components[section].items():
            built[(section, name)] = construct(component, path, params, {"name": name, "model": model})
    for name, component in schedule.components["quantizers"].items():
        built[("quantizers", name)] = construct(component, path, params,
                                                {"model": model, "optimizer": optimizer})
    why = _thinning_reason(built, thins)
    if why is not None:
        _refuse_unthinnable(schedule, built, model, why)

    plan = []   # (policy, spec) in the order they will be added: LR policies last
    for spec in schedule.policies:
        section = cfg.POLICY_KINDS[spec.kind]
        if spec.kind == "pruner":
            options = spec.options
            if "levels" in spec.args:
                options = replace(options, levels=_policy_levels(spec, params, path))
            pruner = built[(section, spec.instance_name)]
            try:
                policy = (GatePolicy(pruner, spec.args) if isinstance(pruner, AutoPruner)
                          else PruningPolicy(pruner, options))
                if isinstance(pruner, AutoPruner):
                    _check_consecutive(spec.firing_epochs())
            except ValueError as e:
                raise ScheduleError(str(e), path, cfg.line_of(spec.raw), spec.key) from None
        elif spec.kind == "regularizer":
            policy = RegularizationPolicy(built[(section, spec.instance_name)],
                                          keep_mask=spec.options.keep_mask)
        elif spec.kind == "extension":
            policy = built[(section, spec.instance_name)]
        elif spec.kind == "quantizer":
            policy = QuantizationPolicy(built[(section, spec.instance_name)])
        else:
            continue
        plan.append((policy, spec))

    lr_specs = [s for s in schedule.policies if s.kind == "lr_scheduler"]
    used = {}
    for spec in lr_specs:
        if spec.instance_name in used:
            raise ScheduleError(f"lr_scheduler '{spec.instance_name}' is already used by "
                                f"{used[spec.instance_name]}; one scheduler cannot be stepped by two "
                                f"policies", path, cfg.line_of(spec.raw), spec.key)
        used[spec.instance_name] = spec.key
    if scheduler is None:
        scheduler = CompressionScheduler(model)
    # Everything above only validated and constructed. LR schedulers touch the optimizer when
    # built (lr, initial_lr), so its param groups are restored if any of them fails.
    saved_groups = [dict(g) for g in optimizer.param_groups] if optimizer is not None else []
    try:
        for spec in lr_specs:
            component = schedule.components["lr_schedulers"][spec.instance_name]
            done = 0 if resumed_epoch is None else sum(1 for e in spec.firing_epochs() if e <= resumed_epoch)
            sched = _build_lr_scheduler(component, path, params, optimizer, resumed_epoch, done,
                                        len(spec.firing_epochs()))
            plan.append((LRPolicy(sched, spec.instance_name), spec))
    except BaseException:
        for group, saved in zip(optimizer.param_groups if optimizer is not None else [], saved_groups):
            group.clear()
            group.update(saved)
        raise
    for policy, spec in plan:
        scheduler.add_policy(policy, epochs=spec.firing_epochs(),
                             key=f"{spec.key}:{spec.kind}:{spec.instance_name}")
    if example_input_of(model) is None:
        _await_first_input(scheduler, model)
    return scheduler


def dict_config(model: nn.Module, optimizer, sched_dict: Mapping, scheduler=None,
                resumed_epoch: Optional[int] = None, path: Optional[str] = "<dict>",
                example_input: ExampleInput = None, thins: bool = False) -> CompressionScheduler:
    """Distiller's ``dict_config``: build a scheduler from an already-parsed schedule mapping."""
    return build(cfg.from_dict(sched_dict, path), model, optimizer, scheduler, resumed_epoch,
                 example_input, thins)


def file_config(model: nn.Module, optimizer, filename, scheduler=None,
                resumed_epoch: Optional[int] = None,
                example_input: ExampleInput = None, thins: bool = False) -> CompressionScheduler:
    """Distiller's ``file_config``: read a YAML schedule and build its CompressionScheduler.

    ``scheduler`` (e.g. one restored from a checkpoint) gets the new policies added to it.
    ``resumed_epoch`` is the last completed epoch of a resumed run; LR schedulers then continue
    from there without moving the learning rate. ``example_input`` (a batch tensor or the shape
    of one sample) is the model's example input, as the schedule's top-level ``input_shape``.
    ``thins``: the caller thins the model after the schedule (``--thinnify``); a filter pruner
    listing a layer thinning would refuse is then refused now (see ``build``).
    """
    return build(cfg.load(filename), model, optimizer, scheduler, resumed_epoch, example_input,
                 thins)
