"""The model's dataflow graph, read with torch.fx: one layer below pruners, criteria and thinning.

``trace`` reads a model (through DataParallel / DDP / torch.compile wrappers); ``shapes`` gives every
tensor its shape from an example input (a tensor or a sample shape, recorded per model in
``example_input``); ``analyzer`` walks the graph and applies each op's channel rule from the tables
of ``module_rules`` and ``function_rules`` (shared ones in ``channel_ops``, op kinds in
``optables``), producing a ``ChannelGraph`` of ``records``: which channels must go together and
what blocks them. ``queries`` answers the small questions (``conv_bn_pairs``,
``following_activations``). Pruners, criteria, slimming, filter coupling and thinning import from
here; this package imports nothing from them. A new op is one table entry and, where needed, one
rule function in ``module_rules`` or ``function_rules``.
"""
from .analyzer import analyze_graph, coupled_filter_classes, coupled_filter_groups
from .example_input import (as_sample_shape, example_input_of, record_first_input,
                            set_example_input)
from .queries import conv_bn_pairs, following_activations
from .records import ChannelGraph, ChannelInfo, Consumer, Follower, Producer, UnionFind
from .shapes import ExampleInput, NoExampleInputError, example_tensor, propagate_shapes
from .trace import TraceError, selects_channels, symbolic_trace, trace

__all__ = [
    "analyze_graph", "as_sample_shape", "ChannelGraph", "ChannelInfo", "Consumer", "conv_bn_pairs",
    "coupled_filter_classes", "coupled_filter_groups", "example_input_of", "example_tensor",
    "ExampleInput", "Follower", "following_activations", "NoExampleInputError", "Producer",
    "propagate_shapes", "record_first_input", "selects_channels", "set_example_input",
    "symbolic_trace", "trace", "TraceError", "UnionFind",
]
