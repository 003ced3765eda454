"""compressor.deploy.export: the saved .pt2 runs in a Python that never imports compressor
(``python -I``, the repository off sys.path), at any batch size, and computes what the model does
(float64: exactly, up to folding's rounding; int8: close); bad arguments are refused."""
import re
import subprocess
import sys
import warnings

import pytest
import torch

from compressor.deploy import ExportError, export_deploy, load_program
from compressor.models import create_model
from compressor.thinning import contract_model
from helpers.exact import assert_same_function
from helpers.thinning import randomize_bn, zero_structures

# Runs in a fresh isolated interpreter from a temp folder: loads the program, runs it on the
# saved inputs, saves the outputs, and fails if compressor was imported on the way.
RUNNER = """
import sys, torch
{pre}
ep = torch.export.load(sys.argv[1])
m = ep.module()
xs = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    outs = [m(x) for x in xs]
torch.save(outs, sys.argv[3])
assert 'compressor' not in sys.modules, 'compressor was imported'
assert not any('/work/main' in p or p in ('', '.') for p in sys.path), sys.path
print('torchao' in sys.modules)
"""


def _run_isolated(tmp_path, program, xs, pre=""):
    torch.save(xs, tmp_path / "in.pt")
    proc = subprocess.run([sys.executable, "-I", "-c", RUNNER.format(pre=pre), str(program),
                           str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=True), proc.stdout.strip()


def _thinned_resnet20():
    model = create_model("resnet20_cifar", "cifar10")
    randomize_bn(model, seed=2)
    zero_structures(model, (3, 32, 32), 0.4, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contract_model(model, (3, 32, 32))
    return model.eval()


@pytest.mark.slow          # a subprocess
def test_float_program_runs_without_compressor_and_equals_the_model(tmp_path, float64):
    model = _thinned_resnet20()
    res = export_deploy(model, torch.randn(2, 3, 32, 32), tmp_path / "m.pt2")
    assert res.path.is_file() and res.size_bytes == res.path.stat().st_size > 0
    assert res.fold.folded and not res.fold.skipped and not res.int8
    assert res.params == sum(p.numel() for p in res.model.parameters())
    assert 0 < res.macs
    xs = [torch.randn(1, 3, 32, 32), torch.randn(32, 3, 32, 32)]   # batch is dynamic
    outs, torchao_loaded = _run_isolated(tmp_path, res.path, xs)
    assert torchao_loaded == "False"         # a float program needs only torch
    with torch.no_grad():
        for x, out in zip(xs, outs):
            assert_same_function(out, model(x))


@pytest.mark.slow          # a subprocess; PT2E calibration
def test_int8_program_runs_with_torch_alone(tmp_path):
    """The int8 program's quantize/dequantize ops are registered by a module torch ships
    (``torch.ao.quantization.fx._decomposed``): loading it needs neither torchao nor compressor."""
    torch.manual_seed(0)
    model = create_model("lenet5", "mnist").eval()
    calib = [torch.randn(16, 1, 28, 28) for _ in range(4)]
    res = export_deploy(model, calib[0], tmp_path / "q.pt2", int8=True, calibration=calib)
    assert res.int8
    targets = {str(n.target) for n in res.program.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets), targets
    xs = [torch.randn(1, 1, 28, 28), torch.randn(32, 1, 28, 28)]
    outs, torchao_loaded = _run_isolated(tmp_path, res.path, xs,
                                         pre="import torch.ao.quantization.fx._decomposed")
    assert torchao_loaded == "False"
    with torch.no_grad():
        for x, out in zip(xs, outs):
            ref = model(x)
            # int8 rounding, not exactness: within a tenth of the output's scale
            assert (out - ref).abs().max() <= 0.1 * ref.abs().max()
    again = load_program(res.path).module()(xs[0])
    assert torch.equal(again, outs[0])


def test_bad_export_arguments_are_refused(tmp_path):
    model = create_model("lenet5", "mnist")
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ExportError, match=re.escape("m.onnx: the file name must end in .pt2")):
        export_deploy(model, x, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match=r"nope/m\.pt2: folder .*nope does not exist"):
        export_deploy(model, x, tmp_path / "nope" / "m.pt2")
    with pytest.raises(ExportError, match=r"int8 export: calibration batches are needed"):
        export_deploy(model, x, tmp_path / "m.pt2", int8=True)
    with pytest.raises(ExportError, match=r"int8 export: no calibration batches; give at least one"):
        export_deploy(model, x, tmp_path / "m.pt2", int8=True, calibration=[])
    assert not list(tmp_path.iterdir())
    assert model.training, "the model's mode is restored"
