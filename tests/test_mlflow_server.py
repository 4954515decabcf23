"""Logging a run to a real `mlflow server` on 127.0.0.1 (slow: the server takes seconds to start)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

nn = pytest.importorskip("stages.model")

from stages import evaluate, tracking  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if not mlflow_bin.exists() and not shutil.which("mlflow"):
        pytest.skip("mlflow CLI not installed")
    proc = subprocess.Popen(
        [
            str(mlflow_bin if mlflow_bin.exists() else "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


def test_run_logged_to_a_real_server(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    nn.configure(0)
    model = nn.build([8], "relu", 0.0, "softmax")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text('{"test_accuracy": 0.5}')
    history = [{"epoch": 1, "loss": 1.0, "val_accuracy": 0.4}, {"epoch": 2, "loss": 0.5, "val_accuracy": 0.5}]
    run_id = tracking.log_run(
        params={"train.epochs": 2},
        history=history,
        metrics={"test_accuracy": 0.5},
        tags={"data.sha256": "x"},
        artifacts=tmp_path / "reports",
        model=model,
        input_example=np.zeros((1, 28, 28), np.float32),
        pip_requirements=evaluate.pip_requirements(),
        run_name="served",
    )
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "served"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]
    assert [f.path for f in client.list_artifacts(run_id, "reports")] == ["reports/metrics.json"]
    assert (tmp_path / "server-artifacts").is_dir()  # artifacts went through the server
