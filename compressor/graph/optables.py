"""The op tables: which modules, functions and tensor methods the channel analysis knows, by kind.

Grouped by what an op does to a channel that thinning removed (all zero): keeps it zero
(``*_ZERO``), maps it to a non-zero value (``*_DIRTY``), pools or pads spatial dims, does
arithmetic, concatenates, reduces. Shape propagation (``shapes``) reads them to skip work on the
meta device; the rule tables (``module_rules``, ``function_rules``) map them to rules. A new op of
a kind already here is one entry in a set below.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

ACT_ZERO = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
             nn.Hardswish, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
             nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)
ACT_DIRTY = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
          nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2,
          nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2,
          nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2}
PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
         nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)

F_ZERO = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
           F.mish, F.hardswish, torch.tanh, F.tanh, F.softsign, F.tanhshrink, F.hardshrink,
           F.softshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
           F.feature_alpha_dropout, torch.neg, torch.abs, torch.relu_, F.relu_, F.hardtanh,
           operator.neg, operator.pos, operator.abs}
F_DIRTY = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, torch.exp, torch.cos}
F_POOL = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
           F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
           F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
           F.adaptive_max_pool3d: 3, F.lp_pool1d: 1, F.lp_pool2d: 2}
M_ZERO = {"relu", "relu_", "tanh", "tanh_", "neg", "neg_", "abs", "abs_", "contiguous", "clone",
           "detach", "float", "double", "half", "bfloat16", "to", "type", "cpu", "cuda",
           "requires_grad_"}
M_DIRTY = {"sigmoid", "sigmoid_", "exp", "exp_"}
ARITH = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub",
          operator.isub: "sub", torch.sub: "sub", torch.subtract: "sub", operator.mul: "mul",
          operator.imul: "mul", torch.mul: "mul", torch.multiply: "mul", operator.truediv: "div",
          operator.itruediv: "div", torch.div: "div", torch.true_divide: "div",
          operator.pow: "pow", torch.pow: "pow"}
M_ARITH = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
            "div": "div", "div_": "div", "pow": "pow"}
CAT = {torch.cat, torch.concat, torch.concatenate}
REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
M_REDUCE = {"mean", "sum", "amax", "amin"}
SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement", "get_device"}

# Ops of optional packages, by qualified name (``nodes.qualified_name``) so the graph package need
# not import them. torchvision's stochastic depth multiplies each sample (mode "row") or the whole
# batch ("batch") by 0 or 1/(1-p) in training and is the identity in eval: a zero channel stays
# zero, and no channel meets another. torchvision wraps the function for torch.fx (a leaf call);
# the module traces into it, unless a tracer keeps it as a leaf.
NAMED_ZERO = {"torchvision.ops.stochastic_depth.stochastic_depth",
              "torchvision.ops.stochastic_depth.StochasticDepth"}

# LayerNorm classes whose forward normalizes exactly one channel dim, by qualified name: nn.LayerNorm
# its last dim, torchvision's ConvNeXt ``LayerNorm2d`` (permute, F.layer_norm, permute) dim 1.
# Thinning may tell them the mask (``compressor.thinning.norms``); other subclasses are mixing.
LN_CHANNEL_DIM = {"torch.nn.modules.normalization.LayerNorm": -1,
                  "torchvision.models.convnext.LayerNorm2d": 1}
