"""Two processes with gloo on CPU: masks and weights agree across ranks and match one process.

DDP equals one process only in exact arithmetic: averaging two half-batch gradients rounds
differently from one full-batch gradient. So the equality is tested in float64 through the library
(two ranks against one process), and the app's float32 runs are checked for what rounding cannot
change (one writer, the schedule's sparsity, the thinned shapes). Every test starts subprocesses."""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from compressor.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow           # torchrun and the app in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "apps", "compress_classifier.py")
AGP = os.path.join(ROOT, "schedules", "agp", "simplenet_mnist.yaml")
# 1438 digits - 158 validation = 1280 training samples, of which --etrs 0.2 draws 256 per epoch:
# 4 global batches of 64 with no remainder, so two ranks with 32 each see exactly the batches one
# process with 64 sees. The AGP schedule prunes on epochs 2, 4 and 6.
ARGS = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--vs", "0.11", "--etrs", "0.2",
        "--lr", "0.01", "--epochs", "7", "--compress", AGP, "--deterministic", "--cpu", "--no-progress-bar"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_dir(path):
    (d,) = os.listdir(path)
    return os.path.join(path, d)


def run_app_twice(args, out):
    """The app on two gloo ranks (into out/ddp) and in one process (out/single); the DDP result."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), APP, *args,
                          "-o", str(out / "ddp")], capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, APP, *args, "-o", str(out / "single")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    return ddp


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    return out, run_app_twice(ARGS, out)


def test_only_rank_zero_writes(runs):
    out, ddp = runs
    assert len(os.listdir(out / "ddp")) == 1           # one run folder, not one per rank
    assert "Distributed: 2 processes (gloo), 32 samples per process and minibatch" in ddp.stdout


def test_app_under_ddp_prunes_like_one_process(runs):
    out, _ = runs
    a = read_checkpoint(os.path.join(only_dir(out / "ddp"), "checkpoint.pth.tar"))
    b = read_checkpoint(os.path.join(only_dir(out / "single"), "checkpoint.pth.tar"))
    masks_a = a["compression_sched"]["masks_dict"]["masks"]
    masks_b = b["compression_sched"]["masks_dict"]["masks"]
    assert masks_a.keys() == masks_b.keys() == {"conv2.weight", "fc1.weight"}
    # In float32 the two runs differ by rounding (~1e-6 relative per step, amplified by training),
    # so which weights fall under the threshold may differ near ties; how many cannot: the
    # schedule fixes it. Exact equality is test_ddp_equals_one_process_in_float64's.
    for name in masks_a:
        assert int((masks_a[name] == 0).sum()) == int((masks_b[name] == 0).sum()) > 0, name
    assert {n: w.shape for n, w in a["state_dict"].items()} == \
        {n: w.shape for n, w in b["state_dict"].items()}
    assert len(a["extras"]["metrics"]) == len(b["extras"]["metrics"])


# The start of every script run on two ranks: argv[1] is the repository.
RANK_PRELUDE = r'''
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import compressor
from compressor.distributed import ElasticDDP, broadcast_masks, init_from_env
from compressor.models import create_model
from helpers import train
env = init_from_env(cpu=True)
torch.manual_seed(0)
'''

RANK_CHECK = RANK_PRELUDE + r'''model = create_model("simplenet_mnist")
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = compressor.dict_config(model, opt, {
    "pruners": {"r": {"class": "RandomRankedFilterPruner_AGP", "initial_sparsity": 0.1,
                      "final_sparsity": 0.5, "group_type": "Filters", "weights": ["conv2.weight"]}},
    "policies": [{"pruner": {"instance_name": "r"}, "starting_epoch": 0, "ending_epoch": 3}]})
ddp = ElasticDDP(model)
gen = torch.Generator().manual_seed(100 + env.rank)        # different data on each rank
def data(epoch):
    return [(torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen))
            for _ in range(3)]

train(ddp, opt, sched, data, 3, metrics=None,
      after_epoch_begin=lambda epoch: broadcast_masks(sched.store))
flat = torch.cat([p.detach().flatten() for p in model.parameters()] +
                 [m.flatten() for _, m in sorted(sched.masks.items())])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
assert torch.equal(gathered[0], gathered[1]), "ranks disagree"
assert float((model.conv2.weight.flatten(1).abs().sum(1) == 0).float().mean()) == 0.5
print("RANKS AGREE", flush=True)
dist.barrier()
dist.destroy_process_group()
# Skip interpreter teardown: at exit this torch build sometimes aborts ("terminate called without
# an active exception") after all the work is done, which says nothing about the ranks.
os._exit(0)
'''


def assert_ranks_agree(script, *args):
    """Run ``script`` (with ``args`` after the repository) on two gloo ranks; each must print
    RANKS AGREE."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                             str(script), ROOT, *args], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("RANKS AGREE") == 2


