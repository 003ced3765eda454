"""Knowledge distillation (issue 14): the KD term, the frozen teacher, resume, YAML, the app, errors."""
import copy
import re
import io
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor
from compressor import checkpoint as ckpt_io
from compressor import models
from compressor.distillation import (DISTILL_LOSS, DistillationError, DistillationLossWeights,
                                     KnowledgeDistillationPolicy, distillation_kl)
from compressor.errors import ComponentArgError, ScheduleError

from helpers import TinyNet, make_batches, train

pytestmark = pytest.mark.usefixtures("one_thread")


def kl_by_hand(s, t, T):
    """sum_c p_t (log p_t - log p_s), averaged over samples, written out without F.kl_div."""
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(1, keepdim=True)
    log_p_s = s / T - torch.log(torch.exp(s / T).sum(1, keepdim=True))
    return (p_t * (torch.log(p_t) - log_p_s)).sum() / s.shape[0]


def test_kd_term_equals_the_formula_on_fixed_logits(float64):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g) * 3, torch.randn(6, 10, generator=g) * 3
    for T in (1.0, 4.0, 0.5):
        assert torch.allclose(distillation_kl(s, t, T), kl_by_hand(s, t, T), rtol=1e-12, atol=0)


def test_policy_loss_is_ws_loss_plus_wd_t2_kl_and_reports_the_unscaled_kl(float64):
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    sched = compressor.CompressionScheduler(student)
    policy = KnowledgeDistillationPolicy(student, teacher, temperature=3.0,
                                         loss_weights=DistillationLossWeights(0.7, 0.2, 0.0))
    sched.add_policy(policy, epochs=[0])
    (x, y), = make_batches(1)
    sched.on_epoch_begin(0, opt)
    sched.on_minibatch_begin(0, 0, 1, opt)
    logits = student(x)
    loss = F.cross_entropy(logits, y)
    out = sched.before_backward_pass(0, 0, 1, loss, opt, return_loss_components=True)
    with torch.no_grad():
        kl = kl_by_hand(logits, teacher.eval()(x), 3.0)
    (name, value), = out.loss_components
    assert name == DISTILL_LOSS == "Distill Loss"
    assert torch.allclose(value, kl, rtol=1e-12, atol=0)
    assert torch.allclose(out.overall_loss, 0.2 * loss + 0.7 * 9.0 * kl, rtol=1e-12, atol=0)


def test_teacher_never_changes_never_trains_and_never_lands_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet()
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    sched = compressor.CompressionScheduler(student)
    policy = KnowledgeDistillationPolicy(student, teacher, temperature=4.0)
    sched.add_policy(policy, epochs=[0, 1])
    logged = train(student, opt, sched, make_batches(3), epochs=2)
    assert all(c[0].name == DISTILL_LOSS and c[0].value > 0 for c in logged)
    assert not teacher.training and all(not p.requires_grad and p.grad is None
                                        for p in teacher.parameters())
    for k, v in teacher.state_dict().items():   # batch-norm statistics included: eval mode
        assert torch.equal(v, before[k]), k
    path = ckpt_io.save_checkpoint(str(tmp_path / "c.pth.tar"), student, opt, sched)
    ckpt = ckpt_io.read_checkpoint(path)
    assert set(ckpt["state_dict"]) == set(student.state_dict())
    assert set(student.state_dict()) == set(TinyNet().state_dict())   # no teacher submodule
    saved = [t for t in _tensors(ckpt)]
    for tv in teacher.state_dict().values():
        if tv.numel() > 1:
            assert not any(s.shape == tv.shape and torch.equal(s, tv) for s in saved)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _kd_run(epochs, start=0, state=None, features=None):
    """A TinyNet student with an AGP pruner and KD from a fixed TinyNet teacher (float64)."""
    torch.manual_seed(0)
    student = TinyNet()
    teacher = TinyNet()
    torch.manual_seed(1)
    for p in teacher.parameters():
        p.data.normal_(0, 0.3)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    sched = compressor.dict_config(student, opt, {
        "pruners": {"a": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.2,
                          "final_sparsity": 0.6, "weights": ["fc.weight", "conv2.weight"]}},
        "policies": [{"pruner": {"instance_name": "a"}, "starting_epoch": 0, "ending_epoch": 3,
                      "frequency": 1}]})
    sched.add_policy(KnowledgeDistillationPolicy(student, teacher, temperature=2.0,
                                                 features=features),
                     starting_epoch=0, ending_epoch=4)
    if state is not None:
        ckpt_io.restore(state, student, opt, sched)
    batches = lambda e: make_batches(3, seed=10 + e)
    train(student, opt, sched, batches, epochs=epochs, start_epoch=start)
    return student, opt, sched


