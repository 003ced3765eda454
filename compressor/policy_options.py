"""The options of a pruning or regularization policy (a schedule's ``policies[i].<kind>.args``).

``PolicyOptions`` is the one typed record of them: ``config`` validates a schedule's args into it
(errors name the file, line and key), the builder resolves ``levels`` against the model, policies
and pruners read its fields. The field names, types and meanings are Distiller's; every option is
off by default. This module depends on nothing else in the package, so every layer may import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Tuple

from .errors import ComponentArgError, suggest


@dataclass(frozen=True)
class PolicyOptions:
    """What a policy does besides running its component; see docs/schedule.md#pruning-policy-args."""
    levels: Mapping[str, float] = field(default_factory=dict)   # weight name -> level (Sparsity-level)
    keep_mask: bool = False
    mini_batch_pruning_frequency: int = 0      # 0 = prune at epoch begin only
    mask_on_forward_only: bool = False
    mask_gradients: bool = False
    use_double_copies: bool = False
    discard_masks_at_minibatch_end: bool = False
    fold_batchnorm: bool = False
    skip_first_minibatch: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, Any], allowed: Tuple[str, ...] = ()) -> "PolicyOptions":
        """Validated options from a schedule's ``args`` mapping.

        ``allowed`` limits the keys (a regularization policy takes only ``keep_mask``); empty means
        all fields. Raises ``ComponentArgError(key, reason)`` for an unknown key, a value of the
        wrong type or range, or options that contradict each other.
        """
        allowed = allowed or OPTION_NAMES
        for key, value in args.items():
            if key not in allowed:
                raise ComponentArgError(str(key), f"unknown policy arg{suggest(key, allowed)}; "
                                                  f"valid: {', '.join(allowed)}")
            check_option(key, value)
        if args.get("mask_gradients") and not args.get("mask_on_forward_only"):
            raise ComponentArgError("mask_gradients", "mask_gradients needs mask_on_forward_only: "
                                    "True (otherwise the mask already zeroes those weights after "
                                    "every step)")
        return cls(**{str(k): v for k, v in args.items()})

    def as_args(self) -> Dict[str, Any]:
        """The options as a plain ``{name: value}`` dict (every field, defaults included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: option name -> the Python type its value must have, in declaration order.
OPTION_TYPES: Dict[str, type] = {
    "levels": dict, "keep_mask": bool, "mini_batch_pruning_frequency": int,
    "mask_on_forward_only": bool, "mask_gradients": bool, "use_double_copies": bool,
    "discard_masks_at_minibatch_end": bool, "fold_batchnorm": bool, "skip_first_minibatch": bool,
}
OPTION_NAMES: Tuple[str, ...] = tuple(OPTION_TYPES)
assert OPTION_NAMES == tuple(f.name for f in fields(PolicyOptions)), "keep the table in step"
DEFAULT_OPTIONS = PolicyOptions()


def check_option(key: str, value: Any) -> None:
    """Raise ``ComponentArgError`` unless ``value`` is a valid value for option ``key``."""
    want = OPTION_TYPES[key]
    if want is dict:
        ok = isinstance(value, Mapping)
    else:
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        raise ComponentArgError(key, f"must be {want.__name__}; got {value!r}")
    if key == "mini_batch_pruning_frequency" and value < 0:
        raise ComponentArgError(key, f"must be >= 0 (0 disables); got {value}")
