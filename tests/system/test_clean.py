"""`make clean` removes what can be rebuilt and nothing else; `make clean-state` deletes local state only after
listing it and a yes (or YES=1), stops and removes make server's cluster through stages.tools.server remove,
and without an answer deletes nothing. Both run in a clone of this repository, never here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

REBUILT = [".venv/bin/python", ".venv-lock/x", ".ruff_cache/x", ".pytest_cache/x", "stages/__pycache__/x.pyc",
           "tests/__pycache__/x.pyc", "mnist_pipeline.egg-info/PKG-INFO"]  # fmt: skip
STATE = ["mlflow.db", "mlflow.db.lock", "mlartifacts/1/x", ".runtime/x.json", ".tune/optuna.journal"]
USERS = [".dvc/cache/files/md5/ab/cdef", "data/external/train-images-idx3-ubyte", "data/external/__pycache__/x",
         ".dvc/__pycache__/x"]  # fmt: skip


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone of this repository with every kind of file the two targets may meet."""
    path = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    shutil.copy2(ROOT / "Makefile", path / "Makefile")  # this tree's, committed or not
    for name in REBUILT + STATE + USERS:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("x")
    return path


def make(clone: Path, *args: str, answer: str | None = None) -> subprocess.CompletedProcess:
    """``make <args>`` in ``clone``; ``answer`` on stdin, or no stdin at all (as in CI)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MAKEFLAGS", "MFLAGS", "MAKELEVEL"))}
    environ["PATH"] = f"{Path(sys.executable).parent}:{environ['PATH']}"
    stdin = {"input": answer} if answer is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=clone, env=environ, capture_output=True, text=True, timeout=120,
        **stdin,
    )  # fmt: skip


def present(clone: Path, names: list[str]) -> list[str]:
    return [name for name in names if (clone / name).exists()]


def test_clean_removes_what_can_be_rebuilt_and_keeps_data_and_state(clone):
    result = make(clone, "clean")
    assert result.returncode == 0, result.stderr
    assert present(clone, REBUILT) == []
    assert present(clone, STATE + USERS) == STATE + USERS
    assert "clean: removed .venv" in result.stdout and "clean: removed stages/__pycache__" in result.stdout
    assert make(clone, "clean").stdout == ""  # nothing left to remove, nothing said


def test_clean_state_without_an_answer_lists_and_deletes_nothing(clone):
    refused = make(clone, "clean-state")
    assert refused.returncode != 0  # make says 2
    assert all(f"  {name.split('/')[0]}\n" in refused.stdout for name in STATE), refused.stdout
    assert ".dvc" not in refused.stdout and "data/external" not in refused.stdout
    assert "no answer" in refused.stderr and "YES=1" in refused.stderr
    assert present(clone, STATE) == STATE

    declined = make(clone, "clean-state", answer="n\n")
    assert declined.returncode == 0 and "[y/N]" in declined.stdout and "nothing deleted" in declined.stdout
    assert present(clone, STATE) == STATE


def test_clean_state_deletes_local_state_after_a_yes_and_keeps_the_rest(clone):
    (clone / ".runtime").rename(clone / "gone")  # only what exists is listed
    result = make(clone, "clean-state", answer="y\n")
    assert result.returncode == 0, result.stderr
    assert ".runtime" not in result.stdout and "clean-state: deleted mlflow.db" in result.stdout
    assert present(clone, STATE) == []
    assert present(clone, REBUILT + USERS) == REBUILT + USERS and (clone / "reports" / "metrics.json").exists()
    again = make(clone, "clean-state")
    assert again.returncode == 0 and "nothing to delete" in again.stdout


def test_clean_state_yes_removes_the_server_and_its_cluster_through_the_server_tool(clone, tmp_path):
    """make server's state, and its cluster outside the clone (as when the project is under /root), through
    ``stages.tools.server remove``; the clone borrows this environment, its lock files older than the stamp."""
    cluster = tmp_path / "postgres-home" / "cluster"
    (cluster / "data").mkdir(parents=True)
    server = clone / ".server"
    server.mkdir()
    (server / "pg.json").write_text(json.dumps({"directory": str(cluster), "port": 0}))
    (server / "postgres-password").write_text("secret\n")
    borrow_this_environment(clone)

    result = make(clone, "clean-state", "YES=1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[y/N]" not in result.stdout
    assert f"  {cluster} (make server's PostgreSQL cluster)" in result.stdout
    assert f"server: removed {cluster}" in result.stdout  # the tool's own line
    assert not server.exists() and not cluster.exists() and present(clone, STATE) == []
    assert "secret" not in result.stdout + result.stderr


def borrow_this_environment(clone: Path) -> None:
    """Let ``make install`` in ``clone`` find this environment installed: .venv a link to it, and the files its
    stamp depends on older than the stamp (so nothing is installed, nor the clone installed into it)."""
    venv = Path(sys.executable).parents[1]
    stamp = venv / ".installed-lock"
    if not stamp.exists():
        pytest.skip("this environment was not installed by make install (no .venv/.installed-lock)")
    subprocess.run(["rm", "-rf", str(clone / ".venv")], check=True)  # the fixture's stand-in
    (clone / ".venv").symlink_to(venv, target_is_directory=True)
    old = stamp.stat().st_mtime - 60
    for name in ("requirements.lock", "pyproject.toml"):
        os.utime(clone / name, (old, old))
