"""Where the MLflow store is, and the check before training: reachable, credentials accepted, nothing leaked."""

import base64
import socket
import time
from pathlib import Path

import pytest

from stages.lib import store
from tests.conftest import Route, Server

API = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_repo_root_prefers_dvc_root(tmp_path):
    assert store.repo_root({"DVC_ROOT": str(tmp_path)}, cwd=Path("/elsewhere")) == tmp_path.resolve()
    assert store.repo_root({}, cwd=tmp_path) == tmp_path.resolve()


@pytest.mark.parametrize("copy", [".dvc/tmp/exps/tmpa1b2c3", ".dvc/tmp/exps/run/0123abcd/repo"])
def test_repo_root_sees_through_experiment_copies(tmp_path, copy):
    """`dvc exp run --temp` and queued runs execute in copies under .dvc/tmp/exps."""
    workspace = tmp_path / "project"
    assert store.repo_root({"DVC_ROOT": str(workspace / copy)}) == workspace.resolve()


def test_default_store_is_sqlite_at_repo_root(tmp_path):
    uri, artifacts = store.store({"DVC_ROOT": str(tmp_path / ".dvc/tmp/exps/tmpx")})
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifacts == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_tracking_uri_overrides(tmp_path):
    environ = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "DVC_ROOT": str(tmp_path)}
    assert store.store(environ) == ("http://127.0.0.1:5000", None)


def test_a_sqlite_store_keeps_its_artifacts_beside_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/team.db"
    assert store.store({"MLFLOW_TRACKING_URI": uri}) == (uri, (tmp_path / "mlartifacts").as_uri())


def test_predict_serve_and_the_demo_read_the_projects_store_from_any_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    monkeypatch.chdir(tmp_path)  # elsewhere
    assert store.read_store(project, {}) == f"sqlite:///{project}/mlflow.db"
    relative = {"MLFLOW_TRACKING_URI": "sqlite:///team.db", "DVC_ROOT": str(tmp_path)}
    assert store.read_store(project, relative) == f"sqlite:///{project}/team.db"  # as publish wrote it
    for uri in (f"sqlite:///{tmp_path}/elsewhere.db", "http://127.0.0.1:5000", "sqlite:///:memory:"):
        assert store.read_store(project, {"MLFLOW_TRACKING_URI": uri}) == uri


def test_missing_sqlite_directory(tmp_path):
    with pytest.raises(store.TrackingError, match="not a writable directory"):
        store.preflight(f"sqlite:///{tmp_path}/nope/mlflow.db")


def test_unreachable_server_fails_fast_with_a_clear_message():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(store.TrackingError, match=f"MLflow server at http://127.0.0.1:{port} is unreachable"):
        store.preflight(f"http://127.0.0.1:{port}", {})
    assert time.monotonic() - started < 5


def test_hanging_server_times_out(http_server):
    http_server.add(API, Route(b"{}", hang_s=2.0))
    started = time.monotonic()
    with pytest.raises(store.TrackingError, match="unreachable"):
        store.preflight(http_server.url, {}, timeout_s=0.3)
    assert time.monotonic() - started < 1.5


def test_a_server_without_the_experiment_yet_passes(http_server):
    http_server.add(API, Route(b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}', status=404))
    store.preflight(http_server.url, {})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "environ, in_uri",
    [
        ({"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret"}, False),
        ({}, True),  # user-info in the URI, as MLflow's client (requests) accepts it
    ],
)
def test_credentials_are_sent_as_mlflow_sends_them(http_server, environ, in_uri):
    http_server.add(API, Route(b'{"experiment": {}}', auth=basic("alice", "s3cret")))
    uri = http_server.url.replace("http://", "http://alice:s3cret@") if in_uri else http_server.url
    store.preflight(uri, environ)
    assert http_server.routes[API].headers_seen[-1]["Authorization"] == basic("alice", "s3cret")


def test_a_token_is_sent_as_a_bearer(http_server):
    http_server.add(API, Route(b"{}", auth="Bearer tok-123456"))
    store.preflight(http_server.url, {"MLFLOW_TRACKING_TOKEN": "tok-123456"})


def test_rejected_credentials_are_one_line_without_the_secret(http_server):
    http_server.add(API, Route(b"{}", auth=basic("alice", "right")))
    uri = http_server.url.replace("http://", "http://alice:s3cret@")
    with pytest.raises(store.TrackingError) as err:
        store.preflight(uri, {})
    message = str(err.value)
    assert "rejected the credentials (HTTP 401): check the user and password in MLFLOW_TRACKING_URI" in message
    assert "s3cret" not in message and "http://***@127.0.0.1" in message and "\n" not in message


def test_no_credentials_a_refused_host_name_and_a_missing_permission_each_say_what_they_are(http_server):
    http_server.add(API, Route(b"{}", auth=basic("alice", "right")))
    with pytest.raises(store.TrackingError, match=r"asks for a login \(HTTP 401\): set MLFLOW_TRACKING_USERNAME"):
        store.preflight(http_server.url, {})
    wrong = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "wrong"}
    with pytest.raises(store.TrackingError, match=r"rejected the credentials \(HTTP 401\): check MLFLOW_TRACKING_USER"):
        store.preflight(http_server.url, wrong)
    # MLflow's guard against DNS rebinding answers 403 to a Host header it does not allow, whatever the login.
    refused = b"Invalid Host header - possible DNS rebinding attack detected"
    http_server.add(API, Route(b"{}", status=403, error_body=refused))
    with pytest.raises(store.TrackingError) as err:
        store.preflight(http_server.url, {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "right"})
    message = str(err.value)
    assert f"refused the host name {http_server.url.removeprefix('http://')} (HTTP 403" in message
    assert "MLFLOW_SERVER_ALLOWED_HOSTS" in message and "credentials" not in message and "right" not in message
    http_server.add(API, Route(b"{}", status=403, error_body=b"Permission denied"))
    with pytest.raises(store.TrackingError, match=r"refused the request \(HTTP 403\): the user lacks the permission"):
        store.preflight(http_server.url, {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "right"})
    with pytest.raises(store.TrackingError, match=r"asks for a login \(HTTP 403\)"):  # none sent
        store.preflight(http_server.url, {})


