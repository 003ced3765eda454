"""The method pages in docs/methods/ point at things that exist.

For every markdown file there:

- every ``schedules/...yaml`` path it mentions exists (a glob must match at least one file);
- every ``python apps/compress_classifier.py ...`` command uses only options of the app's parser
  (``compressor_apps.parser.build_parser``), and the whole command parses;
- every relative link resolves to an existing file or folder, and an ``#anchor`` into a markdown
  file names one of its headings.
"""
import argparse
import pathlib
import re
import shlex

import pytest

from compressor_apps.parser import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods"
PAGES = sorted(METHODS.glob("*.md"))

EXPECTED = {"README.md", "han-iterative-magnitude.md", "ssl-group-lasso.md", "l1-filter-pruning.md",
            "agp.md", "network-slimming.md", "rethinking-scratch.md", "autopruner.md"}

SCHEDULE = re.compile(r"schedules/[\w.*/-]*?\.ya?ml\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
APP = "python apps/compress_classifier.py"


def ids(paths):
    return [p.name for p in paths]


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: pathlib.Path):
    text = without_fences(md.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def commands(text: str):
    """Every app command: from 'python apps/compress_classifier.py' to the end of its line, with
    shell continuations joined; an inline one ends at its closing backtick."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        start = line.find(APP)
        if start < 0:
            continue
        inline = line[:start].rstrip().endswith("`")
        cmd = line[start:]
        j = i
        while cmd.rstrip().endswith("\\") and j + 1 < len(lines):
            j += 1
            cmd = cmd.rstrip()[:-1] + " " + lines[j].strip()
        if inline:
            cmd = cmd.split("`", 1)[0]
        out.append((i + 1, " ".join(cmd.split())))
    return out


def test_every_page_is_there_and_indexed():
    names = {p.name for p in PAGES}
    assert EXPECTED <= names, f"missing pages: {sorted(EXPECTED - names)}"
    index = (METHODS / "README.md").read_text(encoding="utf-8")
    linked = set(LINK.findall(index))
    unlisted = [n for n in sorted(names - {"README.md"}) if n not in linked]
    assert not unlisted, f"pages not linked from docs/methods/README.md: {unlisted}"


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_schedule_paths_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for path in sorted(set(SCHEDULE.findall(text))):
        if "*" in path:
            if not list(ROOT.glob(path)):
                missing.append(path)
        elif not (ROOT / path).is_file():
            missing.append(path)
    assert not missing, f"{page.name} names schedules that do not exist: {missing}"


def parser_options(parser: argparse.ArgumentParser):
    return set(parser._option_string_actions)


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_app_commands_use_real_flags(page):
    parser = build_parser()
    valid = parser_options(parser)

    def fail(message):   # argparse would print and exit
        raise ValueError(message)

    parser.error = fail
    problems = []
    for line, cmd in commands(page.read_text(encoding="utf-8")):
        tokens = shlex.split(cmd)[2:]          # after 'python apps/compress_classifier.py'
        for token in tokens:
            flag = token.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in valid:
                problems.append(f"line {line}: unknown option {flag}")
        try:
            parser.parse_args(tokens)
        except (ValueError, SystemExit) as e:
            problems.append(f"line {line}: does not parse ({e}): {cmd}")
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


def test_the_command_scanner_finds_commands():
    text = ("run `python apps/compress_classifier.py --arch lenet5 --summary thinning` or\n\n"
            "    python apps/compress_classifier.py --arch lenet5 DATA \\\n"
            "        --epochs 3 --compress schedules/agp/lenet5.yaml\n")
    assert [c for _, c in commands(text)] == [
        "python apps/compress_classifier.py --arch lenet5 --summary thinning",
        "python apps/compress_classifier.py --arch lenet5 DATA --epochs 3 "
        "--compress schedules/agp/lenet5.yaml"]
    assert all(c for p in PAGES for _, c in commands(p.read_text(encoding="utf-8")))
    assert sum(len(commands(p.read_text(encoding="utf-8"))) for p in PAGES) >= 10
    assert "--no-such-flag" not in parser_options(build_parser())


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_relative_links_resolve(page):
    text = without_fences(page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.name}: broken links: {broken}"
