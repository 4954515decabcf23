"""Object storage for real: the DVC remote and MLflow's artifacts on S3, experiments shared between clones.

The fast tests at the end check what `make remote` and `make server` decide before touching anything.

The S3 endpoint is moto's standalone server (``moto_server``, the dev extra) on a free port of 127.0.0.1,
with IAM authentication on: only the key made for the test is accepted. One endpoint and one pipeline run
serve the whole module; every process a test starts is stopped by process id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from stages.lib import cluster
from stages.tools import remote, server
from tests import conftest
from tests.conftest import commit_all, run_in, tiny_clone, user_environment

BIN = Path(sys.executable).parent
BUCKET = "team-bucket"
MODEL = "tiny-classifier"  # clone A's synthetic data set is published as `tiny` (tiny_clone)


def mlflow_runs(uri: str, status: str | None = None) -> list:
    return conftest.mlflow_runs(uri, status, experiment="tiny")


# A client without S3 credentials: no key, no profile files, and no instance-metadata look-up (not loopback).
NO_AWS = {
    "AWS_CONFIG_FILE": "/nonexistent/aws/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="mnist-storage-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(workdir):
    """moto_server on 127.0.0.1:<free port>, the bucket, and an IAM key that alone may use it."""
    import boto3

    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    with open(workdir / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (workdir / "moto.log").read_text()
                time.sleep(0.2)
        setup = {"endpoint_url": url, "region_name": "us-east-1"}
        setup.update(aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="team")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="team", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="team")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        # From now on every request must be signed with the team's key.
        enable = urllib.request.Request(
            url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(enable, timeout=5).close()
        env = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
            **NO_AWS,
        }
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def bucket_objects(s3, prefix: str) -> dict[str, int]:
    import boto3

    url, env = s3
    client = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        objects.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return objects


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def clone(origin: Path, path: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def origin(workdir, s3):
    """Clone A (tiny params, synthetic data) has run the pipeline, logged to a store every clone shares, and
    pushed its outputs to the S3 remote; ``origin.git`` is the team's bare git remote."""
    url, aws = s3
    a = tiny_clone(workdir / "a", synthetic=True)
    ok(run_in(["make", "remote", f"REMOTE=s3://{BUCKET}/dvc", f"ENDPOINT={url}"], a, **aws))
    ok(run_in(["dvc", "repro"], a, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}"))
    commit_all(a, "tiny pipeline")
    subprocess.run(["git", "clone", "-q", "--bare", str(a), str(workdir / "origin.git")], check=True)
    subprocess.run(["git", "-C", str(a), "remote", "set-url", "origin", str(workdir / "origin.git")], check=True)
    started = time.monotonic()
    pushed = ok(run_in(["dvc", "push"], a, **aws))
    seconds = time.monotonic() - started
    objects = bucket_objects(s3, "dvc/")
    print(
        f"\ndvc push of the pipeline's outputs: {seconds:.1f}s, {len(objects)} objects, {sum(objects.values())} bytes"
    )
    return a, pushed


@pytest.mark.slow
def test_a_teammate_pulls_from_s3_instead_of_training(workdir, s3, origin):
    url, aws = s3
    a, pushed = origin
    assert "files pushed" in pushed.stdout, pushed.stdout
    objects = bucket_objects(s3, "dvc/files/md5/")
    assert len(objects) >= 8  # the four raw files, the prepared arrays, the model, the evaluation
    b = clone(workdir / "origin.git", workdir / "b")
    assert not (b / ".dvc" / "config.local").exists()  # the remote and its endpoint stay out of git
    configured = ok(run_in(["make", "remote", f"REMOTE=s3://{BUCKET}/dvc", f"ENDPOINT={url}"], b, **aws))
    assert configured.stdout.count("\n") == 1 and configured.stderr == ""
    assert (b / ".dvc" / "config.local").stat().st_mode & 0o777 == 0o600
    started = time.monotonic()
    pulled = ok(run_in(["dvc", "pull"], b, **aws))
    print(f"\ndvc pull of the pipeline's outputs: {time.monotonic() - started:.1f}s")
    assert "fetched" in pulled.stdout or "added" in pulled.stdout, pulled.stdout
    repro = ok(run_in(["dvc", "repro"], b, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}"))
    assert "epoch 1/1" not in repro.stdout, repro.stdout
    status = run_in(["dvc", "status", "preprocess", "train", "evaluate"], b)  # fetch: always_changed
    assert "up to date" in status.stdout, status.stdout
    for name in ["data/model/model.keras", "data/prepared/x_train.npy", "reports/metrics.json"]:
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    assert len(mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}")) == 1  # one run for one result, across clones


def one_error_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong key", "SignatureDoesNotMatch"),
        ("no credentials", "no credentials"),
        ("missing bucket", "NoSuchBucket"),
        ("unreachable endpoint", "could not connect to the endpoint"),
    ],
)
def test_bad_set_ups_are_one_line_within_seconds(workdir, s3, origin, case, expected):
    url, aws = s3
    a, _ = origin
    repo = workdir / f"bad-{case.replace(' ', '-')}"
    if not repo.exists():
        clone(workdir / "origin.git", repo)
    env, remote, endpoint = dict(aws), f"s3://{BUCKET}/dvc", url
    if case == "wrong key":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "no credentials":
        env = dict(NO_AWS)
    elif case == "missing bucket":
        remote = "s3://no-such-bucket/dvc"
    else:
        endpoint = f"http://127.0.0.1:{server.free_port()}"
    started = time.monotonic()
    configured = run_in(["make", "remote", f"REMOTE={remote}", f"ENDPOINT={endpoint}"], repo, **env)
    assert configured.returncode != 0
    assert time.monotonic() - started < 15
    line = one_error_line(configured, "remote: error:")
    assert expected in line and remote in line, line
    assert aws["AWS_SECRET_ACCESS_KEY"] not in configured.stdout + configured.stderr
    # The remote is configured all the same: `dvc pull` fails too, saying why. Against an endpoint that is not
    # there, botocore tries each request five times with back-off (a minute or more in all): what
    # docs/troubleshooting.md tells a user, AWS_MAX_ATTEMPTS=1, makes it fail at once.
    if case == "unreachable endpoint":
        env["AWS_MAX_ATTEMPTS"] = "1"
    started = time.monotonic()
    pulled = run_in(["dvc", "pull"], repo, **env)
    seconds = time.monotonic() - started
    print(f"\ndvc pull with {case}: failed in {seconds:.1f}s")
    assert pulled.returncode != 0
    assert seconds < 30
    errors = [ln for ln in pulled.stderr.splitlines() if ln.startswith("ERROR")]
    assert errors, pulled.stderr
    reason = {
        "wrong key": "Forbidden",
        "no credentials": "Unable to locate credentials",
        "missing bucket": "bucket does not exist",
        "unreachable endpoint": "Could not connect to the endpoint URL",
    }[case]
    assert any(reason in ln for ln in errors), pulled.stderr