def test_masks_and_weights_identical_on_every_rank_even_with_a_random_criterion(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_CHECK)
    assert_ranks_agree(script)


GATE_CHECK = RANK_PRELUDE + r'''model = create_model("lenet5_bn")
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = compressor.dict_config(model, opt, {
    "pruners": {"g": {"class": "AutoPruner", "keep_ratio": 0.5, "weights": ["conv1.weight", "conv2.weight"],
                      "init_std_scale": 0.5, "alpha_end": 2.0}},
    "policies": [{"pruner": {"instance_name": "g"}, "starting_epoch": 0, "ending_epoch": 3}]})
pruner = sched.ordered[0].pruner
ddp = ElasticDDP(model)
gen = torch.Generator().manual_seed(100 + env.rank)        # different data on each rank

def agree(tensors, what):
    flat = torch.cat([t.detach().flatten() for t in tensors])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1]), f"ranks disagree on {what}"

def data(epoch):
    return [(torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen))
            for _ in range(3)]

def gates_agree(epoch):
    if epoch == 1:
        agree([p for g in pruner.gates.values() for p in g.parameters()], "the gates")

train(ddp, opt, sched, data, 3, metrics=None, before_epoch_end=gates_agree)
assert pruner.finished
agree(list(model.parameters()) + [m for _, m in sorted(sched.masks.items())], "weights and masks")
print("RANKS AGREE", flush=True)
dist.barrier()
dist.destroy_process_group()
# Skip interpreter teardown: at exit this torch build sometimes aborts ("terminate called without
# an active exception") after all the work is done, which says nothing about the ranks.
os._exit(0)
'''


def test_autopruner_gates_and_their_masks_are_identical_on_every_rank(tmp_path):
    """Different data on each rank: the gates' gradients are averaged, and so are the mean gates
    that decide which channels stay and are folded into the batch norms. (Soft gates: saturated
    ones would agree by accident.)"""
    script = tmp_path / "gates.py"
    script.write_text(GATE_CHECK)
    assert_ranks_agree(script)


def test_thinning_mid_run_under_ddp_rebuilds_the_wrapper_and_thins_like_one_process(tmp_path):
    thin = os.path.join(ROOT, "schedules", "filters", "simplenet_mnist.l1_agp_thin.yaml")
    args = [a if a != AGP else thin for a in ARGS]
    args[args.index("--epochs") + 1] = "6"
    run_app_twice(args, tmp_path)
    a = read_checkpoint(os.path.join(only_dir(tmp_path / "ddp"), "checkpoint.pth.tar"))
    b = read_checkpoint(os.path.join(only_dir(tmp_path / "single"), "checkpoint.pth.tar"))
    # The shapes follow from the schedule; which filters went is a float32 ranking (exact in
    # float64: test_ddp_equals_one_process_in_float64 thins mid-run too).
    assert tuple(a["state_dict"]["conv2.weight"].shape) == (25, 10, 5, 5)
    assert {n: w.shape for n, w in a["state_dict"].items()} == \
        {n: w.shape for n, w in b["state_dict"].items()}
    assert len(a["thinning_recipes"]) == len(b["thinning_recipes"]) == 1


