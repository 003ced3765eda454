"""Every ready schedule under schedules/ builds against the architecture its header names, and runs.

Header convention (comment lines at the top of each YAML file):

    # arch: lenet5                      the architecture (compressor.models.create_model name)
    # requires: thinning                optional: a feature still being written
    #   python apps/compress_classifier.py --arch lenet5 ... --compress schedules/<this file>

or, for a language-model schedule, ``#   python apps/compress_lm.py MODEL ... --compress <file>``:
it is built against a tiny random Llama (the layer names of Hugging Face decoders) and its
epoch-0 pruning runs on random calibration tokens.

``# arch:`` may be left out when the command names ``--arch``. A file is skipped only when it
declares ``# requires: ...`` AND names a class that is not registered yet; the skip says which.
A file that names an unregistered class without declaring it fails.
"""
import pathlib
import re

import pytest
import yaml

from compressor.registry import SECTIONS
from helpers.schedules import build_and_exercise

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEDULES = sorted(p for p in (ROOT / "schedules").rglob("*") if p.suffix in (".yaml", ".yml"))


def header(path: pathlib.Path) -> str:
    """The leading comment block, with '#' removed and shell line continuations joined."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))


def header_info(path: pathlib.Path):
    text = header(path)
    arch = re.search(r"^arch:\s*(\S+)\s*$", text, re.M)
    requires = re.search(r"^requires:\s*(.+?)\s*$", text, re.M)
    commands = re.findall(r"python apps/compress_(?:classifier|lm)\.py .*", text)
    command = next((c for c in commands if "--compress" in c), commands[0] if commands else None)
    return arch.group(1) if arch else None, requires.group(1) if requires else None, command


def unregistered_classes(path: pathlib.Path):
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = []
    for section, registry in SECTIONS.items():
        for name, spec in (data.get(section) or {}).items():
            cls = spec.get("class") if isinstance(spec, dict) else None
            if cls is not None and cls not in registry:
                missing.append(f"{section}.{name}: {cls}")
    return missing


def test_there_are_schedules():
    assert len(SCHEDULES) >= 10, [p.name for p in SCHEDULES]


@pytest.mark.parametrize("path", SCHEDULES, ids=[str(p.relative_to(ROOT)) for p in SCHEDULES])
def test_schedule_header_builds_and_runs(path):
    arch, requires, command = header_info(path)
    rel = path.relative_to(ROOT).as_posix()
    assert command, f"{rel}: the header must give the command: python apps/compress_classifier.py"
    assert f"--compress {rel}" in command, f"{rel}: the command must use --compress {rel}"
    if command.startswith("python apps/compress_lm.py"):
        return build_and_run_lm(path)
    cmd_arch = re.search(r"--arch (\S+)", command)
    assert cmd_arch, f"{rel}: the command must name --arch"
    if arch is None:
        arch = cmd_arch.group(1)
    assert cmd_arch.group(1) == arch, \
        f"{rel}: '# arch: {arch}' but the command uses --arch {cmd_arch.group(1)}"
    missing = unregistered_classes(path)
    if missing:
        if requires:
            pytest.skip(f"requires {requires}: not registered yet: {', '.join(missing)}")
        pytest.fail(f"{rel} names unregistered classes ({', '.join(missing)}) and declares no "
                    f"'# requires:' line")
    build_and_exercise(path, arch)


def test_header_parsing_is_strict(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("# arch: lenet5\n# requires: thinning\n#   python apps/compress_classifier.py "
                 "--arch lenet5 \\\n#     --compress schedules/x.yaml\nversion: 1\n# arch: other\n")
    arch, requires, command = header_info(p)
    assert (arch, requires) == ("lenet5", "thinning")
    assert command.endswith("--compress schedules/x.yaml")


def build_and_run_lm(path):
    pytest.importorskip("transformers")
    import torch
    import compressor
    from compressor.oneshot import provide_calibration
    from helpers.models import tiny_llama
    model = tiny_llama()
    scheduler = compressor.file_config(model, None, str(path))
    provide_calibration(scheduler, [{"input_ids": torch.randint(0, 64, (1, 16)), "use_cache": False}
                                    for _ in range(4)])
    scheduler.on_epoch_begin(0)
    assert scheduler.masks, f"{path}: nothing was pruned"
    for name, mask in scheduler.masks.items():
        dropped = mask == 0
        assert float(dropped.float().mean()) == pytest.approx(0.5), name
        assert bool((scheduler.store.params[name][dropped] == 0).all()), name
