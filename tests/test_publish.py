"""The publish stage against real MLflow stores, and the served model over real HTTP (slow).

A tiny project is built once per module: synthetic IDX files, the real
preprocess, train and evaluate stages (3 epochs on 320 images), so publish
sees exactly what it sees after `dvc repro`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.lib import idx
from stages.tools.server import free_port
from tests.conftest import make_synthetic, mlflow_runs, run_in

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def running(proc: subprocess.Popen, url: str, probe: str, timeout_s: float):
    """Wait until ``url + probe`` answers, yield ``url``; stop the server's process group afterwards."""
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url + probe, timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{proc.args[1:3]} did not start")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def run_stage(stage: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return run_in([sys.executable, "-m", f"stages.{stage}"], cwd, PYTHONPATH=str(ROOT), DVC_ROOT=str(cwd), **env)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    make_synthetic(n_train_per_class=40, n_test_per_class=10, seed=3).write(root / "data" / "raw")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"]["sources"] = ["local"]
    params["preprocess"]["val_fraction"] = 0.2
    params["model"]["hidden_units"] = [16]
    params["train"].update(epochs=3, batch_size=16, learning_rate=0.005)
    params["evaluate"].update(gallery_size=4, sample_size=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ["preprocess", "train", "evaluate"]:
        result = run_stage(stage, root)
        assert result.returncode == 0, result.stderr
    return root


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def test_one_complete_run_per_result_per_store(project):
    uri = f"sqlite:///{project}/mlflow.db"
    started = time.time()
    first = run_stage("publish", project)
    assert first.returncode == 0, first.stderr
    assert "registry: version 1 (val_accuracy" in first.stdout and "is the first champion" in first.stdout

    [run] = mlflow_runs(uri)
    c = client(uri)
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "workspace"
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.hidden_units"] == "[16]"
    # Real times: training start -> evaluation end, and the training time as a metric.
    timing = json.loads((project / ".runtime" / "train.json").read_text())
    assert run.info.start_time == int(1000 * timing["started"])
    assert (run.info.end_time - run.info.start_time) / 1000 >= run.data.metrics["train_seconds"] > 0
    assert run.info.end_time <= 1000 * started
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "dvc repro" and tags["mlflow.source.type"] == "LOCAL"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["mnist-test", "mnist-train", "mnist-val"]
    assert {d.dataset.digest for d in inputs.values()} == {tags["data.digest"]}
    assert [t.value for t in inputs["mnist-train"].tags] == ["training"]
    assert c.get_experiment_by_name("mnist").tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {f.path for f in c.list_artifacts(run.info.run_id, "reports")}
    assert not (project / "mlruns").exists()  # nothing outside the store (MLflow's default ./mlruns)
    assert c.get_logged_model(run.outputs.model_outputs[0].model_id).experiment_id == run.info.experiment_id
    assert "reports/metrics.json" in artifacts

    # Same store again: nothing logged, and quickly (no MLflow import).
    started = time.monotonic()
    again = run_stage("publish", project)
    assert again.returncode == 0 and "already in" in again.stdout, again.stderr
    assert time.monotonic() - started < 3
    assert len(mlflow_runs(uri)) == 1

    # Another store: the same result is logged there once.
    other = f"sqlite:///{project}/other.db"
    assert run_stage("publish", project, MLFLOW_TRACKING_URI=other).returncode == 0
    assert run_stage("publish", project, MLFLOW_TRACKING_URI=other).returncode == 0
    assert len(mlflow_runs(other)) == 1 and len(mlflow_runs(uri)) == 1


def test_outputs_restored_by_dvc_are_logged_without_invented_times(project, tmp_path):
    """What `dvc repro` does after the run-cache restored train/evaluate: no timing records for this model."""
    copy = tmp_path / "restored"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".runtime", "*.db", "mlartifacts"))
    result = run_stage("publish", copy)
    assert result.returncode == 0, result.stderr
    [run] = mlflow_runs(f"sqlite:///{copy}/mlflow.db")
    assert "train_seconds" not in run.data.metrics
    assert "restored by DVC" in run.data.tags["pipeline.timing"]
    assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time


def test_champion_moves_only_on_a_higher_validation_accuracy(project, tmp_path):
    copy = tmp_path / "champion"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts"))
    metrics_path = copy / "reports" / "metrics.json"
    base = json.loads(metrics_path.read_text())
    lines = []
    for val_accuracy in [0.5, 0.9, 0.9, 0.7]:  # each a distinct result (the metrics file differs)
        metrics_path.write_text(json.dumps({**base, "val_accuracy": val_accuracy, "test_accuracy": val_accuracy}))
        if lines:  # ties need a distinct result too: change a reported number nobody selects on
            base["test_loss"] = base["test_loss"] + 1
            metrics_path.write_text(json.dumps({**base, "val_accuracy": val_accuracy}))
        result = run_stage("publish", copy)
        assert result.returncode == 0, result.stderr
        lines.append(next(line for line in result.stdout.splitlines() if line.startswith("registry:")))
    assert "version 1 (val_accuracy 0.5000) is the first champion" in lines[0]
    assert "version 2 (val_accuracy 0.9000) is the new champion, was version 1 (0.5000)" in lines[1]
    assert "a tie keeps the champion" in lines[2]
    assert "version 4 (val_accuracy 0.7000) is not the champion" in lines[3]
    c = client(f"sqlite:///{copy}/mlflow.db")
    champion = c.get_model_version_by_alias("mnist-classifier", "champion")
    assert int(champion.version) == 2
    assert champion.tags["val_accuracy"] == "0.9" and champion.tags["model.hidden_units"] == "[16]"
    assert {"test_accuracy", "data.digest", "git.commit", "train.seed"} <= set(champion.tags)
    assert champion.tags["model.kind"] == "dense" and "model.cnn.filters" not in champion.tags


