"""compress_classifier --quantize-eval and the --qe-* flags: what maps, what is refused (exit 2)."""
import json
import os

import pytest
import torch

from compressor.checkpoint import read_checkpoint
from compressor_apps.compress_classifier import main
from compressor_apps.parser import build_parser
from compressor_apps.quantize import QEConfig
from compressor_apps.run_config import UsageError

pytest.importorskip("torchao")

FAST = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.4",
        "--lr", "0.05", "--no-progress-bar"]
QAT = """quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
    per_channel_wts: true
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 1
    ending_epoch: 10
"""


def qe(*flags):
    return QEConfig.from_args(build_parser().parse_args(["--quantize-eval", *flags]))


@pytest.mark.parametrize("flags,field,value", [
    ([], "mode_activations", "ASYMMETRIC_UNSIGNED"),
    ([], "per_channel", False),
    (["--qe-per-channel"], "per_channel", True),
    (["--qepc"], "per_channel", True),
    (["--qe-mode", "sym"], "mode_activations", "SYMMETRIC"),
    (["--qem", "sym_restr"], "mode_weights", "SYMMETRIC"),
    (["--qe-mode-acts", "asym_s"], "mode_activations", "ASYMMETRIC_SIGNED"),
    (["--qema", "sym", "--qemw", "sym"], "mode_activations", "SYMMETRIC"),
    (["--qe-bits-acts", "6"], "bits_activations", 6),
    (["--qebw", "4"], "bits_weights", 4),
    (["--qe-clip-acts", "histogram"], "observer", "histogram"),
    (["--qeca", "none"], "observer", "minmax"),
    (["--qe-no-quant-layers", "conv1", "fc2"], "float_layers", ("conv1", "fc2")),
    (["--qe-convert-pytorch", "--qe-pytorch-backend", "fbgemm"], "bits_weights", 8),
])
def test_mapped_flags(flags, field, value):
    assert getattr(qe(*flags).settings, field) == value


def test_calibration_is_a_count_or_a_fraction_of_the_training_batches():
    assert qe().n_batches(100) == 10
    assert qe("--qe-calibration", "3").n_batches(100) == 3
    assert qe("--qe-calibration", "0.25").n_batches(100) == 25
    assert qe("--qe-calibration", "500").n_batches(100) == 100


REFUSED = [
    (["--qe-mode-wts", "asym_u"], r"--qe-mode-wts asym_u is not supported: torchao's x86 quantizer takes symmetric weights only"),
    (["--qe-mode", "asym_s"], r"--qe-mode-wts asym_s is not supported"),
    (["--qe-bits-acts", "16"], r"--qe-bits-acts must be 2\.\.8 for the int8 model; got 16"),
    (["--qe-bits-wts", "1"], r"--qe-bits-wts must be 2\.\.8"),
    (["--qe-bits-accum", "16"], r"--qe-bits-accum is not supported: the backend accumulates in int32"),
    (["--qe-clip-acts", "avg"], r"--qe-clip-acts avg is not supported: valid: none"),
    (["--qe-clip-acts", "laplace"], r"--qe-clip-acts laplace is not supported"),
    (["--qe-clip-n-stds", "2"], r"--qe-clip-n-stds is not supported"),
    (["--qe-no-clip-layers", "fc"], r"--qe-no-clip-layers is not supported"),
    (["--qe-scale-approx-bits", "8"], r"--qe-scale-approx-bits is not supported"),
    (["--qe-save-fp-weights"], r"--qe-save-fp-weights is not supported"),
    (["--qe-pytorch-backend", "qnnpack"], r"--qe-pytorch-backend qnnpack is not supported"),
    (["--qe-stats-file", "s.yaml"], r"--qe-stats-file is not supported: statistics files are not read"),
    (["--qe-dynamic"], r"--qe-dynamic is not supported: only static int8"),
    (["--qe-config-file", "q.yaml"], r"--qe-config-file is not supported"),
    (["--qe-lapq"], r"--qe-lapq is not supported: LAPQ"),
    (["--qe-coordinate-search"], r"--qe-lapq is not supported"),
    (["--qe-calibration", "1.5"], r"--qe-calibration must be a whole number of batches >= 1 or a fraction"),
]


@pytest.mark.parametrize("flags,message", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_refused_flags_say_why_on_one_line_with_exit_2(tmp_path, capsys, flags, message):
    with pytest.raises(UsageError, match=message):
        qe(*flags)
    out = tmp_path / "out"
    assert main([*FAST, "--quantize-eval", *flags, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " + message.replace("\\", "")[:20] in err[0].replace("\\", "")
    assert not out.exists()


def test_qe_flags_need_quantize_eval(capsys):
    assert main([*FAST, "--qe-per-channel"]) == 2
    assert "--qe-per-channel needs --quantize-eval" in capsys.readouterr().err


@pytest.mark.slow          # trains with the app in-process, twice
def test_qat_run_resumes_and_ends_with_a_saved_int8_model(tmp_path, write_yaml):
    sched = write_yaml(QAT)
    out = tmp_path / "a"
    assert main([*FAST, "--epochs", "2", "--compress", sched, "-o", str(out)]) == 0
    (run,) = os.listdir(out)
    ckpt = read_checkpoint(str(out / run / "checkpoint.pth.tar"))
    (state,) = [v for k, v in ckpt["compression_sched"]["policies"].items() if ":quantizer:" in k]
    assert state["prepared"] and state["ranges"]
    out2 = tmp_path / "b"
    assert main([*FAST, "--epochs", "3", "--compress", sched, "--resume-from",
                 str(out / run / "checkpoint.pth.tar"), "--quantize-eval", "--qe-per-channel",
                 "--qe-calibration", "2", "-o", str(out2)]) == 0
    (run2,) = os.listdir(out2)
    meta = json.loads((out2 / run2 / "quantized.json").read_text())
    assert meta["calibration_batches"] == 2 and meta["settings"]["per_channel"] is True
    model = torch.export.load(str(out2 / run2 / "quantized.pt2")).module()
    x = torch.randn(5, *meta["input_shape"])
    assert model(x).shape == (5, 10)
