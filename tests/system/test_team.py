"""Team use with the real things (slow): a PostgreSQL-backed `mlflow server`, queued experiments
against it, the database going away mid-experiment, two clones sharing a DVC remote, and the
server's safety: a password-protected cluster, secrets kept out of output, logs and `ps`, a
non-loopback host refused without MLflow's basic-auth app, and `make server` as root with the
project where the postgres user cannot enter.

Everything lives in temporary directories and is stopped by process id at the end.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stages.lib import cluster
from stages.tools import server
from tests import conftest
from tests.conftest import commit_all, postgres_workdir, queue_seeds, run_in, tiny_clone, user_environment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-classifier"  # clone A's synthetic data set is published as `tiny` (tiny_clone)


def mlflow_runs(uri: str, status: str | None = None) -> list:
    return conftest.mlflow_runs(uri, status, experiment="tiny")


@pytest.fixture(scope="module")
def workdir():
    with postgres_workdir("mnist-team-") as path:
        yield path


@pytest.fixture(scope="module")
def tracking(workdir):
    """The same `make server` code: PostgreSQL cluster + mlflow server on 127.0.0.1."""
    state = server.start("127.0.0.1", server.free_port(), workdir / "server")
    pg = cluster.Postgres(Path(state["postgres"]["directory"]), state["postgres"]["port"])
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
    """Clone A of this repository, tiny params and synthetic data committed, `dvc repro` logged to the server,
    pushed to a remote."""
    url, _ = tracking
    path = tiny_clone(workdir / "a", synthetic=True)
    result = run_in(["dvc", "repro"], path, MLFLOW_TRACKING_URI=url)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    commit_all(path, "tiny pipeline")
    (workdir / "remote").mkdir()  # a directory remote must exist (make remote checks)
    assert run_in(["make", "remote", f"REMOTE={workdir / 'remote'}"], path).returncode == 0
    pushed = run_in(["dvc", "push"], path)
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
    status = run_in(["dvc", "status", "preprocess", "train", "evaluate"], b)  # fetch: always_changed
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
    versions = c.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 3
    champion = c.get_model_version_by_alias(MODEL, "champion")
    assert float(champion.tags["val_accuracy"]) == max(float(v.tags["val_accuracy"]) for v in versions)


def test_the_database_going_away_mid_experiment(tracking, clone_a):
    url, pg = tracking
    command = ["dvc", "exp", "run", "-S", "train.seed=4"]
    environ = user_environment(MLFLOW_TRACKING_URI=url)
    log = clone_a / "exp.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=clone_a, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        # Once training is done (train checked the store before it began): the ONNX export and its check, the
        # evaluate stage and publish's import leave seconds before publish reaches the server.
        while "epoch 1/1" not in log.read_text():
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


# --- the server's safety -------------------------------------------------------------------


def test_the_throw_away_cluster_needs_its_password(workdir, tracking):
    import psycopg

    _, pg = tracking
    hba = [ln.split() for ln in (pg.data / "pg_hba.conf").read_text().splitlines() if ln.strip()]
    rules = [fields for fields in hba if not fields[0].startswith("#")]
    assert rules and all(fields[-1] == "scram-sha-256" for fields in rules), rules
    assert not any("trust" in fields for fields in rules)
    secret = workdir / "server" / "postgres-password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    dsn = f"host=127.0.0.1 port={pg.port} dbname=mlflow user=mlflow connect_timeout=5"
    for wrong in ("", "password=not-it"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"{dsn} {wrong}").close()
    with psycopg.connect(f"{dsn} password={password}") as conn:
        assert conn.execute("select current_user").fetchone() == ("mlflow",)


def ps_listing() -> str:
    return subprocess.run(["ps", "axww", "-o", "pid,user,args"], capture_output=True, text=True, check=True).stdout


def test_secrets_stay_out_of_output_logs_and_ps(workdir, tracking):
    """`user:s3cret@` in MLFLOW_BACKEND_URI, the git remote and `make remote`: `s3cret` is nowhere."""
    import psycopg

    _, pg = tracking
    password = (workdir / "server" / "postgres-password").read_text().strip()
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} dbname=mlflow user=mlflow password={password}") as conn:
        conn.autocommit = True
        conn.execute("create role alice login password 's3cret'")
        conn.execute("create database alice owner alice")
    directory, port = workdir / "secret-server", server.free_port()
    backend = f"postgresql://alice:s3cret@127.0.0.1:{pg.port}/alice"
    start = [sys.executable, "-m", "stages.tools.server", "start", "--port", str(port), "--dir", str(directory)]
    seen = []
    wrong = run_in(start, ROOT, MLFLOW_BACKEND_URI=backend.replace("s3cret", "s3cret-but-wrong"))
    assert wrong.returncode == 1
    assert len(wrong.stderr.splitlines()) == 1 and wrong.stderr.startswith("server: error:"), wrong.stderr
    seen += [wrong.stdout, wrong.stderr]
    started = run_in(start, ROOT, MLFLOW_BACKEND_URI=backend)
    try:
        assert started.returncode == 0, started.stderr
        assert "postgresql://***@127.0.0.1" in started.stdout, started.stdout
        url = f"http://127.0.0.1:{port}"
        client(url).create_experiment("works")  # the server really uses alice's database
        seen += [started.stdout, started.stderr, ps_listing()]
        repo = workdir / "secrets-clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "remote", "set-url", "origin", "https://alice:s3cret@git.invalid/r"])
        remote = run_in(["make", "remote", "REMOTE=https://alice:s3cret@dvc.invalid/store"], repo)
        assert remote.returncode == 0, remote.stderr
        assert "https://***@dvc.invalid/store" in remote.stdout, remote.stdout
        seen += [remote.stdout, remote.stderr]
    finally:
        stopped = run_in([sys.executable, "-m", "stages.tools.server", "stop", "--dir", str(directory)], ROOT)
    seen += [stopped.stdout, stopped.stderr]
    seen += [p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file()]
    leaks = [line[:300] for text in seen for line in text.splitlines() if "s3cret" in line]
    assert not leaks, leaks


def postmaster_pid(pg: cluster.Postgres) -> int | None:
    pid_file = pg.data / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def alive(pid: int | None, settle_s: float = 10.0) -> bool:
    """Whether ``pid`` still runs after up to ``settle_s`` (a process exits a moment after PostgreSQL removes its
    pid file; a zombie waiting for its parent counts as ended)."""
    deadline = time.monotonic() + settle_s
    while pid is not None:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return False
        if state == "Z":
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.2)
    return False


def test_a_failed_start_stops_its_cluster_and_remove_stops_a_running_one(workdir, monkeypatch):
    """`make server` failing after PostgreSQL started (here mlflow is not installed: neither beside this Python
    nor on PATH) leaves no cluster running; `remove` stops a running cluster no state file records before
    deleting its files."""
    directory = workdir / "failing"
    monkeypatch.setattr(sys, "executable", str(workdir / "no-venv" / "python"))
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")  # PostgreSQL's `runuser`, no mlflow
    pids = []
    try:
        with pytest.raises(Exception) as failed:  # its type is checked below, after the cluster
            server.start("127.0.0.1", server.free_port(), directory)
        saved = json.loads((directory / "pg.json").read_text())
        pg = cluster.Postgres(Path(saved["directory"]), saved["port"])
        pids.append(postmaster_pid(pg))
        assert (pg.data / "PG_VERSION").exists()  # the cluster was made and started, then:
        assert not pg.running(), "the cluster was left running after the failed start"
        assert not (directory / "state.json").exists()
        assert isinstance(failed.value, server.ServerError) and "mlflow" in str(failed.value), failed.value

        pg.start()  # a cluster running with no state file to say so (left by a crash or an earlier version)
        pids.append(postmaster_pid(pg))
        assert alive(pids[-1], settle_s=0)
        server.remove(directory)
        assert not alive(pids[-1]), "remove deleted the files of a running cluster"
        assert not directory.exists() and not pg.directory.exists()
    finally:
        for pid in pids:  # whatever the outcome, nothing is left running
            if alive(pid, settle_s=0):
                os.kill(pid, signal.SIGTERM)


def test_a_non_loopback_host_needs_auth(workdir):
    refused = run_in(["make", "-o", "install", "server", "SERVER_HOST=0.0.0.0", f"SERVER_DIR={workdir / 'open'}"], ROOT)
    assert refused.returncode != 0
    assert "server: error: refusing to serve MLflow on 0.0.0.0 without authentication" in refused.stderr
    assert not (workdir / "open" / "state.json").exists()
    assert server.is_loopback("127.0.0.1") and server.is_loopback("::1") and server.is_loopback("localhost")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.0.2.1")


@pytest.fixture(scope="module")
def auth_server(workdir):
    """`make server AUTH=1` in a clone of this repository under a 0700 directory (as root: one the postgres
    user cannot enter, like a project under /root)."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (the mlflow[auth] extra)")
    home = Path(tempfile.mkdtemp(prefix="mnist-private-", dir="/tmp"))
    home.chmod(0o700)
    project = home / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    port = server.free_port()
    started = run_in(["make", "-o", "install", "server", "AUTH=1", f"SERVER_PORT={port}"], project)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        password = re.search(r"admin user 'admin', password (\S+) ", started.stdout).group(1)
        yield project, f"http://127.0.0.1:{port}", password, started
    finally:
        removed = run_in([sys.executable, "-m", "stages.tools.server", "remove", "--yes"], project)
        shutil.rmtree(home, ignore_errors=True)
        assert removed.returncode == 0, removed.stderr