@pytest.mark.parametrize("features", [None, {"conv2": "conv1"}])
def test_resume_with_kd_on_equals_an_uninterrupted_run(float64, features):
    full, _, _ = _kd_run(4, features=features)
    part, opt, sched = _kd_run(2, features=features)
    buf = io.BytesIO()
    torch.save(ckpt_io.make_checkpoint(part, opt, sched, epoch=1), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed, _, _ = _kd_run(4, start=2, state=state, features=features)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _teacher_checkpoint(tmp_path, arch="simplenet_v2_mnist", thin=False, **kwargs):
    """A checkpoint of a zoo network (thinned by removing half of conv2's filters, on request)."""
    torch.manual_seed(3)
    model = models.create_model(arch, **kwargs)
    if thin:
        with torch.no_grad():
            model.conv2.weight[::2] = 0
            model.conv2.bias[::2] = 0
        compressor.thinning.remove_filters(model, (1, 28, 28))
        assert model.conv2.weight.shape[0] == 25
    path = str(tmp_path / f"{arch}{'_thin' if thin else ''}.pth.tar")
    ckpt_io.save_checkpoint(path, model, arch=arch, dataset="mnist")
    return path, model


def _mnist_batches(n=2, batch=8, seed=0):
    return make_batches(n, batch=batch, seed=seed, shape=(1, 28, 28))


@pytest.mark.parametrize("thin_teacher", [False, True])
def test_a_yaml_schedule_prunes_thins_and_distills_in_one_run(tmp_path, thin_teacher):
    path, teacher_model = _teacher_checkpoint(tmp_path, thin=thin_teacher)
    torch.manual_seed(0)
    student = models.create_model("simplenet_v2_mnist")
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    sched = compressor.dict_config(student, opt, {
        "pruners": {"f": {"class": "L1RankedStructureParameterPruner", "desired_sparsity": 0.5,
                          "group_type": "Filters", "weights": ["conv1.weight"]}},
        "extensions": {
            "thin": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                     "dataset": "mnist"},
            "kd": {"class": "KnowledgeDistillationPolicy", "teacher_checkpoint": path,
                   "temperature": 2.0, "distill_weight": 0.7, "student_weight": 0.3,
                   "features": {"conv1": "conv1"}, "dataset": "mnist"}},
        "policies": [{"extension": {"instance_name": "kd"}, "starting_epoch": 0,
                      "ending_epoch": 3, "frequency": 1},
                     {"pruner": {"instance_name": "f"}, "epochs": [0]},
                     {"extension": {"instance_name": "thin"}, "epochs": [1]}]})
    policy = next(p for p in sched.ordered if isinstance(p, KnowledgeDistillationPolicy))
    assert policy.teacher.conv2.weight.shape[0] == (25 if thin_teacher else 50)   # recipe replayed
    teacher_state = copy.deepcopy(policy.teacher.state_dict())
    proj = []   # the projection after each step, once there is one

    def keep(epoch, i):
        if "conv1" in policy.features.projections:
            proj.append(policy.features.projections["conv1"].weight.detach().clone())

    logged = train(student, opt, sched, lambda e: _mnist_batches(seed=e), epochs=3, after_step=keep)
    assert student.conv1.weight.shape[0] == 10                     # thinned at epoch 1
    assert [c.name for c in logged[-1]] == [DISTILL_LOSS, "Feature Loss"]
    # 20 = 20 channels needed no projection; after thinning one maps 10 -> 20, and it trains
    assert len(proj) == 4 and proj[-1].shape[:2] == (20, 10) and not torch.equal(proj[-1], proj[-2])
    for k, v in policy.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k


def test_the_projection_follows_thinning_of_the_student_layer(tmp_path):
    torch.manual_seed(0)
    student, teacher = models.create_model("simplenet_v2_mnist"), models.create_model("simplenet_v2_mnist")
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    policy = KnowledgeDistillationPolicy(student, teacher, features={"conv2": "conv2"})
    sched = compressor.CompressionScheduler(student)
    sched.add_policy(policy, epochs=[0, 1])
    train(student, opt, sched, _mnist_batches(1), epochs=[0])
    assert "conv2" not in policy.features.projections            # same width: no projection
    with torch.no_grad():
        student.conv2.weight[1::2] = 0
        student.conv2.bias[1::2] = 0
    compressor.thinning.remove_filters(student, (1, 28, 28), optimizer=opt)
    train(student, opt, sched, _mnist_batches(1), epochs=[1])
    assert policy.features.projections["conv2"].weight.shape[:2] == (50, 25)


