"""Checkpoints written by earlier code still load: the fixture in tests/fixtures/ was saved by the
app before the library's internals were reshaped (see make_v1_checkpoint.py), and is never
regenerated. It holds a thinning recipe, masks, policy states and an LR scheduler's state."""
import pathlib

import torch

import compressor
from compressor.checkpoint import load_checkpoint, read_checkpoint
from compressor.models import create_model

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CKPT = str(FIXTURES / "v1_simplenet_thin.pth.tar")
SCHEDULE = str(FIXTURES / "v1_simplenet_thin.yaml")


def test_the_fixture_is_a_version_1_thinned_checkpoint():
    ckpt = read_checkpoint(CKPT)
    assert (ckpt["format"], ckpt["version"], ckpt["arch"], ckpt["epoch"]) == \
        ("compressor-checkpoint", 1, "simplenet_mnist", 5)
    assert len(ckpt["thinning_recipes"]) == 1


def test_loads_into_a_dense_model_and_computes_what_it_computed_when_saved():
    model, scheduler, optimizer, start_epoch = load_checkpoint(create_model("simplenet_mnist"), CKPT)
    assert start_epoch == 6
    assert (model.conv1.out_channels, model.conv2.in_channels) == (10, 10)
    saved = read_checkpoint(CKPT)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    expected = torch.load(FIXTURES / "v1_simplenet_thin.expected.pt", weights_only=True)
    model.eval().double()
    with torch.no_grad():
        out = model(expected["input"])
    # float64 forward of the same weights: only summation order may differ between CPUs
    # (|error| <= K * eps * sum|terms|, K = 400, so far below 1e-10 of the output's scale).
    torch.testing.assert_close(out, expected["output"], rtol=1e-10, atol=1e-10)
    assert isinstance(optimizer, torch.optim.SGD)
    assert scheduler.store.sparsity("fc1.weight") > 0.5
    params = dict(model.named_parameters())
    for name, mask in scheduler.masks.items():
        assert mask.shape == params[name].shape, name
        assert torch.all(params[name][mask == 0] == 0), name


def test_the_schedule_resumes_from_it_with_every_policy_state():
    model = create_model("simplenet_mnist")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, _, optimizer, start_epoch = load_checkpoint(model, CKPT, optimizer)
    scheduler = compressor.file_config(model, optimizer, SCHEDULE, resumed_epoch=start_epoch)
    scheduler.load_state_dict(read_checkpoint(CKPT)["compression_sched"])
    assert scheduler.masks_sparsity()["fc1.weight"] > 0.5
    # StepLR(step_size=2, gamma=0.5) stepped at the end of epochs 0..5: 0.05 * 0.5**3
    assert optimizer.param_groups[0]["lr"] == 0.05 * 0.5 ** 3


def test_the_app_resumes_from_it(tmp_path):
    from compressor_apps.compress_classifier import main
    rc = main(["--arch", "simplenet_mnist", "--dataset", "digits", "--epochs", "7", "-b", "128",
               "--lr", "0.05", "--resume-from", CKPT, "--compress", SCHEDULE, "-o", str(tmp_path)])
    assert rc in (0, None)
    resumed = read_checkpoint(str(next(tmp_path.glob("*/checkpoint.pth.tar"))))
    assert resumed["epoch"] == 6
    assert resumed["state_dict"]["conv1.weight"].shape == (10, 1, 5, 5)
