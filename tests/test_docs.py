"""The documentation's examples run, and what they show is what the code does.

Convention: an HTML comment on the line right before a fenced block marks it for testing (Markdown
renderers hide the comment). Unmarked blocks are illustrations and are not run.

    <!-- test: run -->            the next ```python block is run as a script (fresh process, repo
                                  root as working directory and on PYTHONPATH); it must exit 0
    <!-- test: build ARCH -->     the next ```yaml block is a complete schedule: it must build with
                                  file_config against create_model(ARCH), and the scheduler's six
                                  events must run at each policy's first and last epoch
    <!-- test: error ARCH -->     the next ```yaml block must fail to build for ARCH; the fenced
                                  block after it holds the exact message (whitespace may differ,
                                  '...' stands for any text; the file is called schedule.yaml)

Every docs/**/*.md is scanned. Relative links in the documents this test owns are checked too.
"""
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch

import compressor
from compressor.errors import ScheduleError
from compressor.models import create_model

from helpers.schedules import build_and_exercise

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = re.compile(r"^<!--\s*test:\s*(\S+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
KINDS = {"run": ("python",), "build": ("yaml",), "error": ("yaml",)}

# The documents whose links this test checks, and links to documents other people are writing.
OWN = ["schedule.md", "reference/pruners.md", "reference/lr-schedulers.md", "own-training-loop.md",
       "porting-from-distiller.md"]
PENDING = {"thinning.md", "reference/pruners-structured.md"}


def read_fence(lines, i):
    """(language, body, index after the closing fence) of the fence opening at line i."""
    m = FENCE.match(lines[i]) if i < len(lines) else None
    if not m:
        return None
    body = []
    for j in range(i + 1, len(lines)):
        if lines[j].startswith("```"):
            return m.group(1), "\n".join(body) + "\n", j + 1
        body.append(lines[j])
    return None


def marked_blocks():
    """Every marked block as (id, kind, argument, code, expected, problem)."""
    out = []
    for md in sorted(DOCS.rglob("*.md")):
        rel = md.relative_to(ROOT).as_posix()
        lines = md.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = MARK.match(line)
            if not m:
                continue
            kind, arg = m.group(1), m.group(2)
            ident = f"{rel}:{i + 2}"
            fence = read_fence(lines, i + 1)
            problem = None
            expected = None
            if kind not in KINDS:
                problem = f"unknown test kind '{kind}'; known: {', '.join(KINDS)}"
            elif fence is None:
                problem = "the marker must be followed directly by a fenced block"
            elif fence[0] not in KINDS[kind]:
                problem = f"'{kind}' marks a ```{'/'.join(KINDS[kind])} block, not ```{fence[0]}"
            elif kind in ("build", "error") and not arg:
                problem = f"'{kind}' needs an architecture: <!-- test: {kind} lenet5 -->"
            elif kind == "error":
                j = fence[2]
                while j < len(lines) and not lines[j].strip():
                    j += 1
                nxt = read_fence(lines, j)
                if nxt is None:
                    problem = "an 'error' block must be followed by a fenced block with the message"
                else:
                    expected = nxt[1]
            out.append((ident, kind, arg, fence[1] if fence else "", expected, problem))
    return out


BLOCKS = marked_blocks()


def blocks_of(kind):
    found = [b for b in BLOCKS if b[1] == kind]
    return pytest.mark.parametrize("block", found, ids=[b[0] for b in found])


def test_markers_are_well_formed():
    bad = [f"{b[0]}: {b[5]}" for b in BLOCKS if b[5]]
    assert not bad, "\n".join(bad)


def test_the_own_training_loop_example_is_marked():
    ids = [b[0] for b in BLOCKS if b[1] == "run"]
    assert any(i.startswith("docs/own-training-loop.md:") for i in ids)


@pytest.mark.slow          # each block in a subprocess
@blocks_of("run")
def test_python_block_runs(block):
    ident, _, _, code, _, problem = block
    assert problem is None, problem
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, \
        f"{ident} failed after {elapsed:.1f}s:\n{proc.stdout}\n{proc.stderr}"


@blocks_of("build")
def test_yaml_block_builds_and_runs(block, tmp_path):
    ident, _, arch, code, _, problem = block
    assert problem is None, problem
    path = tmp_path / "schedule.yaml"
    path.write_text(code, encoding="utf-8")
    build_and_exercise(path, arch)


@blocks_of("error")
def test_yaml_block_fails_with_the_documented_message(block, tmp_path, monkeypatch):
    ident, _, arch, code, expected, problem = block
    assert problem is None, problem
    (tmp_path / "schedule.yaml").write_text(code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    model = create_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ScheduleError) as info:
        compressor.file_config(model, optimizer, "schedule.yaml")
    got = " ".join(str(info.value).split())
    want = ".*?".join(re.escape(part) for part in " ".join(expected.split()).split("..."))
    assert re.fullmatch(want, got), f"documented:\n{expected}\nactual:\n{got}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: pathlib.Path):
    text = re.sub(r"^```.*?^```", "", md.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("doc", OWN)
def test_links_point_at_files_and_headings(doc):
    md = DOCS / doc
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    broken, pending = [], []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        rel = dest.relative_to(DOCS).as_posix() if dest.is_relative_to(DOCS) else None
        if not dest.exists():
            (pending if rel in PENDING else broken).append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{doc}: broken links: {broken}"
    if pending:
        pytest.skip(f"{doc}: links to documents still being written: {sorted(set(pending))}")