def test_a_raw_password_that_breaks_the_uri_is_one_line_without_any_part_of_it():
    # "/" ends the authority: http.client reads "pa" as the port and says so ("nonnumeric port: 'pa'").
    with pytest.raises(store.TrackingError) as err:
        store.preflight("http://alice:pa/ss@127.0.0.1:9", {})
    assert str(err.value) == (
        "MLflow server at http://***@127.0.0.1:9: not a valid URL (a password holding '/', '?', '#' or '@' must be "
        "percent-encoded, or set in MLFLOW_TRACKING_PASSWORD instead)"
    )


def test_an_invalid_uri_with_credentials_is_redacted():
    with pytest.raises(store.TrackingError) as err:
        store.preflight("http://alice:s3cret@host:99999999", {})
    assert "s3cret" not in str(err.value) and "unreachable" in str(err.value)


def test_tls_settings_follow_mlflow(tmp_path):
    import ssl

    context = store.ssl_context({"MLFLOW_TRACKING_INSECURE_TLS": "true"})
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert store.ssl_context({}).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(OSError):  # a CA bundle that is not there is not silently ignored
        store.ssl_context({"MLFLOW_TRACKING_SERVER_CERT_PATH": str(tmp_path / "missing.pem")})


def test_a_server_whose_database_is_down_says_so(http_server):
    http_server.add(API, Route(b"{}", status=500))
    with pytest.raises(store.TrackingError, match=r"failed \(HTTP 500\): is its database up\?"):
        store.preflight(http_server.url, {})


def test_credentials_never_follow_a_redirect_to_another_host_or_port(http_server):
    other = Server()  # another port, reached under another host name
    other.thread.start()
    try:
        target = other.add(API, Route(b'{"experiment": {}}')).replace("127.0.0.1", "localhost")
        http_server.add(API, Route(b"", redirect=target))
        store.preflight(http_server.url.replace("http://", "http://alice:s3cret@"), {})
        assert http_server.routes[API].headers_seen[-1]["Authorization"] == basic("alice", "s3cret")
        assert other.routes[API].hits == 1 and "Authorization" not in other.routes[API].headers_seen[-1]
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()


def test_a_redirect_on_the_same_server_keeps_the_credentials(http_server):
    http_server.add("/elsewhere", Route(b'{"experiment": {}}', auth=basic("alice", "s3cret")))
    http_server.add(API, Route(b"", redirect=http_server.url + "/elsewhere"))
    store.preflight(http_server.url, {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret"})


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "postgresql://mlflow:pw@db/mlflow", "databricks"])
def test_a_store_that_is_neither_sqlite_nor_a_server_is_refused_in_one_line(uri):
    with pytest.raises(store.TrackingError) as err:
        store.preflight(uri, {})
    message = str(err.value)
    assert "is not supported: set MLFLOW_TRACKING_URI to sqlite:///" in message and "\n" not in message
    assert "pw@" not in message


def test_a_damaged_sqlite_store_is_one_line_saying_what_to_do(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a SQLite database, it was damaged" * 100)
    with pytest.raises(store.TrackingError) as err:
        store.preflight(f"sqlite:///{db}", {})
    message = str(err.value)
    assert "\n" not in message and str(db) in message and "file is not a database" in message
    assert "move it aside (mv mlflow.db mlflow.db.damaged)" in message and "outputs" in message and "intact" in message


def test_a_locked_sqlite_store_is_one_line(tmp_path):
    import sqlite3

    db = tmp_path / "mlflow.db"
    holder = sqlite3.connect(db)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(store.TrackingError, match=r"is locked by another process .*wait for that process"):
            store.preflight(f"sqlite:///{db}", {}, timeout_s=0.2)
    finally:
        holder.rollback()
        holder.close()
    store.preflight(f"sqlite:///{db}", {})  # free again


@pytest.mark.parametrize("model", ["models:/mnist-classifier@champion", "runs:/0123abcd/model"])
def test_reading_a_model_from_a_sqlite_store_that_does_not_exist_is_one_line_and_creates_nothing(tmp_path, model):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(store.TrackingError) as err:
        store.check_readable(model, uri)
    assert str(err.value) == f"no MLflow store at {uri}: run `make repro` first, or set MLFLOW_TRACKING_URI"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    with pytest.raises(store.TrackingError, match="cannot be read: file is not a database"):
        store.check_readable(model, uri)


@pytest.mark.parametrize(
    "model, uri",
    [
        ("file:///somewhere/model", "sqlite:///{tmp}/mlflow.db"),  # not read from the store
        ("data/model", "sqlite:///{tmp}/mlflow.db"),
        ("models:/mnist-classifier@champion", "http://127.0.0.1:5000"),  # a server: MLflow says what it lacks
    ],
)
def test_only_a_model_read_from_a_sqlite_store_needs_the_file(tmp_path, model, uri):
    store.check_readable(model, uri.format(tmp=tmp_path))