def test_make_server_keeps_its_cluster_and_secrets_private(auth_server):
    project, url, password, started = auth_server
    state = json.loads((project / ".server" / "pg.json").read_text())
    cluster = Path(state["directory"])
    if os.geteuid() == 0:  # as root (.ci/run here): postgres cannot enter the project, so the cluster lives aside
        assert not cluster.is_relative_to(project)
        assert stat.S_IMODE(cluster.stat().st_mode) == 0o700 and cluster.owner() == "postgres"
    else:  # as any other user (GitHub's runners): the cluster in the project's .server/, this user's only
        assert cluster == (project / ".server" / "postgres").resolve()
        assert stat.S_IMODE(cluster.stat().st_mode) == 0o700 and cluster.stat().st_uid == os.geteuid()
    hba = (cluster / "data" / "pg_hba.conf").read_text()
    assert "trust" not in [word for line in hba.splitlines() if not line.startswith("#") for word in line.split()]
    for name in ["postgres-password", "auth/basic_auth.ini", "auth/flask-secret-key"]:
        assert stat.S_IMODE((project / ".server" / name).stat().st_mode) == 0o600, name
    assert password not in (project / ".server" / "auth" / "basic_auth.ini").read_text()  # shown once, kept nowhere
    assert password not in ps_listing()


def api(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search?max_results=1")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_auth_server_asks_for_credentials(auth_server, clone_a, monkeypatch):
    project, url, password, _ = auth_server
    assert api(url) == 401
    assert api(url, "admin", "not-the-password") == 401
    assert api(url, "admin", password) == 200
    logged = run_in(
        ["dvc", "repro"], clone_a, MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=password,
    )  # fmt: skip
    assert logged.returncode == 0, logged.stdout[-2000:] + logged.stderr[-2000:]
    assert password not in logged.stdout + logged.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    assert len(mlflow_runs(url, "FINISHED")) == 1
    assert client(url).get_model_version_by_alias(MODEL, "champion").version == "1"


def test_bad_credentials_fail_in_one_line_before_training(auth_server, clone_a):
    _, url, _, _ = auth_server
    started = time.monotonic()
    result = run_in(
        [sys.executable, "-m", "stages.train"], clone_a, MLFLOW_TRACKING_URI=url,
        MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="not-the-password",
    )  # fmt: skip
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("train: error:")]
    assert len(errors) == 1 and "credentials" in errors[0].lower(), result.stderr
    assert "epoch" not in result.stdout and "not-the-password" not in result.stdout + result.stderr