def test_a_thinned_student_keeps_distilling_with_a_projection_made_before_thinning():
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet()
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    policy = KnowledgeDistillationPolicy(student, teacher, features={"conv2": "conv1"})
    sched = compressor.CompressionScheduler(student)
    sched.add_policy(policy, epochs=[0, 1])
    train(student, opt, sched, make_batches(1), epochs=[0])
    before = policy.features.projections["conv2"].weight.detach().clone()   # 16 -> 8
    with torch.no_grad():
        student.conv2.weight[:4] = 0
        student.conv2.bias[:4] = 0
    compressor.thinning.remove_filters(student, (1, 8, 8), optimizer=opt)
    train(student, opt, sched, make_batches(1), epochs=[1], after_step=lambda e, i: None)
    after = policy.features.projections["conv2"].weight
    assert after.shape[:2] == (8, 12)
    # the kept columns were the projection's columns 4..15 (then one SGD step)
    assert torch.allclose(after.detach(), before[:, 4:], atol=0.05)


def test_distillation_needs_the_student_forward_between_minibatch_begin_and_backward():
    student, teacher = TinyNet(), TinyNet()
    sched = compressor.CompressionScheduler(student)
    sched.add_policy(KnowledgeDistillationPolicy(student, teacher), epochs=[0])
    (x, y), = make_batches(1)
    loss = F.cross_entropy(student(x), y)   # no on_minibatch_begin before the forward
    with pytest.raises(DistillationError, match=r"saw no training forward pass of the student in "
                                                r"this minibatch: call scheduler.on_minibatch_begin"):
        sched.before_backward_pass(0, 0, 1, loss)


# -- user errors -------------------------------------------------------------------------------
class FiveClasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 8), 1))


def test_a_teacher_with_other_classes_is_refused_in_the_library():
    with pytest.raises(ComponentArgError, match=r"teacher: the teacher \(FiveClasses\) outputs 5 "
                                                r"classes, the student \(TinyNet\) 10 classes"):
        KnowledgeDistillationPolicy(TinyNet(), FiveClasses(), input_shape=[1, 8, 8])
    policy = KnowledgeDistillationPolicy(TinyNet(), FiveClasses())   # no shape known: first batch
    sched = compressor.CompressionScheduler(policy.student)
    sched.add_policy(policy, epochs=[0])
    with pytest.raises(DistillationError, match=r"teacher's logits have shape \[8, 5\], the "
                                                r"student's \[8, 10\]"):
        train(policy.student, torch.optim.SGD(policy.student.parameters(), lr=0.1), sched,
              make_batches(1), epochs=1)


def _kd_yaml(write_yaml, **args):
    lines = "\n".join(f"    {k}: {v}" for k, v in args.items())
    return write_yaml(f"version: 1\nextensions:\n  kd:\n    class: KnowledgeDistillationPolicy\n"
                      f"{lines}\npolicies:\n  - extension:\n      instance_name: kd\n    epochs: [0]\n")


@pytest.mark.parametrize("args, message", [
    ({"teacher": "lenet5", "temperature": 0}, r"kd\.temperature: must be a finite number > 0; got 0"),
    ({"teacher": "lenet5", "temperature": ".nan"}, r"kd\.temperature: must be a finite number; got nan"),
    ({"teacher": "lenet5", "distill_weight": -0.5}, r"kd\.distill_weight: must be a finite number >= 0; got -0\.5"),
    ({"teacher": "lenet5", "student_weight": ".inf"}, r"kd\.student_weight: must be a finite number; got inf"),
    ({"teacher": "lenet5", "teacher_weight": 0.2}, r"kd\.teacher_weight: must be 0: training the teacher is not implemented"),
    ({"teacher": "lenet5", "distill_weight": 0, "student_weight": 0}, r"both 0: nothing would be trained"),
    ({"teacher_checkpoint": "no/such.pth.tar"}, r"kd\.teacher_checkpoint: teacher checkpoint not found: no/such\.pth\.tar"),
    ({"temperature": 2}, r"kd\.teacher: needs a teacher: an architecture name"),
    ({"teacher": "lenet_300_100", "features": "{conv1: conv1}"}, r"kd\.features\.conv1: the teacher has no layer 'conv1'"),
])
def test_each_yaml_error_names_the_file_line_and_key(write_yaml, args, message):
    path = _kd_yaml(write_yaml, **args)
    model = models.create_model("lenet5")
    with pytest.raises(ScheduleError, match=message) as e:
        compressor.file_config(model, torch.optim.SGD(model.parameters(), lr=0.1), path)
    assert str(e.value).startswith(f"{path}:") and "\n" not in str(e.value)


