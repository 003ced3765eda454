"""Reading torch.fx nodes: a node's recorded shape, the nodes in its arguments, where in the model
it sits and a readable name for its target, as the analysis and its error messages need them."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.fx


def node_shape(node: Any) -> Optional[Tuple[int, ...]]:
    """The shape shape propagation recorded for ``node`` (None: not a node, or not a tensor)."""
    if not isinstance(node, torch.fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    shape = getattr(tm, "shape", None)
    return tuple(shape) if shape is not None else None


def nodes_in(arg: Any) -> List[torch.fx.Node]:
    """Every node inside ``arg`` (nested tuples, lists, dicts)."""
    out: List[torch.fx.Node] = []
    torch.fx.node.map_arg(arg, out.append)
    return out


def where(node: torch.fx.Node) -> str:
    """The module path a node runs in, for messages."""
    stack = node.meta.get("nn_module_stack")
    if node.op == "call_module":
        return str(node.target)
    if stack:
        path = list(stack.values())[-1][0]
        return str(path) if path else "the model's forward"
    return "the model's forward"


def module_path(node: torch.fx.Node) -> str:
    """The path of the module whose forward holds ``node`` ('' for the model's own forward)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    return str(list(stack.values())[-1][0] or "") if stack else ""


def target_name(target: Any) -> str:
    """``F.relu``, ``torch.cat``, ``operator.add``, ``Tensor.view``: a target as users write it."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if mod.startswith("torch") or mod == "" else f"{mod}.{name}"


def qualified_name(target: Any) -> str:
    """``module.name`` of a function or class (``torchvision.ops.stochastic_depth.stochastic_depth``),
    the key of the tables of ops from optional packages; '' for anything else."""
    mod = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str) else ""
