"""Team use with the real things (slow): a PostgreSQL-backed `mlflow server`, queued experiments
against it, the database going away mid-experiment, and two clones sharing a DVC remote.

Everything lives in one temporary directory (readable by the postgres user,
which PostgreSQL runs as when the tests run as root) and is stopped by process
id at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stages.tools import server
from tests.conftest import commit_all, mlflow_runs, queue_seeds, run_in, tiny_clone

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workdir():
    try:
        server.pg_bin("initdb")
    except server.ServerError as exc:
        pytest.skip(f"PostgreSQL's server programs are missing ({exc}); .ci/run installs them")
    path = Path(tempfile.mkdtemp(prefix="mnist-team-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking(workdir):
    """The same `make server` code: PostgreSQL cluster + mlflow server on 127.0.0.1."""
    state = server.start("127.0.0.1", server.free_port(), workdir / "server")
    pg = server.Postgres(Path(state["postgres"]["directory"]), state["postgres"]["port"])
    try:
        yield state["url"], pg
    finally:
        server.stop(workdir / "server")
    assert not pg.running()


def client(url: str):
    import mlflow

    return mlflow.MlflowClient(url)


@pytest.fixture(scope="module")
def clone_a(workdir, tracking):
    """Clone A of this repository, tiny params committed, `dvc repro` logged to the server, pushed to a remote."""
    url, _ = tracking
    path = tiny_clone(workdir / "a")
    result = run_in(["dvc", "repro"], path, MLFLOW_TRACKING_URI=url)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    commit_all(path, "tiny pipeline")
    assert run_in(["make", "remote", f"REMOTE={workdir / 'remote'}"], path).returncode == 0
    pushed = run_in(["dvc", "push", "--run-cache"], path)
    assert pushed.returncode == 0, pushed.stderr
    return path


def test_a_teammate_pulls_instead_of_training(workdir, tracking, clone_a):
    url, _ = tracking
    assert len(mlflow_runs(url, "FINISHED")) >= 1
    before = {r.info.run_id for r in mlflow_runs(url)}
    b = workdir / "b"
    subprocess.run(["git", "clone", "-q", str(clone_a), str(b)], check=True)
    assert not (b / ".dvc" / "config.local").exists()  # the remote stays out of git
    assert run_in(["make", "remote", f"REMOTE={workdir / 'remote'}"], b).returncode == 0
    pulled = run_in(["dvc", "pull"], b)
    assert pulled.returncode == 0, pulled.stderr
    repro = run_in(["dvc", "repro"], b, MLFLOW_TRACKING_URI=url)
    assert repro.returncode == 0, repro.stderr[-2000:]
    assert "epoch 1/1" not in repro.stdout and "already in" in repro.stdout, repro.stdout
    status = run_in(["dvc", "status", "fetch", "preprocess", "train", "evaluate"], b)
    assert "up to date" in status.stdout, status.stdout
    for name in ["data/model/model.keras", "reports/metrics.json"]:
        assert (b / name).read_bytes() == (clone_a / name).read_bytes(), name
    assert {r.info.run_id for r in mlflow_runs(url)} == before  # the server still holds one run for that result


def test_queued_experiments_against_the_server(tracking, clone_a):
    url, _ = tracking
    status = queue_seeds(clone_a, (2, 3), MLFLOW_TRACKING_URI=url)
    assert status.count("Success") == 2, status
    exp_runs = [r for r in mlflow_runs(url, "FINISHED") if r.data.tags.get("dvc.exp_name")]
    assert len(exp_runs) == 2
    c = client(url)
    for run in exp_runs:
        assert len(c.get_metric_history(run.info.run_id, "val_accuracy")) == 1  # its full (1-epoch) history
    versions = c.search_model_versions("name = 'mnist-classifier'")
    assert len(versions) == 3
    champion = c.get_model_version_by_alias("mnist-classifier", "champion")
    assert float(champion.tags["val_accuracy"]) == max(float(v.tags["val_accuracy"]) for v in versions)


def test_the_database_going_away_mid_experiment(tracking, clone_a):
    url, pg = tracking
    command = ["dvc", "exp", "run", "-S", "train.seed=4"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    environ.update({"PATH": f"{BIN}:{environ['PATH']}", "MLFLOW_TRACKING_URI": url})
    log = clone_a / "exp.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=clone_a, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "Running stage 'evaluate'" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        pg.stop()
        stopped = time.monotonic()
        assert proc.wait(timeout=120) != 0
        assert time.monotonic() - stopped < 60
    finally:
        if proc.poll() is None:
            proc.kill()
        if not pg.running():
            pg.start()
    assert "publish: error:" in log.read_text(), log.read_text()[-3000:]
    assert mlflow_runs(url, "RUNNING") == []  # never created, or marked FAILED
    again = run_in(command, clone_a, MLFLOW_TRACKING_URI=url)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert any(r.data.params.get("train.seed") == "4" for r in mlflow_runs(url, "FINISHED"))
