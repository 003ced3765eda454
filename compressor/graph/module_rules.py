"""The rules for modules, as a table keyed by module class: what a layer does to channels.

A rule takes the analyzer (``an``: its records and blocking primitives), the ``call_module`` node,
the module, the channel info of its one input and the input and output shapes, and returns the
channel info of its output (None: nothing followed comes out). ``rule_for`` walks the module's
class hierarchy (MRO), so a subclass takes its nearest listed base's rule. Supporting a new layer
is one entry in ``MODULE_RULES`` and, when no rule here fits, one rule function beside it.
Modules the table does not know block every channel reaching them (``an.fallback``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Optional

from torch import nn

from .attention import WINDOW_ATTENTION, multihead_attention, windowed_attention
from .channel_ops import pad, reshape, softmax, spatial
from .nodes import qualified_name
from .optables import ACT_DIRTY, ACT_ZERO, NAMED_ZERO, PADS, POOLS
from .records import ChannelInfo, Consumer, Follower, NormRecord, Producer
from .trace import selects_channels

if TYPE_CHECKING:
    from .analyzer import Analyzer

ModuleRule = Callable[..., Optional[ChannelInfo]]

# Thinning may make exactly these classes select channels (``compressor.thinning.selection``); a
# subclass (SyncBatchNorm, a user's own) may have a forward of its own and is a plain follower.
SELECTABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def can_select(mod: nn.Module) -> bool:
    """Whether thinning may make ``mod`` read only some of its input channels."""
    return type(mod) in SELECTABLE or selects_channels(mod)


def conv(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    name = str(node.target)
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    cin, cout, g = mod.in_channels, mod.out_channels, mod.groups
    bias = f"{name}.bias" if mod.bias is not None else None
    if in_shape is None or len(in_shape) != len(mod.kernel_size) + 2:
        return an.fallback(node, f"{type(mod).__name__} '{name}' on an unbatched input")
    if info is not None and info.cdim != 1:
        an.hard(info, f"{type(mod).__name__} '{name}' reads a tensor whose channels were "
                        f"moved to dim {info.cdim}")
        info = None
    if transposed and g != 1:
        an.hard(info, f"grouped {type(mod).__name__} '{name}' is not supported")
        ids = an.g.uf.new(cout)
        an.hard_ids(ids, f"grouped {type(mod).__name__} '{name}' is not supported")
        return ChannelInfo(ids, 1)
    if info is not None and len(info.ids) != cin:   # never expected: refuse, do not guess
        an.hard(info, f"{type(mod).__name__} '{name}' expects {cin} input channels but the "
                        f"analysis followed {len(info.ids)}")
        info = None
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    if g == 1:
        if info is not None:
            an.g.consumers.append(Consumer(name, f"{name}.weight", in_dim, info.ids, "dense"))
            an.mark_dirty(info)
        ids = an.g.uf.new(cout)
        an.g.producers.append(Producer(name, f"{name}.weight", bias, out_dim, ids, "dense"))
        return ChannelInfo(ids, 1)
    per_out = cout // g
    if cin == g:   # depthwise (with channel multiplier per_out): filters follow their input
        if info is None:
            ids = an.source(cout, f"depthwise {type(mod).__name__} '{name}' reads channels "
                                    f"that cannot be followed")
            return ChannelInfo(ids, 1)
        an.g.consumers.append(Consumer(name, f"{name}.weight", in_dim, info.ids, "depthwise",
                                         groups=g))
        ids = [info.ids[o // per_out] for o in range(cout)]
        an.g.producers.append(Producer(name, f"{name}.weight", bias, out_dim, ids, "depthwise",
                                         groups=g))
        return ChannelInfo(ids, 1)
    # grouped: keep the group count, remove the same number of channels from every group
    if info is not None:
        an.g.consumers.append(Consumer(name, f"{name}.weight", in_dim, info.ids, "grouped",
                                         groups=g))
        an.mark_dirty(info)
    ids = an.g.uf.new(cout)
    an.g.producers.append(Producer(name, f"{name}.weight", bias, out_dim, ids, "grouped",
                                     groups=g))
    return ChannelInfo(ids, 1)


def linear(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    name = str(node.target)
    if in_shape is None:
        return an.fallback(node, f"Linear '{name}'")
    last = len(in_shape) - 1
    if info is not None and info.cdim != last:
        an.hard(info, f"Linear '{name}' acts on dim {last}, not on the channel dim "
                        f"{info.cdim}")
        info = None
    if info is not None and len(info.ids) != mod.in_features:
        an.hard(info, f"Linear '{name}' expects {mod.in_features} input features but the "
                        f"analysis followed {len(info.ids)}")
        info = None
    if info is not None:
        an.g.consumers.append(Consumer(name, f"{name}.weight", 1, info.ids, "dense",
                                         attr="in_features"))
        an.mark_dirty(info)
    ids = an.g.uf.new(mod.out_features)
    an.g.producers.append(Producer(name, f"{name}.weight",
                                     f"{name}.bias" if mod.bias is not None else None, 0, ids,
                                     "dense", attr="out_features"))
    return ChannelInfo(ids, last)


def follower(an: "Analyzer", node, mod, info, attr, bn=False, extra_attrs=()) -> Optional[ChannelInfo]:
    name = str(node.target)
    if info is None:
        return None
    if info.cdim != 1:
        return an.mixing(node, info, f"{type(mod).__name__} '{name}' normalizes dim 1, "
                                       f"not the channel dim {info.cdim}")
    per_channel = [(t, v) for t, v in list(mod._parameters.items()) + list(mod._buffers.items())
                   if v is not None and v.dim() >= 1]
    if any(v.dim() != 1 or v.shape[0] != len(info.ids) for _, v in per_channel):
        return an.mixing(node, info, f"{type(mod).__name__} '{name}' has tensors that are not "
                                       f"one value per channel of its {len(info.ids)}")
    tensors = [f"{name}.{t}" for t, _ in per_channel]
    shift = None
    if bn:
        shift = tuple(f"{name}.{t}" if getattr(mod, t, None) is not None else ""
                      for t in ("bias", "weight", "running_mean", "running_var"))
    an.g.followers.append(Follower(name, tensors, [attr, *extra_attrs], info.ids, shift))
    return info


def batchnorm(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    """A batch norm that may select channels: output elements of its own, linked to the input
    channels it reads (all, or ``mod.index`` once it selects; see ``ChannelGraph``)."""
    name = str(node.target)
    if info is None:
        return None
    if info.cdim != 1:
        return an.mixing(node, info, f"{type(mod).__name__} '{name}' normalizes dim 1, "
                                       f"not the channel dim {info.cdim}")
    n_in = len(info.ids)
    index = mod.index.tolist() if selects_channels(mod) else None
    reads = index if index is not None else range(n_in)
    tensors = list(mod._parameters.items()) + list(mod._buffers.items())
    per_channel = [(t, v) for t, v in tensors if v is not None and v.dim() >= 1
                   and not (t == "index" and index is not None)]
    if len(reads) != mod.num_features or any(not 0 <= k < n_in for k in reads) or any(
            v.dim() != 1 or v.shape[0] != mod.num_features for _, v in per_channel):
        return an.mixing(node, info, f"{type(mod).__name__} '{name}' has tensors that are "
                                       f"not one value per channel of its {n_in}")
    ids = an.g.uf.new(mod.num_features)
    shift = tuple(f"{name}.{t}" if getattr(mod, t, None) is not None else ""
                  for t in ("bias", "weight", "running_mean", "running_var"))
    an.g.followers.append(Follower(name, [f"{name}.{t}" for t, _ in per_channel],
                                     ["num_features"], ids, shift, list(info.ids), index))
    dirty = None if info.dirty is None else [info.dirty[k] for k in reads]
    return ChannelInfo(ids, 1, dirty)


def channel_norm(an: "Analyzer", node, name: str, mod, info, ndim: int, cd: Optional[int],
                 module_cd: Optional[int] = None) -> Optional[ChannelInfo]:
    """A LayerNorm ``name`` normalizing channel dim ``cd`` of its ``ndim``-dim input (None: a
    LayerNorm whose channel dim we do not know). A plain one blocks its channels for thinning
    until it is told which are zero (``compressor.thinning.norms``), not for the dry run; a told
    one (``kept``) outputs exactly 0 on the others, which are followed like a per-channel layer.
    ``module_cd``: the channel dim of the module's own input when ``cd`` is that of a tensor its
    forward permuted (LayerNorm2d)."""
    if cd is None or cd % ndim != info.cdim or len(mod.normalized_shape) != 1 or \
            mod.normalized_shape[0] != len(info.ids):
        return an.mixing(node, info, f"LayerNorm '{name}' normalizes over the channel dimension "
                                     f"(a removed channel would still count in its mean and "
                                     f"variance)")
    an.mark_dirty(info)
    an.g.norms.append(NormRecord(name, list(info.ids), cd if module_cd is None else module_cd))
    kept = getattr(mod, "kept", None) if getattr(type(mod), "graph_leaf", False) else None
    reason = (f"LayerNorm '{name}' normalizes over the channel dimension and still counts this "
              f"channel in its mean and variance (the scheduler's mask store tells it the channels "
              f"its masks made zero, or call compressor.thinning.tell_norms(model))")
    for k, i in enumerate(info.ids):
        if kept is None or bool(kept[k]):
            an.g.norm_elems.setdefault(i, reason)
    if kept is not None:
        an.g.followers.append(Follower(name, [f"{name}.{t}" for t in ("weight", "bias")
                                              if getattr(mod, t, None) is not None],
                                       ["normalized_shape"], list(info.ids)))
    return info.with_(dirty=None)


def layernorm(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    if info is None or in_shape is None:
        return info
    if getattr(type(mod), "graph_leaf", False):   # told the mask: it knows its channel dim
        return channel_norm(an, node, str(node.target), mod, info, len(in_shape),
                            getattr(mod, "channel_dim", None))
    first = len(in_shape) - len(mod.normalized_shape)
    if info.cdim >= first:
        return channel_norm(an, node, str(node.target), mod, info, len(in_shape),
                            -1 if type(mod) is nn.LayerNorm else None)
    return info.dirtied(f"LayerNorm '{node.target}' maps a zero channel to its bias") \
        if mod.bias is not None else info


def norm(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    """A batch norm (not one that may select) or instance norm: per-channel tensors follow."""
    if can_select(mod):
        return batchnorm(an, node, mod, info, in_shape, out_shape)
    return follower(an, node, mod, info, "num_features",
                    bn=isinstance(mod, nn.modules.batchnorm._BatchNorm))


def group_norm(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    if mod.num_groups == mod.num_channels:
        return follower(an, node, mod, info, "num_channels", extra_attrs=("num_groups",))
    return an.mixing(node, info, f"GroupNorm '{node.target}' normalizes groups of "
                                 f"{mod.num_channels // mod.num_groups} channels together")


def prelu(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    if mod.num_parameters == 1:
        return info
    return follower(an, node, mod, info, "num_parameters")


def keeps_zero(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    """Activations and dropouts that map 0 to 0: channels pass through."""
    return an.inplace(node, node.args[0], info)


def hardtanh(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    out = info if mod.min_val <= 0 <= mod.max_val or info is None else \
        info.dirtied(f"Hardtanh '{node.target}' maps 0 to a non-zero value")
    return an.inplace(node, node.args[0], out)


def threshold(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    out = info if info is None or mod.value == 0 or mod.threshold < 0 else \
        info.dirtied(f"Threshold '{node.target}' maps 0 to {mod.value}")
    return an.inplace(node, node.args[0], out)


def dirties(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    """Activations that map 0 to a non-zero value (sigmoid ...)."""
    out = None if info is None else info.dirtied(
        f"{type(mod).__name__} '{node.target}' maps a removed (zero) channel to a non-zero value")
    return an.inplace(node, node.args[0], out)


def pool(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    what = f"{type(mod).__name__} '{node.target}'"
    if type(mod) not in POOLS:   # a subclass may pool differently: not followed
        return an.fallback(node, what)
    return spatial(an, node, info, in_shape, POOLS[type(mod)], what)


def upsample(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    return spatial(an, node, info, in_shape, len(in_shape) - 2 if in_shape else 0,
                   f"Upsample '{node.target}'")


_CONSTANT_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
                  nn.ZeroPad3d)


def padding(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    value = float(getattr(mod, "value", 0.0))
    mode = "constant" if isinstance(mod, _CONSTANT_PADS) else "other"
    return pad(an, node, info, in_shape, list(mod.padding), mode, value,
               f"{type(mod).__name__} '{node.target}'")


def flatten(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    return reshape(an, node, info, in_shape, out_shape, f"Flatten '{node.target}'")


def softmax_module(an: "Analyzer", node, mod, info, in_shape, out_shape) -> Optional[ChannelInfo]:
    return softmax(an, node, info, in_shape, mod.dim, f"{type(mod).__name__} '{node.target}'")


MODULE_RULES: Dict[type, ModuleRule] = {
    nn.modules.conv._ConvNd: conv,
    nn.Linear: linear,
    nn.modules.batchnorm._BatchNorm: norm,
    nn.modules.instancenorm._InstanceNorm: norm,
    nn.GroupNorm: group_norm,
    nn.PReLU: prelu,
    nn.LayerNorm: layernorm,
    **{t: keeps_zero for t in ACT_ZERO},
    nn.Hardtanh: hardtanh,   # after ReLU6 in the MRO: ReLU6 is a Hardtanh subclass
    nn.Threshold: threshold,
    **{t: dirties for t in ACT_DIRTY},
    **{t: pool for t in POOLS},
    nn.Upsample: upsample,
    **{t: padding for t in PADS},
    nn.Flatten: flatten,
    nn.Softmax: softmax_module,
    nn.LogSoftmax: softmax_module,
    nn.Softmin: softmax_module,
    nn.MultiheadAttention: multihead_attention,   # several inputs (query, key, value)
}


# Modules of optional packages (torchvision's StochasticDepth kept as a leaf), by qualified name.
NAMED_MODULE_RULES: Dict[str, ModuleRule] = {
    **{n: keeps_zero for n in NAMED_ZERO},
    **{n: windowed_attention for n in WINDOW_ATTENTION},   # Swin V1/V2, MaxViT attention heads
}


def rule_for(mod: nn.Module) -> Optional[ModuleRule]:
    """The rule of the nearest class in ``type(mod)``'s MRO that a table lists (by class, or by
    qualified name for optional packages), or None."""
    for cls in type(mod).__mro__:
        rule = MODULE_RULES.get(cls) or NAMED_MODULE_RULES.get(qualified_name(cls))
        if rule is not None:
            return rule
    return None
