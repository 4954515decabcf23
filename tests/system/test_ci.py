"""CI as users run it: the workflow passes actionlint, `make report` and the dvc.lock gate work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.tools.lock_check import stale_entries
from tests.conftest import commit_all

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def test_workflow_passes_actionlint():
    actionlint = shutil.which("actionlint", path=str(BIN)) or shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (it is in the dev dependencies)")
    result = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_only_calls_make_targets_that_exist():
    import re

    import yaml

    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["pipeline"]["steps"]
    # The one step that is no make target provides the runner's system programs (apt-get), not project work.
    system = [step["run"] for step in steps if step.get("name", "").startswith("Programs the tests need")]
    assert len(system) == 1 and "apt-get install" in system[0] and "make " not in system[0], system
    commands = [step["run"] for step in steps if "run" in step and step["run"] not in system]
    targets = {m.group(1) for c in commands for m in [re.match(r"make (?:--silent )?([\w-]+)", c)] if m}
    assert all(c.startswith("make ") for c in commands), commands
    makefile = (ROOT / "Makefile").read_text()
    assert targets and all(re.search(rf"^{t}:", makefile, re.M) for t in targets), targets


def test_make_install_with_another_python_says_which_to_use_and_creates_nothing(tmp_path):
    # A stand-in for a Python 3.12: this interpreter, reporting another version to the Makefile's check.
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    other = tmp_path / "python3.12"
    other.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.version_info = (3, 12, 1); exec(sys.argv[1])' \"$2\"\n"
    )
    other.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MAKEFLAGS", "MFLAGS", "MAKELEVEL"))}
    result = subprocess.run(["make", "--no-print-directory", "install", f"PYTHON={other}"], cwd=tmp_path,
                            env=environ, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        f"install: error: {other} is Python 3.12, and the locks are for 3.11: install Python 3.11 and run make "
        "again with PYTHON=python3.11"
    )
    assert not (tmp_path / ".venv").exists()


def test_lock_check_ignores_absent_data_but_not_changed_code_or_params():
    absent = {
        "train": [{"changed deps": {"data/prepared": "deleted"}}, {"changed outs": {"x": "not in cache"}}],
        "publish": ["always changed"],
    }
    assert stale_entries(absent) == []
    changed = {
        "train": [{"changed deps": {"stages/train.py": "modified", "params.yaml": {"train.epochs": "modified"}}}],
        "evaluate": ["changed command"],
    }
    assert stale_entries(changed) == [
        "train: stages/train.py modified",
        "train: param train.epochs modified",
        "evaluate: changed command",
    ]


@pytest.fixture
def two_commits(tmp_path) -> Path:
    """A clone of this repository plus one commit that changes a param and the metrics."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    params = (clone / "params.yaml").read_text().replace("epochs: 10", "epochs: 12")
    (clone / "params.yaml").write_text(params)
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    metrics["test_accuracy"] = round(metrics["test_accuracy"] + 0.0042, 6)
    (clone / "reports" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    commit_all(clone, "more epochs")
    return clone


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


@pytest.mark.slow
def test_report_shows_the_changed_metric_and_param_with_images(two_commits):
    other = two_commits / "reports" / "pr" / "notes.txt"  # not the report's: --out may hold other files
    other.parent.mkdir(parents=True)
    other.write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "stages.tools.report", "--base", "HEAD~1"],
        cwd=two_commits,
        env={**env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = two_commits / "reports" / "pr"
    report = (out / "report.md").read_text()
    assert "test_accuracy" in report and "0.0042" in report  # dvc metrics diff's Change column
    assert "train.epochs" in report and "12" in report
    for image in ["curves.png", "confusion_base.png", "confusion_head.png"]:
        assert (out / image).stat().st_size > 1000 and f"({image})" in report
    assert "![" not in (out / "summary.md").read_text()  # tables only
    assert other.read_text() == "mine" and not list(out.glob(".report-*"))  # kept; no staging left


def test_make_report_passes_base_as_one_argument_never_to_the_shell(tmp_path):
    # A branch name may hold ';' (git allows it): the workflow passes github.base_ref on as BASE. `-o install`:
    # the environment is not the point here, and is not rebuilt.
    witness = tmp_path / "ran"
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "report", f"BASE=no-such-rev;touch {witness}"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not witness.exists(), result.stdout + result.stderr
    assert result.returncode != 0 and f"no-such-rev;touch {witness}" in result.stderr, result.stderr


@pytest.mark.slow
def test_lock_check_fails_on_a_changed_param(two_commits):
    def check(path=None):
        return subprocess.run(
            [sys.executable, "-m", "stages.tools.lock_check"],
            cwd=two_commits,
            env={**env(), "PYTHONPATH": str(ROOT), **({"PATH": path} if path else {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    restore = ["git", "-C", str(two_commits), "checkout", "-q", "HEAD~1", "--", "params.yaml", "reports/metrics.json"]
    subprocess.run(restore, check=True)
    assert check().returncode == 0
    plain = check(path="/usr/bin:/bin")
    assert plain.returncode == 0, plain.stderr
    (two_commits / "params.yaml").write_text((two_commits / "params.yaml").read_text().replace("seed: 1", "seed: 2"))
    failed = check()
    assert failed.returncode == 1 and "param train modified" in failed.stderr


def test_make_comment_posts_the_report_as_one_updatable_pr_comment(tmp_path):
    """CML is not installable here: a stand-in records the command line `make comment` runs on GitHub."""
    fake = tmp_path / "cml"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "args"}\n')
    fake.chmod(0o755)
    result = subprocess.run(["make", "--silent", "comment", f"CML={fake}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().splitlines() == [
        "comment",
        "update",
        "--target=pr",
        "--watermark-title=MNIST pipeline report",
        "reports/pr/report.md",
    ]