# Float64 on two ranks, each with its half of every global batch, then one process on the whole
# batches (on rank 0): AGP filter and fine-grained pruning, and thinning mid-run (the DDP wrapper
# rebuilds). argv[2] receives both results.
F64_RUN = RANK_PRELUDE + r"""torch.set_default_dtype(torch.float64)
CONFIG = {
    "pruners": {"filters": {"class": "L1RankedStructureParameterPruner_AGP", "initial_sparsity": 0.1,
                            "final_sparsity": 0.5, "group_type": "Filters",
                            "weights": ["conv1.weight", "conv2.weight"]},
                "fine": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.2,
                         "final_sparsity": 0.7, "weights": ["fc1.weight"]}},
    "extensions": {"thin": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                            "dataset": "mnist"}},
    "policies": [{"pruner": {"instance_name": "filters"}, "starting_epoch": 0, "ending_epoch": 3},
                 {"pruner": {"instance_name": "fine"}, "starting_epoch": 0, "ending_epoch": 4},
                 {"extension": {"instance_name": "thin"}, "epochs": [3]}]}
EPOCHS, STEPS, BATCH = 5, 3, 16

def run(rank, world):
    torch.manual_seed(0)
    model = create_model("simplenet_mnist")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = compressor.dict_config(model, opt, CONFIG)
    net = ElasticDDP(model) if world > 1 else model
    data = torch.Generator().manual_seed(1)                 # the same global batches everywhere
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)

    def batches(epoch):
        out = []
        for _ in range(STEPS):
            x = torch.randn(BATCH, 1, 28, 28, generator=data)
            y = torch.randint(0, 10, (BATCH,), generator=data)
            out.append((x[part], y[part]))
        return out

    sync = (lambda epoch: broadcast_masks(sched.store)) if world > 1 else None
    train(net, opt, sched, batches, EPOCHS, metrics=None, after_epoch_begin=sync)
    return {"state_dict": model.state_dict(), "masks": dict(sched.masks),
            "recipes": model.thinning_recipes}

ddp = run(env.rank, env.world_size)
if env.rank == 0:
    torch.save({"ddp": ddp, "single": run(0, 1)}, sys.argv[2])
print("RANKS AGREE", flush=True)
dist.barrier()
dist.destroy_process_group()
os._exit(0)   # see RANK_CHECK
"""


def test_ddp_equals_one_process_in_float64(tmp_path):
    """The discrete decisions (masks, thinning recipes) are equal exactly: in float64 no rounding
    difference can reorder magnitudes that differ at all. Weights: each step's averaged gradient
    differs from the one-process gradient by a few float64 roundings (~1e-16 relative; measured
    ~1e-15 after 15 steps); 1e-10 relative leaves five orders of magnitude of room for training to
    amplify that, and is still six below float32's rounding, let alone a real bug (O(1))."""
    script, out = tmp_path / "f64.py", tmp_path / "f64.pt"
    script.write_text(F64_RUN)
    assert_ranks_agree(script, str(out))
    got = torch.load(out, weights_only=True)
    a, b = got["ddp"], got["single"]
    assert a["recipes"] == b["recipes"] and len(a["recipes"]) == 1
    assert a["masks"].keys() == b["masks"].keys() and "fc1.weight" in a["masks"]
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name]), name
    assert 0.69 < float((a["masks"]["fc1.weight"] == 0).float().mean()) < 0.71
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, w in a["state_dict"].items():
        ref = b["state_dict"][name]
        assert w.dtype == ref.dtype and w.shape == ref.shape, name
        if w.is_floating_point():
            assert w.dtype == torch.float64
            scale = ref.abs().max().item()
            assert (w - ref).abs().max().item() <= 1e-10 * scale, name
        else:
            assert torch.equal(w, ref), name


