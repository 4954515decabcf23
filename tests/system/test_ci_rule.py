"""CI's rule (tests/conftest.py): under ``CI=true`` a skipped test fails and names what was missing,
unless its reason is on the allow-list; without ``CI`` it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import conftest

ROOT = Path(__file__).resolve().parents[2]

NEEDS_A_PROGRAM = """
import shutil

import pytest


def test_needs_npm():
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH (the registry-only data source needs it)")
"""

NEEDS_A_PACKAGE = """
import pytest

pytest.importorskip("no_such_package_for_the_ci_rule")


def test_never_runs():
    pass
"""

SKIPIF_AND_XFAIL = """
import pytest


@pytest.mark.skipif(True, reason="chromedriver is missing")
def test_marked():
    pass


@pytest.mark.xfail(reason="a known failure, not a skip")
def test_expected_to_fail():
    assert False
"""


def run_pytest(tmp_path: Path, ci: bool, *more: str) -> subprocess.CompletedProcess:
    """Run pytest on three tiny test files with this repository's conftest as a plugin, PATH an empty directory
    (no program is found), and ``CI=true`` or no ``CI`` at all; ``more``: further options."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    tiny = {"test_program.py": NEEDS_A_PROGRAM, "test_package.py": NEEDS_A_PACKAGE, "test_marks.py": SKIPIF_AND_XFAIL}
    for name, source in tiny.items():
        (tmp_path / name).write_text(source)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    environ.update({"PATH": str(empty), "PYTHONPATH": str(ROOT), **({"CI": "true"} if ci else {})})
    # Without --continue-on-collection-errors the failed import would stop the run before the other files.
    options = ["-p", "tests.conftest", "-p", "no:cacheprovider", "-rA", "--continue-on-collection-errors"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *options, *more, *tiny],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_for_a_missing_program_or_package_fails_under_ci_and_names_it(tmp_path):
    under_ci = run_pytest(tmp_path, ci=True)
    out = under_ci.stdout
    assert under_ci.returncode == 1, out + under_ci.stderr
    assert "skipped under CI=true: npm is not on PATH" in out  # the program, hidden from PATH
    assert "skipped under CI=true: could not import 'no_such_package_for_the_ci_rule'" in out  # importorskip
    assert "skipped under CI=true: chromedriver is missing" in out  # a skipif mark
    assert "1 xfailed" in out and "skipped" not in out.splitlines()[-1]  # an xfail is no skip

    plain = run_pytest(tmp_path, ci=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "3 skipped, 1 xfailed" in plain.stdout and "npm is not on PATH" in plain.stdout


def test_the_rule_holds_on_parallel_workers(tmp_path):
    """As `make test` runs the suite, on pytest-xdist's workers: the skips happen there, and their reports reach
    the main process already failed."""
    under_ci = run_pytest(tmp_path, True, "-n", "2", "--dist", "loadgroup")
    out = under_ci.stdout
    assert under_ci.returncode == 1, out + under_ci.stderr
    assert "created: 2/2 workers" in out, out
    assert (
        "skipped under CI=true: npm is not on PATH" in out and "skipped under CI=true: chromedriver is missing" in out
    )
    assert "skipped under CI=true: could not import 'no_such_package_for_the_ci_rule'" in out
    assert "1 xfailed" in out and "skipped" not in out.splitlines()[-1], out.splitlines()[-1]


class Skipped:
    """A report as pytest makes it for a test skipped with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.outcome = "skipped"
        self.longrepr = ("tests/test_x.py", 3, f"Skipped: {reason}")

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"


def test_a_reason_on_the_allow_list_stays_a_skip(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("# why: nothing is missing\nno --help \\(a DVC stage\\)\n")
    monkeypatch.setattr(conftest, "ALLOWED_SKIPS", allowed)
    monkeypatch.setenv("CI", "true")

    kept, failed = Skipped("stages.fetch has no --help (a DVC stage)"), Skipped("initdb not found")
    conftest.fail_skip_under_ci(kept)
    conftest.fail_skip_under_ci(failed)
    assert kept.outcome == "skipped"
    assert failed.outcome == "failed" and "skipped under CI=true: initdb not found" in failed.longrepr

    monkeypatch.delenv("CI")
    untouched = Skipped("initdb not found")
    conftest.fail_skip_under_ci(untouched)
    assert untouched.outcome == "skipped"


def test_the_allow_list_is_short_and_says_why():
    lines = conftest.ALLOWED_SKIPS.read_text().splitlines()
    patterns = conftest.allowed_skips()
    assert len(patterns) <= 5, "keep the allow-list short: install what a skipped test needs in CI instead"
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("#"), f"say why {line!r} is allowed, in a comment above it"
    missing = ("not installed", "not found", "missing", "could not import", "needs the")
    assert not [p.pattern for p in patterns if any(word in p.pattern for word in missing)], "allow no missing thing"


def test_the_browser_test_finds_chromium_or_the_runners_chrome(tmp_path, monkeypatch):
    """chromium + chromedriver on PATH (Debian's); else google-chrome on PATH with the chromedriver in
    $CHROMEWEBDRIVER (one layout of GitHub's runners)."""
    from tests.tools.test_demo import browser_programs

    def program(directory: Path, name: str) -> str:
        directory.mkdir(exist_ok=True)
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
        return str(directory / name)

    debian, runner, drivers = tmp_path / "debian", tmp_path / "runner", tmp_path / "chromedriver-linux64"
    monkeypatch.delenv("CHROMEWEBDRIVER", raising=False)
    monkeypatch.setenv("PATH", str(debian))
    assert browser_programs() == (None, None)
    chromium, chromedriver = program(debian, "chromium"), program(debian, "chromedriver")
    assert browser_programs() == (chromium, chromedriver)

    monkeypatch.setenv("PATH", str(runner))
    chrome, driver = program(runner, "google-chrome"), program(drivers, "chromedriver")
    assert browser_programs() == (chrome, None)
    monkeypatch.setenv("CHROMEWEBDRIVER", str(drivers))
    assert browser_programs() == (chrome, driver)


def test_both_ci_runs_are_strict_and_the_workflow_provides_what_the_tests_need():
    import yaml

    job = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["pipeline"]
    assert job["env"]["CI"] == "true"
    setup = "\n".join(step.get("run", "") for step in job["steps"])
    assert "apt-get install -y -qq postgresql" in setup and "${CHROMEWEBDRIVER:-}/chromedriver" in setup
    assert "command -v chromium || command -v google-chrome" in setup  # the order tests/tools/test_demo.py picks in
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "\nexport CI=true\n" in ci_run
    assert all(f"packages+=({name})" in ci_run for name in ("postgresql", "chromium chromium-driver", "npm"))
    comment_steps = [step for step in job["steps"] if "pull_request" in str(step.get("if", ""))]
    assert len(comment_steps) == 2 and all(step["if"].startswith("${{ !cancelled() && ") for step in comment_steps)
