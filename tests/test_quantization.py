"""Quantization: the quantizers: section and quantizer: policy (QAT in place), and PTQ int8."""
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from compressor import ScheduleError, dict_config, file_config, models
from compressor.quantization import PACTQuantizer, find_quantizer
from compressor.quantization import fake_quant as fq
from helpers import make_batches, train

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

QAT = """
quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
    per_channel_wts: true
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}
    overrides:
      fc2: {bits_weights: null, bits_activations: null}
pruners:
  p:
    class: AutomatedGradualPruner
    initial_sparsity: 0.3
    final_sparsity: 0.6
    weights: [conv2.weight, fc1.weight]
policies:
  - pruner: {instance_name: p}
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - quantizer: {instance_name: q}
    starting_epoch: 1
    ending_epoch: 3
    frequency: 1
"""


def lenet():
    torch.manual_seed(0)
    return models.create_model("lenet5", "mnist")


def batches(n=3):
    return make_batches(n, batch=8, shape=(1, 28, 28))


def build(write_yaml, text, model=None, optimizer=None):
    model = model or lenet()
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                             weight_decay=1e-4)
    return model, optimizer, file_config(model, optimizer, write_yaml(text))


def test_qat_is_inserted_at_the_starting_epoch_not_before(write_yaml):
    model, opt, sched = build(write_yaml, QAT)
    q = find_quantizer(sched)
    x = torch.randn(4, 1, 28, 28)
    train(model, opt, sched, batches(), [0])
    assert not q.prepared and "forward" not in vars(model.conv1)
    keys = list(model.state_dict())
    sched.on_epoch_begin(1, opt)
    assert q.prepared and "forward" in vars(model.conv1) and "forward" not in vars(model.fc2)
    assert list(model.state_dict()) == keys           # same modules, parameters, keys
    with torch.no_grad():
        w = model.conv1.weight
        assert torch.equal(model.conv1(x), torch.nn.functional.conv2d(
            x, fq.range_linear_weight(w, 8, fq.SYMMETRIC, True), model.conv1.bias))
    q.release()
    assert "forward" not in vars(model.conv1)


def test_pruned_weights_stay_exactly_zero_through_qat(write_yaml):
    model, opt, sched = build(write_yaml, QAT)
    masks = sched.store.masks

    def check(epoch, step):
        for name in ("conv2.weight", "fc1.weight"):
            p = dict(model.named_parameters())[name]
            assert torch.all(p[masks[name] == 0] == 0)
    train(model, opt, sched, batches(), 3, after_step=check)
    assert find_quantizer(sched).prepared
    zero = masks["fc1.weight"] == 0
    assert zero.any()
    # and the fake-quantized weight the forward uses is zero there too
    used = fq.range_linear_weight(model.fc1.weight, 8, fq.SYMMETRIC, True)
    assert torch.all(used[zero] == 0)


def test_qat_resume_restores_fake_quantization_and_ranges(write_yaml):
    model, opt, sched = build(write_yaml, QAT)
    train(model, opt, sched, batches(), 2)
    state, weights = sched.state_dict(), model.state_dict()
    model2, opt2, sched2 = build(write_yaml, QAT, model=lenet())
    model2.load_state_dict(weights)
    sched2.load_state_dict(state)
    assert find_quantizer(sched2).prepared
    x = torch.randn(4, 1, 28, 28)
    model.eval(), model2.eval()
    assert torch.equal(model(x), model2(x))


def test_dorefa_and_pact_train_and_pact_learns_its_clips(write_yaml):
    text = """
quantizers:
  q: {class: PACTQuantizer, bits_activations: 4, bits_weights: 3, act_clip_init_val: 8.0,
      act_clip_decay: 0.0001, overrides: {conv1: {bits_weights: null}}}
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 1
"""
    model, opt, sched = build(write_yaml, text)
    train(model, opt, sched, batches(2), 1)
    q = find_quantizer(sched)
    assert isinstance(q, PACTQuantizer) and len(opt.param_groups) == 2
    assert opt.param_groups[1]["weight_decay"] == 0.0001
    assert sorted(q.clips) == ["relu1", "relu2", "relu3"]
    assert any(float(a.detach()) != 8.0 for a in q.clips.values())
    with pytest.raises(ValueError, match="PACT run cannot be resumed after its quantizer started"):
        q.load_state_dict(sched.state_dict()["policies"][sched.keys[0]])
    model, opt, sched = build(write_yaml, text.replace("PACTQuantizer", "DorefaQuantizer")
                              .replace("act_clip_init_val: 8.0,\n      act_clip_decay: 0.0001, ", ""))
    losses = train(model, opt, sched, batches(2), 1)
    assert len(opt.param_groups) == 1 and losses


@pytest.mark.parametrize("args,message", [
    ("bits_weights: 40", "quantizers.q.bits_weights: must be 2..16 bits, 32 or null"),
    ("bits_weights: 1", "quantizers.q.bits_weights: 1-bit (binary) weights are not reproduced"),
    ("mode: SYM", "quantizers.q.mode: must be one of SYMMETRIC, ASYMMETRIC_UNSIGNED"),
    ("ema_decay: 1.5", "quantizers.q.ema_decay: must be a number in (0, 1)"),
    ("bits_bias: 8", "quantizers.q.bits_bias: biases stay float during QAT"),
    ("per_channel: true", "QuantAwareTrainRangeLinearQuantizer has no parameter 'per_channel'"),
    ("overrides: {conv9: {bits_weights: 8}}", "'conv9' is not a module of the model"),
    ("overrides: {conv1: {bits: 8}}", "quantizers.q.overrides.conv1.bits: unknown override key"),
])
def test_user_errors_name_file_line_and_key(write_yaml, args, message):
    text = f"""quantizers:
  q:
    class: QuantAwareTrainRangeLinearQuantizer
    {args}
policies:
  - quantizer: {{instance_name: q}}
    epochs: [0]
"""
    with pytest.raises(ScheduleError, match=r"schedule\.yaml:\d+ ") as e:
        build(write_yaml, text)
    assert message in str(e.value)


