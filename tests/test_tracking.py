import socket
import time
from pathlib import Path

import pytest

from stages import tracking


def test_repo_root_prefers_dvc_root(tmp_path):
    assert tracking.repo_root({"DVC_ROOT": str(tmp_path)}, cwd=Path("/elsewhere")) == tmp_path.resolve()
    assert tracking.repo_root({}, cwd=tmp_path) == tmp_path.resolve()


@pytest.mark.parametrize("copy", [".dvc/tmp/exps/tmpa1b2c3", ".dvc/tmp/exps/run/0123abcd/repo"])
def test_repo_root_sees_through_experiment_copies(tmp_path, copy):
    """`dvc exp run --temp` and queued runs execute in copies under .dvc/tmp/exps."""
    workspace = tmp_path / "project"
    assert tracking.repo_root({"DVC_ROOT": str(workspace / copy)}) == workspace.resolve()


def test_default_store_is_sqlite_at_repo_root(tmp_path):
    uri, artifacts = tracking.store({"DVC_ROOT": str(tmp_path / ".dvc/tmp/exps/tmpx")})
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifacts == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_tracking_uri_overrides(tmp_path):
    assert tracking.store({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "DVC_ROOT": str(tmp_path)}) == (
        "http://127.0.0.1:5000",
        None,
    )


def test_unreachable_server_fails_fast_with_a_clear_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"MLflow server at http://127.0.0.1:{port} is unreachable"):
        tracking.preflight(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


def test_hanging_server_times_out(http_server):
    from tests.conftest import Route

    http_server.add("/health", Route(b"OK", hang_s=2.0))
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.preflight(http_server.url, timeout_s=0.3)
    assert time.monotonic() - started < 1.5


def test_healthy_server_passes(http_server):
    from tests.conftest import Route

    http_server.add("/health", Route(b"OK"))
    tracking.preflight(http_server.url)


def test_a_sqlite_store_keeps_its_artifacts_beside_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/team.db"
    assert tracking.store({"MLFLOW_TRACKING_URI": uri}) == (uri, (tmp_path / "mlartifacts").as_uri())


def test_missing_sqlite_directory(tmp_path):
    with pytest.raises(tracking.TrackingError, match="not a writable directory"):
        tracking.preflight(f"sqlite:///{tmp_path}/nope/mlflow.db")


def test_result_key_changes_with_any_file_or_param(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("model")
    b.write_text("metrics")
    key = tracking.result_key([a, b], {"train.epochs": 10})
    assert key == tracking.result_key([a, b], {"train.epochs": 10})
    assert key != tracking.result_key([a, b], {"train.epochs": 11})
    b.write_text("metrics!")
    assert key != tracking.result_key([a, b], {"train.epochs": 10})


def test_no_store_yet_means_no_run(tmp_path):
    assert tracking.find_run(f"sqlite:///{tmp_path}/mlflow.db", "k") is None
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create the store


def test_run_names():
    from stages.publish import run_name

    assert run_name({"DVC_EXP_NAME": "lucky-lion"}) == "lucky-lion"
    assert run_name({}).startswith("workspace@")  # the tests run inside the project's git checkout
