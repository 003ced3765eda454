"""The graph package: its place below pruners and thinning, and dispatch through its rule tables.

The channel analysis itself is exercised end to end by the thinning tests (every zoo model, random
networks); these tests check what the package's layout promises: it imports nothing above it, the
library has no module-level import circles, a layer subclass takes its nearest listed base's rule,
supporting a new op is one table entry, and the graph takes tensors and shapes only.
"""
import ast
import pathlib

import pytest
import torch
from torch import nn

import compressor
from compressor.errors import CompressorError, ThinningError
from compressor.graph import TraceError, analyze_graph, trace
from compressor.graph.function_rules import METHOD_RULES, keeps_zero
from compressor.graph.module_rules import MODULE_RULES, rule_for

from helpers.models import Untraceable

PACKAGE = pathlib.Path(compressor.__file__).parent


def _module_imports(path: pathlib.Path, package: str, anywhere: bool = False):
    """The compressor modules a file imports at module level, or ``anywhere`` (inside functions
    too), relative imports resolved."""
    pkg = package.split(".")
    tree = ast.parse(path.read_text())
    for node in (ast.walk(tree) if anywhere else tree.body):
        if isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module:   # ``from . import x`` imports x, not the package's other modules
                yield mod
            yield from (f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _library_modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("compressor",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out[name] = (path, package)
    return out


def test_graph_imports_nothing_above_it():
    """Only the graph itself, errors, masks and (lazily) the activation table, as
    docs/architecture.md says; imports inside functions count too."""
    allowed = ("compressor.graph", "compressor.errors", "compressor.masks", "compressor.activations")
    for name, (path, package) in _library_modules().items():
        if name.startswith("compressor.graph"):
            bad = [m for m in _module_imports(path, package, anywhere=True)
                   if m.startswith("compressor") and not m.startswith(allowed)]
            assert not bad, f"{name} imports {bad}"


def test_no_module_level_import_circles():
    modules = _library_modules()
    edges = {name: {m for m in _module_imports(path, package) if m in modules and m != name}
             for name, (path, package) in modules.items()}
    state = {}

    def visit(name, stack):
        state[name] = "open"
        for nxt in edges[name]:
            if state.get(nxt) == "open":
                pytest.fail(f"import circle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])


class _Net(nn.Module):
    def __init__(self, middle: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.middle = middle
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.middle(self.conv1(x)))


def test_subclass_takes_nearest_listed_rule():
    """torch.fx keeps torch.nn's own layers as leaves; their subclasses there take the rule of the
    nearest class the table lists."""
    assert rule_for(nn.ReLU6()) is MODULE_RULES[nn.ReLU6]    # not its base Hardtanh's rule
    assert rule_for(nn.Hardtanh()) is MODULE_RULES[nn.Hardtanh]
    assert rule_for(nn.SyncBatchNorm(4)) is MODULE_RULES[nn.modules.batchnorm._BatchNorm]
    assert rule_for(nn.ConvTranspose2d(2, 2, 1)) is MODULE_RULES[nn.modules.conv._ConvNd]
    assert rule_for(nn.Bilinear(2, 2, 2)) is None
    thinnable, blocked, _ = analyze_graph(_Net(nn.ReLU6()), (3, 8, 8)).layer_status()
    assert "conv1" in thinnable and "conv1" not in blocked


def test_unlisted_layer_blocks_its_channels():
    _, blocked, _ = analyze_graph(_Net(nn.ChannelShuffle(2)), (3, 8, 8)).layer_status()
    assert "ChannelShuffle 'middle' cannot be followed" in blocked["conv1"]


class _Sinh(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x).sinh())


def test_new_op_is_one_table_entry(monkeypatch):
    _, blocked, _ = analyze_graph(_Sinh(), (3, 8, 8)).layer_status()
    assert "Tensor.sinh cannot be followed" in blocked["conv1"]
    monkeypatch.setitem(METHOD_RULES, "sinh", keeps_zero)   # sinh(0) == 0
    thinnable, blocked, _ = analyze_graph(_Sinh(), (3, 8, 8)).layer_status()
    assert "conv1" in thinnable and "conv1" not in blocked


def test_graph_takes_tensors_and_shapes_only():
    net = _Net(nn.ReLU())
    assert analyze_graph(net, (3, 8, 8)).input_shape == (2, 3, 8, 8)
    assert analyze_graph(net, torch.zeros(1, 3, 6, 6)).input_shape == (1, 3, 6, 6)
    with pytest.raises(TypeError, match="example_input must be a tensor, the shape of one sample"):
        analyze_graph(net, "cifar10")   # dataset names are thinning's public functions' business


def test_trace_errors_name_the_model():
    with pytest.raises(TraceError, match=r"cannot trace Untraceable with torch.fx: \w+") as info:
        trace(Untraceable())
    assert isinstance(info.value, CompressorError) and info.value.model == "Untraceable"
    with pytest.raises(ThinningError, match="cannot thin Untraceable: torch.fx cannot trace its "
                                            "forward"):
        analyze_graph(Untraceable(), (3, 8, 8))