def test_schedule_level_errors(write_yaml):
    two = """quantizers:
  a: {class: DorefaQuantizer}
  b: {class: DorefaQuantizer}
policies: []
"""
    with pytest.raises(ScheduleError, match="one quantizer per schedule"):
        build(write_yaml, two)
    with pytest.raises(ScheduleError, match="unknown quantizer class 'PostTrainLinearQuantizer'"):
        build(write_yaml, "quantizers:\n  a: {class: PostTrainLinearQuantizer}\npolicies: []\n")
    with pytest.raises(ScheduleError, match="'z' is not defined in 'quantizers'"):
        dict_config(lenet(), None, {"quantizers": {"a": {"class": "DorefaQuantizer"}},
                                    "policies": [{"quantizer": {"instance_name": "z"}, "epochs": [0]}]})


def test_pact_without_optimizer_is_refused_when_it_starts(write_yaml):
    model = lenet()
    sched = dict_config(model, None, {"quantizers": {"a": {"class": "PACTQuantizer",
                                                           "bits_activations": 4}},
                                      "policies": [{"quantizer": {"instance_name": "a"}, "epochs": [0]}]})
    with pytest.raises(ValueError, match="PACTQuantizer learns new parameters during QAT; it needs "
                                         "the optimizer"):
        sched.on_epoch_begin(0)


# -- post-training int8 (torchao PT2E) ------------------------------------------------------------

def test_ptq_settings_and_safe_round_trip(tmp_path):
    pytest.importorskip("torchao")
    from compressor.quantization import ptq
    model = lenet().eval()
    x = torch.randn(8, 1, 28, 28)
    gm = ptq.quantize_int8(model, x, [x], ptq.PTQSettings(float_layers=("fc2",)))
    err = (gm(x) - model(x)).abs().max()
    assert err < 0.1 * model(x).abs().max()
    path = ptq.save_int8(gm, x, str(tmp_path / "m.pt2"), {"top1": 1.0})
    loaded = ptq.load_int8(path)
    for n in (1, 3):   # the batch dimension is dynamic
        assert torch.equal(loaded(x[:n]), gm(x[:n]))
    assert (tmp_path / "m.json").exists()
    # it loads and runs with torch alone: torchao and compressor blocked in a fresh process
    code = ("import sys; sys.modules['torchao'] = None; sys.modules['compressor'] = None\n"
            "import torch, torch.ao.quantization.fx._decomposed\n"
            f"m = torch.export.load({str(path)!r}).module()\n"
            "print(tuple(m(torch.zeros(2, 1, 28, 28)).shape))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.strip() == "(2, 10)", out.stderr[-500:]
    with pytest.raises(ValueError, match="weights must be SYMMETRIC"):
        ptq.quantize_int8(model, x, [x], ptq.PTQSettings(mode_weights=fq.ASYMMETRIC_UNSIGNED))
    with pytest.raises(ValueError, match="bits_weights must be 2..8"):
        ptq.quantize_int8(model, x, [x], ptq.PTQSettings(bits_weights=16))


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.exists(), reason="needs the shared MNIST files")
def test_int8_lenet5_on_real_mnist_is_within_0_3_points_of_float():
    pytest.importorskip("torchao")
    from compressor.data.mnist import load_mnist
    from compressor.quantization import ptq
    splits = load_mnist(str(MNIST_DIR))
    tx, ty, vx, vy = splits[0][:3200], splits[1][:3200], splits[2][:1000], splits[3][:1000]
    norm = lambda a: (a.float() / 255 - 0.1307) / 0.3081   # noqa: E731
    tx, vx = norm(tx), norm(vx)
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(0)
    for i in torch.randperm(3200).split(32):
        opt.zero_grad()
        nn.functional.cross_entropy(model(tx[i]), ty[i]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        float_acc = (model(vx).argmax(1) == vy).float().mean().item()
        gm = ptq.quantize_int8(model, tx[:64], [tx[k:k + 64] for k in range(0, 640, 64)])
        int8_acc = (gm(vx).argmax(1) == vy).float().mean().item()
    print(f"float {float_acc:.3f} int8 {int8_acc:.3f}")
    assert float_acc > 0.8   # 100 steps: trained, far from chance (0.1)
    # 1000 test images: one image is 0.1 points; the bound is the goal, 0.3 points
    assert abs(float_acc - int8_acc) <= 0.003, (float_acc, int8_acc)


def test_every_weight_transform_keeps_exact_zeros():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    w[w.abs() < 0.5] = 0
    zero = w == 0
    for bits in (2, 3, 8):
        assert torch.all(fq.dorefa_weight(w, bits)[zero] == 0)
        for mode in fq.MODES:
            for per_channel in (False, True):
                assert torch.all(fq.range_linear_weight(w, bits, mode, per_channel)[zero] == 0)
