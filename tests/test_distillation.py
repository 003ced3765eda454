"""Knowledge distillation (issue 14): the KD term, the frozen teacher, resume, YAML, the app, errors."""
import copy
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
