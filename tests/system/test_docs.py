"""The README and docs/ tell the truth about the tree: links resolve, shown make targets, modules and paths exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MAKE = re.compile(r"(?:^|&&|;)[ \t]*make (?:-\w+ )*([a-z][\w-]*)", re.M)  # make as a command, not a word
MODULE = re.compile(r"python -m (stages(?:\.\w+)+)")
# A path in the repository's own folders, as a command argument (`@file` for curl) or named in code.
TOP = r"(?:examples|notebooks|docs|tests|stages|reports|data|\.ci|\.github)"
PATH = re.compile(rf"(?<![\w./:@-])@?({TOP}/[^\s'\"`),;=]*|{TOP}(?=[\s'\"`]|$))", re.M)
PLACEHOLDER = re.compile(r"[<>{}…]|\.\.\.")  # stages/<name>.py, data/prepared/{x,y}_...: a pattern, not a path
# Paths the docs name that no commit holds and no stage writes, and who makes them.
MADE_ELSEWHERE = {
    "data/external": "your own files (docs/your-data.md); git-ignored",
    "reports/pr": "written by make report",
}
PREDICT = re.compile(r"(?:mnist-predict|python -m stages\.tools\.predict)((?:[ \t]+[^\s#|&;]+)+)")


def code(text: str) -> str:
    """The commands a page shows: its fenced blocks and inline code spans, one per line."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    commands = "\n".join(blocks + spans)
    return re.sub(r"(^|\s)#.*$", "", commands, flags=re.M)  # shell comments say things, they run nothing


def page_ids():
    return [str(p.relative_to(ROOT)) for p in PAGES]


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([\w][\w .-]*?)\s*:(?!=)", line)
        if match and not line.startswith(("\t", "#")):
            targets.update(match.group(1).split())
    return targets


def module_path(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def shown_modules() -> set[str]:
    return {m for page in PAGES for m in MODULE.findall(code(page.read_text()))}


@cache
def repository_files() -> frozenset[str]:
    """The files a commit of this checkout holds: tracked, or new and not ignored (a fresh clone has them)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return frozenset(listed.splitlines())


@cache
def pipeline_outputs() -> frozenset[str]:
    """What `dvc repro` writes: every stage's outs, metrics and plots in dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entries = [e for stage in stages.values() for key in ("outs", "metrics", "plots") for e in stage.get(key, [])]
    return frozenset(str(next(iter(e)) if isinstance(e, dict) else e).rstrip("/") for e in entries)


def path_exists(path: str) -> bool:
    """Whether ``path`` (a file, a folder or a glob pattern) is there on a fresh clone after `make repro`."""
    path = path.rstrip("/").removeprefix("./")
    files = repository_files()
    if any(ch in path for ch in "*?["):
        return any(fnmatch(f, path) for f in files)
    if path in files or any(f.startswith(path + "/") for f in files):
        return True
    made = [*pipeline_outputs(), *MADE_ELSEWHERE]
    return any(path == out or path.startswith(out + "/") or out.startswith(path + "/") for out in made)


def shown_paths(text: str) -> set[str]:
    """The repository paths a page's commands and code name: `mnist-predict examples/x.png`,
    `curl -d @examples/x.json`, `stages/lib/paths.py`; and every file `mnist-predict` is given."""
    commands = code(text)
    found = {m.rstrip(".:") for m in PATH.findall(commands) if not PLACEHOLDER.search(m)}
    for match in PREDICT.finditer(commands):
        try:
            words = shlex.split(match.group(1))
        except ValueError:
            words = match.group(1).split()
        for before, word in zip(["", *words], words, strict=False):
            if word.startswith("-") or before in ("--top", "--save-inputs", "--runtime"):  # options
                continue
            if (before != "--model" or ":/" not in word) and not PLACEHOLDER.search(word):  # a URI is no path
                found.add(word)
    return found


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move details to docs/"
    linked = set(LINK.findall("\n".join(lines)))
    for page in PAGES[1:]:
        assert (
            f"docs/{page.name}" in linked
            or page.name == "design.md"
            and any(page.name in (ROOT / "docs" / other).read_text() for other in ("pipeline.md",))
        ), f"docs/{page.name} is not linked from the README"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target} does not resolve"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_make_targets_shown_exist(page):
    targets = makefile_targets()
    shown = set(MAKE.findall(code(page.read_text())))
    assert shown <= targets, f"{page.name} shows make targets the Makefile lacks: {sorted(shown - targets)}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_paths_shown_exist(page):
    missing = sorted(p for p in shown_paths(page.read_text()) if not path_exists(p))
    assert not missing, (
        f"{page.name} shows paths a fresh clone does not have after make repro (use files under examples/): {missing}"
    )


def test_modules_shown_exist():
    missing = sorted(m for m in shown_modules() if not module_path(m).exists())
    assert not missing, f"the docs show modules that do not exist: {missing}"


def test_the_checks_can_fail(tmp_path):
    assert "no-such-target" not in makefile_targets() and {"repro", "test", "cnn", "dense-best"} <= makefile_targets()
    assert not module_path("stages.tools.nonexistent").exists() and module_path("stages.tools.predict").exists()
    assert LINK.findall("see [a](docs/x.md) and ![b](docs/y.png)") == ["docs/x.md", "docs/y.png"]
    shown = code("a make target, `make repro`\n```bash\nmake test  # x\n```\n")
    assert MAKE.findall(shown) == ["test", "repro"]
    page = "```bash\nmnist-predict photos/ README.md --model m/x.keras --save-inputs seen/  # x\n```\n"
    page += "`curl -d @examples/a.json`"
    assert shown_paths(page) == {"photos/", "README.md", "m/x.keras", "examples/a.json"}
    placeholders = "`stages/<name>.py`, `data/prepared/{x,y}_test.npy`, `mnist-predict a.png <b> --model models:/m@c`"
    assert shown_paths(placeholders) == {"a.png"}
    assert not path_exists("photos/") and not path_exists("examples/no-such.png") and not path_exists("tests/*.nope")
    assert path_exists("examples/") and path_exists("README.md") and path_exists("stages/serving/*.py")
    assert path_exists("data/model/model.keras") and path_exists("data/") and path_exists("data/external/shapes")


def runs_argparse(module: str) -> bool:
    """Whether ``python -m module`` parses arguments: its file, or for a package its ``__main__`` and siblings."""
    path = module_path(module)
    files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
    return any("argparse" in f.read_text() for f in files)


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(m for m in shown_modules() if module_path(m).exists()))
def test_tools_shown_answer_help(module):
    if not runs_argparse(module):
        pytest.skip(f"{module} takes no arguments (a DVC stage, run by dvc repro)")
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


def test_make_help_lists_every_target():
    result = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = {name for line in result.stdout.splitlines() for name in line.strip().split("  ")[0].split()}
    missing = makefile_targets() - {"$(STAMP)"} - listed
    assert not missing, f"give these targets a '## what it does' comment: {sorted(missing)}"


def test_the_licence_is_mit_and_names_the_mnist_derived_files_that_exist():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the mnist-pipeline authors")
    assert "Creative Commons Attribution-Share Alike 3.0" in text and "Yann LeCun and\nCorinna Cortes" in text
    named = re.findall(r"^  ((?:reports|examples|docs)/\S+)", text, flags=re.M)
    assert len(named) >= 5, named
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"LICENSE names files that do not exist (moved or renamed?): {missing}"
