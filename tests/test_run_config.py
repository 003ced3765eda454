"""The app's RunConfig (frozen, checked once, Distiller's --resume resolved) and the one dataset
table that the data loaders and the model zoo both read."""
import argparse
import dataclasses

import pytest

from compressor import data, models
from compressor.data.catalog import CATALOG, MODEL_DATASETS, dataset_spec
from compressor_apps.deploy import DeployConfig
from compressor_apps.kd import KDConfig
from compressor_apps.quantize import QEConfig
from compressor_apps.parser import build_parser
from compressor_apps.run_config import RunConfig, UsageError, model_dataset_of, pending_warnings


def config(*argv):
    return RunConfig.from_args(build_parser().parse_args(list(argv)))


def test_every_parser_option_is_a_field_and_the_defaults_agree():
    parsed = vars(build_parser().parse_args([]))
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    kd = {name for name in parsed if name.startswith("kd_")}   # the --kd-* flags: KDConfig
    deploy = {name for name in parsed if name.startswith("export_deploy")}   # DeployConfig
    qe = {"quantize_eval"} | {name for name in parsed if name.startswith("qe_")}   # QEConfig
    assert set(parsed) - fields == {"deprecated_resume"} | kd | deploy | qe   # resolved into resume_from
    assert KDConfig.from_args(argparse.Namespace(**parsed)) == KDConfig()   # off by default
    assert DeployConfig.from_args(argparse.Namespace(**parsed)) == DeployConfig()
    assert QEConfig.from_args(argparse.Namespace(**parsed)) == QEConfig()
    made = config()
    for name in fields:
        value = parsed[name]
        expected = tuple(value) if isinstance(value, list) else (() if value is None and
                                                                 name == "summary" else value)
        assert getattr(made, name) == expected, name


def test_the_config_is_frozen():
    c = config("--epochs", "3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 5


def test_what_the_options_imply():
    c = config("--arch", "lenet5", "--dataset", "DIGITS")
    assert (c.dataset_name, c.model_dataset, c.checkpoint, c.full_resume) == \
        ("digits", "mnist", None, False)
    assert config("--arch", "resnet20_cifar").dataset_name == "cifar10"
    assert model_dataset_of("cifar100") == "cifar100"     # unknown: the zoo reports it


def test_deprecated_resume_becomes_resume_from_with_a_new_optimizer(tmp_path):
    path = tmp_path / "c.pth.tar"
    path.write_bytes(b"x")
    c = config("--resume", str(path))
    assert (c.resume_from, c.reset_optimizer, c.full_resume) == (str(path), True, False)
    assert any("--resume is deprecated" in w for w in pending_warnings)
    pending_warnings.clear()


def test_a_bad_option_is_one_usage_error():
    with pytest.raises(UsageError, match=r"^--epochs must be >= 0; got -1$"):
        config("--epochs", "-1")


def test_one_dataset_table_behind_every_view():
    assert data.DATASETS == tuple(sorted(CATALOG))
    for name, spec in CATALOG.items():
        assert data.INPUT_SHAPES[name] == spec.input_shape
        assert data.NORMALIZATION[name] == (spec.mean, spec.std)
    assert set(models.DATASETS) == set(MODEL_DATASETS) == {"mnist", "cifar10", "imagenet"}
    for name in MODEL_DATASETS:
        assert models.input_shape(name) == CATALOG[name].input_shape
        assert models.num_classes(name) == CATALOG[name].num_classes
    assert dataset_spec("Digits").model_dataset == "mnist"
    with pytest.raises(data.DatasetError, match=r"unknown dataset 'svhn'.*known: cifar10, digits"):
        dataset_spec("svhn")


@pytest.mark.parametrize("argv,message", [
    (("--lr", "inf"), r"--lr must be a finite number > 0; got inf"),
    (("--momentum", "nan"), r"--momentum must be in \[0, 1\]; got nan"),
    (("--wd", "-1"), r"--weight-decay must be a finite number >= 0; got -1"),
    (("--seed", str(2 ** 63)), r"--seed must be in \[0, 2\*\*63 - 1\]"),
    (("--sense-max-drop", "inf"), r"--sense-max-drop must be a finite number"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(argv, message):
    with pytest.raises(UsageError, match=message):
        config(*argv)


def test_out_dir_that_is_a_file_or_under_one_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UsageError, match=r"--out-dir .*afile is a file, not a folder"):
        config("-o", str(f))
    with pytest.raises(UsageError, match=r"--out-dir .*sub is under .*afile, which is a file"):
        config("-o", str(f / "sub"))
    assert config("-o", str(tmp_path / "new" / "deeper")).out_dir.endswith("deeper")   # made later


def test_unwritable_out_dir_is_refused(tmp_path, monkeypatch):
    # os.access is what the check asks; root may write anywhere, so the answer is stubbed
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(UsageError, match=r"--out-dir .*: no permission to write in"):
        config("-o", str(tmp_path / "x"))


def test_compile_under_torchrun_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from compressor_apps import compress_classifier
    monkeypatch.setattr(compress_classifier, "init_from_env", lambda cpu: object())
    code = compress_classifier.main(["--dataset", "digits", "--compile", "-o", str(tmp_path / "o")])
    assert code == 2
    assert "--compile is not supported under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