def test_a_yaml_teacher_with_other_classes_is_refused_with_its_location(write_yaml, tmp_path):
    path, _ = _teacher_checkpoint(tmp_path, arch="simplenet_v2_mnist", num_classes=7)
    sched = _kd_yaml(write_yaml, teacher_checkpoint=path, dataset="mnist")
    model = models.create_model("simplenet_v2_mnist")
    with pytest.raises(ScheduleError, match=r"kd\.teacher: .*simplenet_v2_mnist\.pth\.tar: the "
                                            r"teacher's classifier fc\.weight has 7 outputs, where "
                                            r"simplenet_v2_mnist predicts 10 classes"):
        compressor.file_config(model, torch.optim.SGD(model.parameters(), lr=0.1), sched)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": float("nan")}, r"temperature: must be a finite number > 0; got nan"),
    ({"temperature": -1.0}, r"temperature: must be a finite number > 0; got -1\.0"),
    ({"distill_weight": float("inf")}, r"distill_weight: must be a finite number >= 0; got inf"),
    ({"loss_weights": DistillationLossWeights(0.5, 0.5, 1.0)}, r"teacher_weight: must be 0"),
    ({"loss_weights": {"soft": 1.0}}, r"loss_weights\.soft: unknown weight; valid: distill, student, teacher"),
])
def test_each_library_error_names_the_argument(kwargs, message):
    with pytest.raises(ComponentArgError, match=message):
        KnowledgeDistillationPolicy(TinyNet(), TinyNet(), **kwargs)


# -- the app -----------------------------------------------------------------------------------
APP = ["--arch", "simplenet_v2_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.3",
       "--lr", "0.05", "--no-progress-bar"]


@pytest.mark.parametrize("flags, message", [
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-tw", "0.5"],
     r"--kd-teacher-wt must be 0: training the teacher is not implemented \(as in Distiller\); got 0\.5"),
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-temp", "0"], r"--kd-temperature must be a finite number > 0; got 0\.0"),
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-temperature", "inf"], r"--kd-temperature must be a finite number > 0; got inf"),
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-dw", "-1"], r"--kd-distill-wt must be a finite number >= 0; got -1\.0"),
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-student-wt", "nan"], r"--kd-student-wt must be a finite number >= 0; got nan"),
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-resume", "missing.pth.tar"],
     r"--kd-resume: teacher checkpoint not found: missing\.pth\.tar"),
    (["--kd-teacher", "lenett5"], r"--kd-teacher: .*lenett5"),
    (["--kd-temp", "4"], r"--kd-temp needs a teacher: --kd-teacher ARCH \(or --kd-resume PATH\)"),
    (["--kd-teacher", "simplenet_v2_mnist", "--kd-start-epoch", "-1"], r"--kd-start-epoch must be >= 0; got -1"),
])
def test_each_app_error_is_one_line_with_exit_2(tmp_path, capsys, flags, message):
    from compressor_apps.compress_classifier import main
    assert main(APP + ["-o", str(tmp_path / "o")] + flags) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()   # refused before anything was written