# MLflow 3 clients fetch artifacts of an S3-backed server straight from the bucket through presigned URLs
# (no credentials, but the endpoint must be reachable; moto answers those 500 when IAM auth is on).
# This client has neither credentials nor a route to the bucket: everything goes through the server.
PROXIED = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}


def serve_champion(cwd: Path, tracking: str, log: Path) -> dict:
    """`mlflow models serve -m models:/tiny-classifier@champion` with no AWS variables; one request."""
    port = server.free_port()
    environ = user_environment(MLFLOW_TRACKING_URI=tracking, **NO_AWS, **PROXIED)
    command = ["mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=cwd, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        body = json.dumps({"inputs": [[[128] * 28] * 28] * 2}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_the_tracking_server_keeps_artifacts_in_the_bucket(workdir, s3, origin):
    """`make server ARTIFACTS=s3://...`: only the server holds the S3 key and endpoint; a client without
    either logs, registers and loads the champion through it."""
    url, aws = s3
    a, _ = origin
    port = server.free_port()
    server_env = {**aws, "MLFLOW_S3_ENDPOINT_URL": url, "MLFLOW_BACKEND_URI": f"sqlite:///{workdir / 'server.db'}"}
    directory = workdir / "server"
    make = ["make", "-o", "install", "server", f"SERVER_PORT={port}", f"SERVER_DIR={directory}"]
    refused = run_in([*make, "ARTIFACTS=s3://no-such-bucket/mlflow"], a, **server_env)
    assert refused.returncode != 0
    assert one_error_line(refused, "server: error:").endswith("NoSuchBucket: The specified bucket does not exist")
    started = ok(run_in([*make, f"ARTIFACTS=s3://{BUCKET}/mlflow"], a, **server_env))
    try:
        assert "artifacts: s3://team-bucket/mlflow" in started.stdout, started.stdout
        tracking = f"http://127.0.0.1:{port}"
        credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL"}
        assert not credentials & set(os.environ)  # the client side has no S3 credentials nor endpoint
        ok(run_in(["dvc", "repro"], a, MLFLOW_TRACKING_URI=tracking, **NO_AWS, **PROXIED))  # publish logs and registers
        runs = mlflow_runs(tracking, "FINISHED")
        assert len(runs) == 1
        objects = bucket_objects(s3, "mlflow/")
        assert any(k.endswith("/MLmodel") for k in objects), sorted(objects)
        assert any(k.endswith(".keras") or "/data/" in k for k in objects), sorted(objects)
        served = serve_champion(a, tracking, workdir / "serve.log")
        assert len(served["predictions"]) == 2, served
    finally:
        ok(run_in(["make", "server-stop", f"SERVER_DIR={directory}"], a))


@pytest.mark.slow
def test_experiments_travel_between_clones(workdir, s3, origin):
    """A and B each run an experiment and push it (git refs to origin.git, outputs to S3); C pulls both,
    lists them with their metrics, and gets A's model without training. The shared MLflow store holds
    one run per result, whichever clone produced it."""
    url, aws = s3
    a, _ = origin
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    b = clone(workdir / "origin.git", workdir / "exp-b")
    ok(run_in(["make", "remote", f"REMOTE=s3://{BUCKET}/dvc", f"ENDPOINT={url}"], b, **aws))
    ok(run_in(["dvc", "pull"], b, **aws))
    ok(run_in(["dvc", "exp", "run", "-n", "a-exp", "-S", "train.seed=2"], a, **aws, **store))
    a_model = (a / "data/model/model.keras").read_bytes()
    ok(run_in(["dvc", "exp", "push", "origin", "a-exp"], a, **aws))
    ok(run_in(["dvc", "exp", "run", "-n", "b-exp", "-S", "train.seed=3"], b, **aws, **store))
    ok(run_in(["dvc", "exp", "push", "origin", "b-exp"], b, **aws))
    runs_before = {r.info.run_id for r in mlflow_runs(store["MLFLOW_TRACKING_URI"])}
    assert len(runs_before) == 3  # the baseline and the two experiments

    c = clone(workdir / "origin.git", workdir / "exp-c")
    ok(run_in(["make", "remote", f"REMOTE=s3://{BUCKET}/dvc", f"ENDPOINT={url}"], c, **aws))
    pulled = ok(run_in(["dvc", "exp", "pull", "origin"], c, **aws))
    assert "a-exp" in pulled.stdout and "b-exp" in pulled.stdout, pulled.stdout
    shown = json.loads(ok(run_in(["dvc", "exp", "show", "--json"], c)).stdout)
    experiments = {
        exp["name"]: exp["data"]["metrics"]["reports/metrics.json"]["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for exp in experiment["revs"]
        if exp.get("name")
    }
    assert {"a-exp", "b-exp"} <= set(experiments), shown
    assert all("test_accuracy" in metrics for metrics in experiments.values()), experiments
    ok(run_in(["dvc", "exp", "apply", "a-exp"], c))
    ok(run_in(["dvc", "checkout"], c, **aws))
    assert (c / "data/model/model.keras").read_bytes() == a_model
    repro = ok(run_in(["dvc", "repro"], c, **aws, **store))
    assert "epoch 1/1" not in repro.stdout, repro.stdout
    assert {r.info.run_id for r in mlflow_runs(store["MLFLOW_TRACKING_URI"])} == runs_before


# --- fast: what `make remote` and `make server` decide before touching anything ------------------


def test_make_remote_writes_config_local_only(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    path, section = remote.configure("s3://team-bucket/dvc", "http://127.0.0.1:9000", tmp_path)
    assert path == tmp_path / ".dvc" / "config.local" and path.stat().st_mode & 0o777 == 0o600
    assert section == {"url": "s3://team-bucket/dvc", "endpointurl": "http://127.0.0.1:9000", **remote.S3_TIMEOUTS}
    text = path.read_text()
    assert "remote = shared" in text and "connect_timeout = 5" in text
    assert (tmp_path / ".dvc" / "config").read_text() == "[core]\n    analytics = false\n"
    # Credentials set by hand are kept by a later `make remote`; a directory remote drops them.
    text = path.read_text().replace("read_timeout = 60", "read_timeout = 60\n    access_key_id = AKIA-kept")
    path.write_text(text)
    _, section = remote.configure("s3://other-bucket/dvc", None, tmp_path)
    assert section["access_key_id"] == "AKIA-kept" and "endpointurl" not in section
    _, section = remote.configure("relative/store", None, tmp_path)
    assert section == {"url": str(Path("relative/store").resolve())}


@pytest.mark.parametrize(
    ("url", "endpoint", "message"),
    [
        ("", None, "set REMOTE="),
        ("s3://", None, "no bucket name"),
        ("s3://b/p", "minio:9000", "expected http://host:port"),
        ("/shared/store", "http://127.0.0.1:9000", "ENDPOINT is for S3"),
    ],
)
def test_make_remote_refuses_bad_input_in_one_line(url, endpoint, message):
    with pytest.raises(remote.RemoteError, match=message):
        remote.remote_config(url, endpoint)


def test_make_remote_prints_no_secret(tmp_path, monkeypatch, capsys):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REMOTE", "https://alice:s3cret@dvc.example.com/store?token=t0ken")
    assert remote.main([]) == 0
    out = capsys.readouterr()
    assert "https://***@dvc.example.com/store?token=***" in out.out
    assert "s3cret" not in out.out + out.err and "t0ken" not in out.out + out.err


def test_make_remote_a_directory_must_exist_and_a_typo_keeps_the_remote_set_before(tmp_path, monkeypatch, capsys):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    assert remote.main(["s3://team-bucket/dvc", "--no-check"]) == 0
    config = tmp_path / ".dvc" / "config.local"
    before = config.read_bytes()
    assert remote.main(["shared-store"]) == 2  # relative: against where make ran
    out = capsys.readouterr()
    missing = f"{tmp_path / 'shared-store'}: no such directory: create it (mkdir -p), or mount the shared one"
    assert out.err == f"remote: error: {missing}\n"
    assert config.read_bytes() == before  # nothing written
    (tmp_path / "shared-store").mkdir()
    assert remote.main(["shared-store"]) == 0 and capsys.readouterr().err == ""
    assert f"url = {tmp_path / 'shared-store'}" in config.read_text()  # stored absolute, as printed


def test_make_server_refuses_an_open_host_without_auth(tmp_path):
    with pytest.raises(server.ServerError, match="refusing to serve MLflow on 0.0.0.0 without authentication"):
        server.start("0.0.0.0", server.free_port(), tmp_path / "server")
    assert not (tmp_path / "server").exists()  # refused before anything was created
    assert server.is_loopback("127.0.0.1") and server.is_loopback("::1") and server.is_loopback("localhost")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.0.2.1")


def test_secrets_are_generated_once_and_private(tmp_path):
    first = server.secret_file(tmp_path / "s" / "password")
    assert len(first) >= 24 and server.secret_file(tmp_path / "s" / "password") == first
    assert (tmp_path / "s" / "password").stat().st_mode & 0o777 == 0o600
    env, generated = server.auth_environ(tmp_path)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == generated and len(generated) >= 20
    assert (tmp_path / "auth").stat().st_mode & 0o777 == 0o700
    assert generated not in (tmp_path / "auth" / "basic_auth.ini").read_text()
    (tmp_path / "auth" / "users.db").touch()  # the admin exists: no password is made or shown again
    env, generated = server.auth_environ(tmp_path)
    assert generated is None and "MLFLOW_AUTH_ADMIN_PASSWORD" not in env


def test_the_auth_config_caches_a_password_check_for_a_minute(tmp_path):
    """Each check is an scrypt hash (~0.1 s): uncached, a publish through `make server AUTH=1` took 25 s, not 3.
    The keys are MLflow's own (its shipped basic_auth.ini names each), read as its config reader does."""
    import configparser
    import importlib.util

    env, _ = server.auth_environ(tmp_path)
    ours, theirs = configparser.ConfigParser(), configparser.ConfigParser()
    ours.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    auth = Path(importlib.util.find_spec("mlflow").origin).parent / "server" / "auth"
    shipped = (auth / "basic_auth.ini").read_text()
    theirs.read_string(shipped)
    assert ours.getint("mlflow", "auth_cache_ttl_seconds") == 60
    assert "auth_cache_ttl_seconds" in shipped and "auth_cache_ttl_seconds" in (auth / "config.py").read_text()
    assert set(ours["mlflow"]) - {"auth_cache_ttl_seconds"} <= set(theirs["mlflow"])  # no key MLflow ignores
    assert ours["mlflow"]["database_uri"] == f"sqlite:///{tmp_path.resolve()}/auth/users.db"


def test_a_trust_cluster_is_refused(tmp_path):
    pg = cluster.Postgres(tmp_path, 5432)
    pg.data.mkdir()
    (pg.data / "pg_hba.conf").write_text("# trust would be fine in a comment\nhost all all 127.0.0.1/32 trust\n")
    with pytest.raises(cluster.ClusterError, match="accepts `trust` logins"):
        pg.check_hba()
    (pg.data / "pg_hba.conf").write_text(cluster.PG_HBA)
    pg.check_hba()


# An endpoint botocore refuses before any request (an underscore in the host; an unclosed IPv6 bracket),
# each with a password in its user-info: the error is one line, the URL redacted, no key printed.
BAD_ENDPOINTS = ["http://alice:s3cret@bad_host:9000", "http://alice:s3cret@[bad_host:9000"]
SECRET_KEY = "k3y-that-must-not-show"


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_make_remote_an_invalid_endpoint_is_one_line(tmp_path, monkeypatch, capsys, endpoint):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    for name, value in {**NO_AWS, "AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": SECRET_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REMOTE", f"s3://{BUCKET}/dvc")
    monkeypatch.setenv("ENDPOINT", endpoint)
    assert remote.main([]) != 0
    out = capsys.readouterr()
    errors = out.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("remote: error:"), out.err
    assert "bad_host" in errors[0] and "***@" in errors[0], errors[0]
    assert "s3cret" not in out.out + out.err and SECRET_KEY not in out.out + out.err


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_make_server_an_invalid_s3_endpoint_is_one_line(tmp_path, monkeypatch, capsys, endpoint):
    for name, value in {**NO_AWS, "AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": SECRET_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("MLFLOW_BACKEND_URI", raising=False)
    start = ["start", "--port", str(server.free_port()), "--dir", str(tmp_path / "server")]
    assert server.main([*start, "--artifacts", f"s3://{BUCKET}/mlflow"]) == 1
    out = capsys.readouterr()
    errors = out.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("server: error:"), out.err
    assert "bad_host" in errors[0] and "***@" in errors[0], errors[0]
    assert "s3cret" not in out.out + out.err and SECRET_KEY not in out.out + out.err
    assert not (tmp_path / "server").exists()  # refused before anything was created


def test_make_server_on_a_port_in_use_says_so_first(tmp_path, monkeypatch, capsys):
    """Refused in one line naming the port, before a cluster, a state file or mlflow (a SQLite backend here,
    so that without the check the test would not make a PostgreSQL cluster either)."""
    monkeypatch.setenv("MLFLOW_BACKEND_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code = server.main(["start", "--port", str(port), "--dir", str(tmp_path / "server")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"server: error: port {port} on 127.0.0.1 is in use"), err
    assert not (tmp_path / "server").exists() and not (tmp_path / "mlflow.db").exists()