# The app itself on each rank, with one change chosen by argv[3]; each rank writes its exit code to
# argv[2]/rank<N> (torchrun's own exit status says only that some rank failed).
APP_ON_RANK = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
import torch
from torch import nn
from compressor_apps import compress_classifier as app, epochs
rank, mode = int(os.environ["RANK"]), sys.argv[3]
if mode == "nan":          # rank 1's third training loss is NaN; rank 0's stay finite
    class NaNOnRank1(nn.CrossEntropyLoss):
        calls = 0
        def forward(self, output, target):
            NaNOnRank1.calls += 1
            loss = super().forward(output, target)
            return loss * float("nan") if rank == 1 and NaNOnRank1.calls == 3 else loss
    app.nn = type("nn", (), {"CrossEntropyLoss": NaNOnRank1})
elif mode == "stop":       # a SIGTERM seen after the third step (ranks agree on it)
    real = epochs.StopFlag.__call__
    count = {"n": 0}
    def stop_after_3(self):
        count["n"] += 1
        if count["n"] == 3:
            import signal
            self.signum = signal.SIGTERM
        return real(self)
    epochs.StopFlag.__call__ = stop_after_3
code = app.main(sys.argv[4:])
with open(os.path.join(sys.argv[2], f"rank{rank}"), "w") as f:
    f.write(str(code))
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)   # see RANK_CHECK
'''


def run_app_on_two_ranks(tmp_path, mode, args):
    """(exit codes by rank, stdout, stderr) of the app on two gloo ranks with ``mode``'s change."""
    script, codes = tmp_path / "app_on_rank.py", tmp_path / "codes"
    script.write_text(APP_ON_RANK)
    codes.mkdir()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                             str(script), ROOT, str(codes), mode, *args, "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    found = {int(p.name[4:]): int(p.read_text()) for p in codes.iterdir()}
    return found, result.stdout, result.stderr


def our_lines(text):
    return [line for line in text.splitlines() if line.startswith("compress_classifier:")]


def test_a_nan_loss_on_one_rank_stops_every_rank_with_exit_2_and_one_line(tmp_path):
    """Rank 1 alone sees a NaN loss: both ranks stop at that step (no rank waits in the gradient
    all-reduce for the other; the subprocess timeout catches a hang), both exit 2, and rank 0
    prints the one line, naming the rank."""
    codes, out, err = run_app_on_two_ranks(tmp_path, "nan", ARGS)
    assert codes == {0: 2, 1: 2}, err[-3000:]
    lines = our_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert re.search(r"error: the training loss is nan at epoch 0, minibatch 2 on rank 1 of 2; "
                     r"stopped before stepping on it", lines[0])
    assert not os.path.exists(os.path.join(only_dir(tmp_path / "out"), "checkpoint.pth.tar"))


def test_a_schedule_error_is_printed_once_and_every_rank_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners:\n  p: {class: NoSuchPruner}\npolicies: []\n")
    args = [a if a != AGP else str(bad) for a in ARGS]
    codes, out, err = run_app_on_two_ranks(tmp_path, "none", args)
    assert codes == {0: 2, 1: 2}, err[-3000:]
    lines = our_lines(err)
    assert len(lines) == 1 and re.search(r"bad\.yaml:2 pruners\.p\.class: unknown pruner class "
                                         r"'NoSuchPruner'", lines[0]), err[-3000:]
    assert not (tmp_path / "out").exists()


def test_a_stop_under_torchrun_is_announced_once_by_the_rank_that_saved(tmp_path):
    codes, out, err = run_app_on_two_ranks(tmp_path, "stop", ARGS)
    assert codes == {0: 143, 1: 143}, err[-3000:]
    text = out + err
    assert "saved None" not in text and "--resume-from None" not in text
    (line,) = [x for x in text.splitlines() if x.startswith("Stopped by SIGTERM")]
    assert re.search(r"at epoch 0, minibatch 3; saved .*checkpoint\.pth\.tar", line)
    saved = read_checkpoint(os.path.join(only_dir(tmp_path / "out"), "checkpoint.pth.tar"))
    # the global batch's sums over both ranks: 3 minibatches of 64
    assert saved["extras"]["resume_meters"]["loss"][1] == 3 * 64
    assert saved["extras"]["resume_batch_size"] == 64