def test_the_app_refuses_a_teacher_checkpoint_for_other_classes_before_writing(tmp_path, capsys):
    from compressor_apps.compress_classifier import main
    path, _ = _teacher_checkpoint(tmp_path, arch="simplenet_v2_mnist", num_classes=7)
    assert main(APP + ["-o", str(tmp_path / "o"), "--kd-teacher", "simplenet_v2_mnist",
                       "--kd-resume", path]) == 2
    err = capsys.readouterr().err
    assert re.search(r"--kd-teacher simplenet_v2_mnist: .*the teacher's classifier fc\.weight has 7 "
                     r"outputs, where simplenet_v2_mnist predicts 10 classes", err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow          # trains with the app in-process (two short runs)
def test_a_distiller_kd_command_line_runs_unchanged(tmp_path):
    from compressor_apps.compress_classifier import main
    teacher, _ = _teacher_checkpoint(tmp_path, arch="simplenet_v2_mnist", thin=True)
    out = tmp_path / "o"
    # Distiller's spelling: the short aliases, a teacher weight of 0, a start epoch
    assert main(APP + ["--epochs", "2", "-o", str(out), "--kd-teacher", "simplenet_v2_mnist",
                       "--kd-resume", teacher, "--kd-temp", "5.0", "--kd-dw", "0.7",
                       "--kd-sw", "0.3", "--kd-tw", "0.0", "--kd-start-epoch", "1"]) == 0
    (run,) = os.listdir(out)
    import pandas as pd
    metrics = pd.read_csv(out / run / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    kd = metrics["train_Distill Loss"]
    assert math.isnan(kd[0]) and kd[1] > 0          # distilling from epoch 1 only
    ckpt = ckpt_io.read_checkpoint(str(out / run / "checkpoint.pth.tar"))
    assert set(ckpt["state_dict"]) == set(models.create_model("simplenet_v2_mnist").state_dict())
    assert "Distill Loss" in (out / run / "run.log").read_text()


@pytest.mark.slow          # torch.compile compiles (seconds)
def test_distillation_through_a_compiled_student_equals_eager(float64):
    def run(compile_it):
        torch.manual_seed(0)
        student, teacher = TinyNet(), TinyNet()
        opt = torch.optim.SGD(student.parameters(), lr=0.1)
        sched = compressor.CompressionScheduler(student)
        sched.add_policy(KnowledgeDistillationPolicy(student, teacher, temperature=2.0), epochs=[0, 1])
        forward = torch.compile(student) if compile_it else student
        logged = train(forward, opt, sched, make_batches(2), epochs=2)
        return student, [float(c[0].value.detach()) for c in logged]

    eager, eager_kd = run(False)
    compiled, compiled_kd = run(True)
    assert compiled_kd == pytest.approx(eager_kd, rel=1e-9)   # the hook saw every compiled forward
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.slow          # torchrun with two gloo ranks, the app in subprocesses
def test_the_app_distills_under_torchrun_with_a_teacher_on_every_rank(tmp_path):
    import socket
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    teacher, _ = _teacher_checkpoint(tmp_path, arch="simplenet_v2_mnist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
         "127.0.0.1", "--master_port", str(port), os.path.join(root, "apps", "compress_classifier.py"),
         *APP, "--cpu", "--epochs", "2", "-o", str(out), "--kd-resume", teacher, "--kd-temp", "4"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = os.listdir(out)
    import pandas as pd
    metrics = pd.read_csv(out / run / "metrics.csv")
    assert (metrics["train_Distill Loss"] > 0).all()
    ckpt = ckpt_io.read_checkpoint(str(out / run / "checkpoint.pth.tar"))
    assert set(ckpt["state_dict"]) == set(models.create_model("simplenet_v2_mnist").state_dict())


def test_kd_scratch_benchmark_narrows_reinitializes_and_budgets_like_the_app(tmp_path):
    """benchmarks/kd_mnist_scratch.py: the narrow shapes of the rows, fresh weights, Scratch-B's
    epochs as the app's --scratch B counts them, and a schedule that builds with and without KD."""
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from benchmarks import kd_mnist_scratch as ks
    torch.manual_seed(0)
    m = ks.narrow("lenet5", ks.NARROW["lenet5"])
    assert (m.conv1.weight.shape[0], m.conv2.weight.shape[:2], m.fc1.weight.shape[1]) == \
        (10, (25, 10), 25 * 16)
    # fresh weights: no unit left zero by the narrowing
    assert all(bool((m.get_submodule(n).weight.flatten(1).abs().sum(1) > 0).all())
               for n in ("conv1", "conv2"))
    mlp = ks.narrow("lenet_300_100", ks.NARROW["lenet_300_100_24x"])
    assert sum(p.numel() for n, p in mlp.named_parameters() if n.endswith("weight")) == 10284
    dense_macs, small_macs = ks.macs(models.create_model("lenet5")), ks.macs(m)
    assert (dense_macs, small_macs) == (2293000, 749000)
    assert ks.scratch_b_epochs(4, dense_macs, small_macs) == 13 == math.ceil(4 * 2293000 / 749000)
    assert ks.scratch_b_epochs(4, 100, 100) == 4
    teacher = str(tmp_path / "t.pth.tar")
    ckpt_io.save_checkpoint(teacher, models.create_model("lenet5"), arch="lenet5", dataset="mnist")
    for kd in (False, True):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sched = compressor.dict_config(m, opt, ks.schedule("lenet5", 6, teacher, kd), path="x")
        kinds = [type(p).__name__ for p in sched.policies[0]]
        assert ("KnowledgeDistillationPolicy" in kinds) == kd and len(kinds) == 1 + kd
    assert ks.schedule("lenet5", 6, teacher, False)["lr_schedulers"]["lr"]["milestones"] == [4]
