"""`make ui`: MLflow's UI on the local store, on a port of its own, announced by the URL of the mnist experiment's
training view; a tracking server or a store that does not exist yet gets one line instead."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from stages.tools.server import free_port
from tests.conftest import user_environment

ROOT = Path(__file__).resolve().parents[2]


def make_ui(**extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "ui", "UI_PORT=1"],
        cwd=ROOT,
        env=user_environment(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_tracking_server_or_a_missing_store_gets_one_line(tmp_path):
    server = make_ui(MLFLOW_TRACKING_URI="https://user:s3cret@mlflow.example.com")
    assert server.returncode != 0
    assert "ui: error: MLFLOW_TRACKING_URI is not a sqlite:/// file: a tracking server has its own UI" in server.stderr
    assert "s3cret" not in server.stdout + server.stderr

    missing = make_ui(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/none.db")
    assert missing.returncode != 0 and not (tmp_path / "none.db").exists()
    assert f"ui: error: no MLflow store at {tmp_path}/none.db yet: make repro logs" in missing.stderr


@pytest.mark.slow
def test_make_ui_prints_the_training_view_of_the_mnist_experiment_and_serves_it(tmp_path):
    import mlflow

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    client.create_experiment("other")  # so that mnist's id is no default
    experiment_id = client.create_experiment("mnist")
    port = free_port()

    ui = subprocess.Popen(
        ["make", "--no-print-directory", "ui", f"UI_PORT={port}"],
        cwd=ROOT,
        env=user_environment(MLFLOW_TRACKING_URI=f"sqlite:///{db}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        first = ui.stdout.readline()
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        assert first.startswith(f"ui: open {url} "), first
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    health = response.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert health == "OK", ui.stdout.read() if ui.poll() is not None else "no answer on /health"
        with urllib.request.urlopen(re.sub(r"/#/.*", "/", url), timeout=10) as page:
            assert page.status == 200  # the UI's page itself
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        ui.stdout.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
