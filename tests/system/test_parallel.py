"""`make test` on pytest-xdist's workers (tests/conftest.py): the tests that share a module-scoped fixture (a server,
a trained model, a clone) run on one worker, in their order, with the fixture made once; the other tests go to
whichever worker is free."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHARED = """
import os

import pytest


@pytest.fixture(scope="module")
def server():
    with open("setups.txt", "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    return []


@pytest.mark.parametrize("i", range(6))
def test_in_order(server, i):
    server.append(i)
    assert server == list(range(i + 1))


def test_without_the_server():
    pass
"""

ALONE = """
import time

import pytest


@pytest.mark.parametrize("i", range(6))
def test_alone(i):
    time.sleep(0.1)
"""


def test_the_tests_sharing_a_module_fixture_run_on_one_worker_in_order(tmp_path):
    (tmp_path / "test_shared.py").write_text(SHARED)
    (tmp_path / "test_alone.py").write_text(ALONE)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    environ["PYTHONPATH"] = str(ROOT)
    options = ["-p", "tests.conftest", "-p", "no:cacheprovider", "-v", "-n", "2", "--dist", "loadgroup"]
    command = [sys.executable, "-m", "pytest", *options]
    result = subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "13 passed" in result.stdout, result.stdout
    ran = re.findall(r"\[(gw\d)\] .* PASSED (\S+)", result.stdout)
    workers = {worker for worker, test in ran if "test_in_order" in test}
    assert len(workers) == 1, ran  # one worker took the whole group
    assert (tmp_path / "setups.txt").read_text().split() == sorted(workers)  # which made the fixture once