@pytest.fixture
def served(project):
    """`mlflow models serve` of models:/mnist-classifier@champion on 127.0.0.1, stopped by process group."""
    uri = f"sqlite:///{project}/mlflow.db"
    if not mlflow_runs(uri):
        assert run_stage("publish", project).returncode == 0
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/mnist-classifier@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    with running(proc, f"http://127.0.0.1:{port}", "/ping", 120) as url:
        yield url


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_served_model_answers_raw_pixels_like_the_local_model(project, served):
    import mlflow

    from stages.serving.classifier import Classifier

    raw = idx.read(project / "data" / "raw" / "t10k-images-idx3-ubyte")[:5]
    status, answer = post(served, json.dumps({"inputs": raw.tolist()}).encode())
    assert status == 200
    local = Classifier(project / "data" / "model" / "model.keras", project / "data" / "model" / "serving.json")
    probs = local.probabilities(raw.astype(np.float32))
    assert [p["digit"] for p in answer["predictions"]] == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], probs, rtol=1e-4, atol=1e-6)
    # The registry's champion loads as a pyfunc model too, and agrees.
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    frame = mlflow.pyfunc.load_model("models:/mnist-classifier@champion").predict(raw.astype(np.float32))
    assert frame["digit"].tolist() == probs.argmax(axis=1).tolist()

    bad = {
        "wrong shape": json.dumps({"inputs": np.zeros((1, 27, 28)).tolist()}).encode(),
        "out of range": json.dumps({"inputs": np.full((1, 28, 28), 300).tolist()}).encode(),
        "negative": json.dumps({"inputs": np.full((1, 28, 28), -5).tolist()}).encode(),
        "not numbers": json.dumps({"inputs": [[["x"] * 28] * 28]}).encode(),
        "empty batch": json.dumps({"inputs": []}).encode(),
        "malformed JSON": b'{"inputs": [[',
    }
    for what, body in bad.items():
        status, error = post(served, body)
        assert 400 <= status < 500, what
        assert error.get("message"), what
    status, _ = post(served, json.dumps({"inputs": raw[:1].tolist()}).encode())
    assert status == 200  # still serving


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
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
    with running(proc, f"http://127.0.0.1:{port}", "/health", 60) as url:
        yield url, tmp_path


def test_publish_to_a_real_tracking_server(project, tracking_server):
    url, server_dir = tracking_server
    first = run_stage("publish", project, MLFLOW_TRACKING_URI=url, DVC_EXP_NAME="tiny-exp")
    assert first.returncode == 0, first.stderr
    [run] = mlflow_runs(url)
    assert run.info.run_name == "tiny-exp" and run.data.tags["dvc.exp_name"] == "tiny-exp"
    assert int(client(url).get_model_version_by_alias("mnist-classifier", "champion").version) == 1
    assert (server_dir / "server-artifacts").is_dir()  # artifacts went through the server
    again = run_stage("publish", project, MLFLOW_TRACKING_URI=url)
    assert "already in" in again.stdout and len(mlflow_runs(url)) == 1  # found over REST


def test_predict_with_a_logged_model_uri(project, tmp_path):
    """`mnist-predict --model runs:/<id>/model`: a registered or logged model, no DVC workspace needed."""
    from PIL import Image

    uri = f"sqlite:///{project}/mlflow.db"
    if not mlflow_runs(uri):
        assert run_stage("publish", project).returncode == 0
    run_id = mlflow_runs(uri)[0].info.run_id
    raw = idx.read(project / "data" / "raw" / "t10k-images-idx3-ubyte")[:3]
    for i, image in enumerate(raw):
        Image.fromarray(255 - image).resize((120, 120)).save(tmp_path / f"{i}.png")  # dark on light
    command = Path(sys.executable).parent / "mnist-predict"  # as installed: scikit-learn and matplotlib left out
    for model_uri in [f"runs:/{run_id}/model", "models:/mnist-classifier@champion"]:
        # In tmp_path, no data/model: the model comes from the store.
        result = run_in(
            [str(command), str(tmp_path), "--json", "--model", model_uri], tmp_path, MLFLOW_TRACKING_URI=uri
        )
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(records) == 3 and all(len(r["probabilities"]) == 10 for r in records)
