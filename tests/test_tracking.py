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


def test_missing_sqlite_directory(tmp_path):
    with pytest.raises(tracking.TrackingError, match="not a writable directory"):
        tracking.preflight(f"sqlite:///{tmp_path}/nope/mlflow.db")


def test_tags_name_the_experiment_and_data():
    tags = tracking.run_tags("abc123", {"DVC_EXP_NAME": "lucky-lion", "DVC_EXP_BASELINE_REV": "f00"})
    assert tags["dvc.exp_name"] == "lucky-lion"
    assert tags["dvc.baseline_rev"] == "f00"
    assert tags["data.sha256"] == "abc123"
    assert len(tags["git.commit"]) == 40  # the tests run inside the project's git checkout
    assert "dvc.exp_name" not in tracking.run_tags("abc123", {})
