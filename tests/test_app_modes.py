"""The app's structured modes: a schedule that thins mid-run, --thinnify, the thinning dry run,
sensitivity analysis and the scratch baselines."""
import os
import re

import pytest
import torch

from compressor.checkpoint import read_checkpoint, save_checkpoint
from compressor_apps.compress_classifier import main
from compressor.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIN = os.path.join(ROOT, "schedules", "filters", "simplenet_mnist.l1_agp_thin.yaml")
pytestmark = pytest.mark.slow           # every test runs the app in-process, most of them training

FAST = ["--arch", "simplenet_mnist", "--dataset", "digits", "-b", "64", "--etrs", "0.4", "--lr", "0.05",
        "--no-progress-bar"]


def only_dir(path):
    (d,) = [os.path.join(path, x) for x in os.listdir(path)]
    return d


@pytest.fixture(scope="module")
def thinned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("thin")
    assert main(FAST + ["--epochs", "5", "--compress", THIN, "-o", str(out)]) == 0
    return os.path.join(only_dir(out), "checkpoint.pth.tar")


def test_a_schedule_thins_mid_run_and_training_continues(thinned_run):
    log = open(os.path.join(os.path.dirname(thinned_run), "run.log")).read()
    assert re.search(r"Thinned by \w+ at epoch \d \(remove_filters\): conv1 10/20, conv2 25/50", log)
    ckpt = read_checkpoint(thinned_run)
    assert tuple(ckpt["state_dict"]["conv1.weight"].shape) == (10, 1, 5, 5)     # 20 -> 10 filters
    assert tuple(ckpt["state_dict"]["conv2.weight"].shape) == (25, 10, 5, 5)    # 50 -> 25, 20 -> 10 in
    assert tuple(ckpt["state_dict"]["fc1.weight"].shape) == (500, 400)          # 25 channels x 4 x 4
    assert len(ckpt["thinning_recipes"]) == 1
    assert ckpt["extras"]["metrics"][-1]["epoch"] == 4                          # trained after thinning


def test_a_thinned_checkpoint_evaluates_on_a_dense_model_built_from_its_arch(thinned_run, tmp_path, capsys):
    assert main(["--arch", "simplenet_mnist", "--dataset", "digits", "--evaluate", "--resume-from",
                 thinned_run, "-o", str(tmp_path), "--no-progress-bar"]) == 0
    assert re.search(r"--- test -+\n==> Top1: (\d+\.\d+)", capsys.readouterr().out)


def test_summaries_describe_the_checkpoint_given(thinned_run, capsys):
    assert main(["--arch", "simplenet_mnist", "--dataset", "digits", "--summary", "compute"]) == 0
    dense = int(re.search(r"Total MACs: ([\d,]+)", capsys.readouterr().out).group(1).replace(",", ""))
    assert main(["--arch", "simplenet_mnist", "--dataset", "digits", "--summary", "compute",
                 "--exp-load-weights-from", thinned_run]) == 0
    thinned = int(re.search(r"Total MACs: ([\d,]+)", capsys.readouterr().out).group(1).replace(",", ""))
    assert thinned < dense


def test_thinnify_removes_zero_filters_and_prints_compute_before_and_after(tmp_path, capsys):
    model = create_model("simplenet_mnist")
    with torch.no_grad():
        model.conv2.weight[::2] = 0          # 25 of 50 filters
        model.conv2.bias[::2] = 0
    src = str(tmp_path / "pruned.pth.tar")
    save_checkpoint(src, model, arch="simplenet_mnist", dataset="digits", epoch=3)
    assert main(["--arch", "simplenet_mnist", "--dataset", "digits", "--thinnify", "--resume-from", src,
                 "-o", str(tmp_path / "o"), "--no-progress-bar"]) == 0
    text = capsys.readouterr().out
    assert "Compute before thinning" in text and "Compute after thinning" in text
    macs = [int(m.replace(",", "")) for m in re.findall(r"Total MACs: ([\d,]+)", text)]
    assert macs[1] < macs[0]
    thin = read_checkpoint(os.path.join(only_dir(tmp_path / "o"), "pruned_thinned_checkpoint.pth.tar"))
    assert tuple(thin["state_dict"]["conv2.weight"].shape) == (25, 20, 5, 5)


def test_thinning_dry_run_reports_groups_before_training(capsys):
    assert main(["--arch", "resnet20_cifar", "--summary", "thinning"]) == 0
    text = capsys.readouterr().out
    assert "layer1.0.conv2" in text and "conv1" in text


def test_sensitivity_analysis_writes_csv_and_a_schedule(tmp_path, capsys):
    assert main(FAST + ["--sense", "filter", "--sense-range", "0", "0.6", "0.3", "--etes", "0.3",
                        "--vs", "0.1", "--evs", "0.3", "-o", str(tmp_path)]) == 0
    folder = only_dir(tmp_path)
    lines = open(os.path.join(folder, "sensitivity.csv")).read().splitlines()
    assert lines[0] == "parameter,sparsity,top1,top5,loss"
    assert len(lines) == 1 + 4 * 2          # conv1, conv2, fc1, fc2 at 0.0 and 0.3
    import compressor
    with open(os.path.join(folder, "sensitivity_schedule.yaml")) as f:
        schedule = f.read()
    compressor.dict_config(create_model("simplenet_mnist"), None, __import__("yaml").safe_load(schedule))


@pytest.mark.parametrize("budget", ["E", "B"])
def test_scratch_baselines_train_the_thinned_architecture_from_random_weights(thinned_run, tmp_path, budget, capsys):
    assert main(FAST + ["--epochs", "1", "--scratch", budget, "--exp-load-weights-from", thinned_run,
                        "-o", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    ckpt = read_checkpoint(os.path.join(only_dir(tmp_path), "checkpoint.pth.tar"))
    assert tuple(ckpt["state_dict"]["conv2.weight"].shape) == (25, 10, 5, 5)
    if budget == "B":
        assert re.search(r"Scratch-B: dense/thinned MACs = [\d.]+, so \d+ epochs instead of 1", text)
        assert ckpt["epoch"] >= 1
    else:
        assert ckpt["epoch"] == 0


def test_mode_errors_are_one_line(tmp_path, capsys):
    assert main(["--dataset", "digits", "--thinnify", "-o", str(tmp_path)]) == 2
    assert "--thinnify needs a checkpoint" in capsys.readouterr().err
    assert main(["--dataset", "digits", "--scratch", "E", "-o", str(tmp_path)]) == 2
    assert "--scratch needs --exp-load-weights-from" in capsys.readouterr().err
    assert main(["--dataset", "digits", "--sense", "element", "--sense-range", "0.5", "0.2", "0.1"]) == 2
    assert "--sense-range START STOP STEP needs 0 <= START < STOP <= 1" in capsys.readouterr().err
