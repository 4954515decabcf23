"""The publish stage against real MLflow stores, and the served model over real HTTP (slow).

A tiny project is built once per module: synthetic IDX files, the real
preprocess, train and evaluate stages (3 epochs on 320 images), so publish
sees exactly what it sees after `dvc repro`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables and nothing else: what a first publish creates (1.6 s of
    migrations), made once. The tests of a fresh store's own first publish do not use it."""
    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    client(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def copy_of(project, empty_store, tmp_path):
    """``copy_of(name)``: a copy of the tiny project, with an empty store (``store=False``: none) and its
    timing records (``keep_timing=False``: without)."""

    def make(name: str, store: bool = True, keep_timing: bool = True) -> Path:
        [copy] = copies(project, tmp_path, name, keep_timing=keep_timing)
        if store:
            shutil.copyfile(empty_store, copy / "mlflow.db")
        return copy

    return make


def publish_here(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``stages.publish.main()`` in this process, in ``cwd``, its printed lines captured: what
    ``run_stage("publish", cwd, **env)`` does, without a new interpreter importing MLflow (~2 s each). Only
    what the stage prints itself is captured (MLflow's own log lines are not). The tests of what only a
    process of its own shows (its imports, its output, signals, its death) start one; so do settings read at
    import (``PUBLISH_CLAIM_*``). The environment and MLflow's active experiment are restored afterwards, and
    its tracking URI unset (it also sets the variables a child process would inherit)."""
    import mlflow
    from mlflow.tracking import fluent

    from stages import publish

    assert not [name for name in env if name.startswith("PUBLISH_CLAIM_")], "read at import: use run_stage"
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    saved = dict(os.environ)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)  # set by publish
            patch.chdir(cwd)
            for name in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
                patch.delenv(name)
            for name, value in {"DVC_ROOT": str(cwd), **env}.items():
                patch.setenv(name, value)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = publish.main()
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.clear()
        os.environ.update(saved)
    texts = []
    for stream in (out, err):
        stream.flush()
        texts.append(stream.buffer.getvalue().decode())
    return subprocess.CompletedProcess(["stages.publish"], code, *texts)


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
    assert publish_here(project, MLFLOW_TRACKING_URI=other).returncode == 0
    assert publish_here(project, MLFLOW_TRACKING_URI=other).returncode == 0
    assert len(mlflow_runs(other)) == 1 and len(mlflow_runs(uri)) == 1


def test_outputs_restored_by_dvc_are_logged_without_invented_times(copy_of):
    """What `dvc repro` does after `dvc checkout` or `dvc pull` restored train/evaluate: no timing records for this
    model."""
    copy = copy_of("restored", keep_timing=False)
    result = publish_here(copy)
    assert result.returncode == 0, result.stderr
    [run] = mlflow_runs(f"sqlite:///{copy}/mlflow.db")
    assert "train_seconds" not in run.data.metrics
    assert "restored by DVC" in run.data.tags["pipeline.timing"]
    assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time


def distinct_model(project: Path, i: int) -> None:
    """Another served model without training: serving.json is part of the model (extra keys are ignored)."""
    path = project / "data" / "model" / "serving.json"
    config = json.loads(path.read_text())
    config["variant"] = i
    path.write_text(json.dumps(config))


def test_champion_moves_only_on_a_higher_validation_accuracy(copy_of):
    copy = copy_of("champion")
    metrics_path = copy / "reports" / "metrics.json"
    base = json.loads(metrics_path.read_text())
    lines = []
    for i, val_accuracy in enumerate([0.5, 0.9, 0.9, 0.7]):  # each a distinct served model
        distinct_model(copy, i)
        metrics_path.write_text(json.dumps({**base, "val_accuracy": val_accuracy, "test_accuracy": val_accuracy}))
        result = publish_here(copy)
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
    assert {"test_accuracy", "data.digest", "git.commit", "train.seed", "pipeline.model"} <= set(champion.tags)
    assert champion.tags["model.kind"] == "dense" and "model.cnn.filters" not in champion.tags

    # The same served model again, under other params that take effect: a new run, no new version.
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["train"]["seed"] = 99
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    again = publish_here(copy)
    assert again.returncode == 0, again.stderr
    assert "the same served model is already mnist-classifier version 4: no new version" in again.stdout
    assert len(c.search_model_versions("name = 'mnist-classifier'")) == 4 and len(mlflow_runs(c.tracking_uri)) == 5


def test_the_onnx_form_takes_a_tie_over_and_a_data_change_is_shown(copy_of):
    copy = copy_of("onnx")
    model_dir = copy / "data" / "model"
    with_onnx = json.loads((model_dir / "serving.json").read_text())
    assert with_onnx["onnx"]["file"] == "model.onnx"  # the train stage made one
    keras_only = {k: v for k, v in with_onnx.items() if k != "onnx"}  # as models trained before it existed
    (model_dir / "serving.json").write_text(json.dumps(keras_only))
    first = publish_here(copy)
    assert first.returncode == 0, first.stderr
    (model_dir / "serving.json").write_text(json.dumps(with_onnx))
    second = publish_here(copy)
    assert second.returncode == 0, second.stderr
    assert "registry: version 2 (val_accuracy" in second.stdout
    assert "is the new champion, was version 1" in second.stdout
    assert "the same score, and it answers without TensorFlow (ONNX form)" in second.stdout
    c = client(f"sqlite:///{copy}/mlflow.db")
    assert c.get_model_version("mnist-classifier", "2").tags["pipeline.onnx"] == with_onnx["onnx"]["sha256"]
    assert "pipeline.onnx" not in c.get_model_version("mnist-classifier", "1").tags

    # Other data under the same name: compared as ever, and the line says so.
    stats_path = copy / "data" / "prepared" / "stats.json"
    stats = json.loads(stats_path.read_text())
    old = stats["sha256"]
    stats["sha256"] = "f" * 64
    stats_path.write_text(json.dumps(stats))
    distinct_model(copy, 7)
    third = publish_here(copy)
    assert third.returncode == 0, third.stderr
    registry_line = next(line for line in third.stdout.splitlines() if line.startswith("registry:"))
    assert "(a tie keeps the champion); on other data than version 2 " in registry_line
    assert f"(data digest {old[:12]}... -> ffffffffffff...)" in registry_line

    # A damaged ONNX form is refused before anything is logged.
    (model_dir / "model.onnx").write_bytes(b"damaged")
    distinct_model(copy, 8)
    fourth = publish_here(copy)
    assert fourth.returncode == 2
    assert fourth.stderr.strip() == (
        "publish: error: its ONNX form (model.onnx) is damaged: sha256 "
        f"{hashlib.sha256(b'damaged').hexdigest()[:12]}..., recorded "
        f"{with_onnx['onnx']['sha256'][:12]}...: restore the train stage's outputs (dvc checkout data/model)"
    )


def test_params_that_cannot_change_the_model_do_not_make_a_new_result(copy_of):
    copy = copy_of("ineffective")
    assert publish_here(copy).returncode == 0
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["fetch"].update(timeout_s=61, sources=["npm", "local"])
    params["evaluate"]["sample_size"] = 3
    params["model"]["cnn"]["filters"] = [8]  # a dense network
    params["train"].update(weight_decay=0.5, warmup=0.1, zoom=0.3)  # adam, constant rate, no augmentation
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    again = publish_here(copy)
    assert again.returncode == 0 and "this result is already in" in again.stdout, again.stdout + again.stderr
    assert len(mlflow_runs(f"sqlite:///{copy}/mlflow.db")) == 1


def test_an_edit_to_the_served_code_is_a_new_result_and_version(copy_of, tmp_path):
    copy = copy_of("code-edit")
    assert publish_here(copy).returncode == 0
    code = tmp_path / "code"
    shutil.copytree(ROOT / "stages", code / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    served = code / "stages" / "serving" / "mlflow_model.py"
    served.write_text(served.read_text() + "\n# a fix to the served model\n")
    result = run_in([sys.executable, "-m", "stages.publish"], copy, PYTHONPATH=str(code), DVC_ROOT=str(copy))
    assert result.returncode == 0, result.stderr
    assert "registered mnist-classifier version 2" in result.stdout
    c = client(f"sqlite:///{copy}/mlflow.db")
    assert len(mlflow_runs(c.tracking_uri)) == 2
    [v2] = [v for v in c.search_model_versions("name = 'mnist-classifier'") if str(v.version) == "2"]
    import mlflow

    mlflow.set_tracking_uri(c.tracking_uri)
    logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=v2.source, dst_path=str(tmp_path / "dl")))
    assert any(p.read_text().endswith("# a fix to the served model\n") for p in logged.rglob("*.py"))


def test_a_first_publish_prints_only_its_own_lines(project, tmp_path):
    copy = tmp_path / "quiet"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts"))
    result = run_stage("publish", copy)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for noise in [
        "INFO",
        "Downloading artifacts",
        "Successfully registered",
        "Created version",
        "View run",
        "Waiting up",
    ]:
        assert noise not in out, out
    assert [line.split(":")[0] for line in out.strip().splitlines()] == ["publish", "registry"], out


def wait_for_run(db: Path, status: str, timeout_s: float = 60) -> str:
    """The id of the first run in ``status`` in the SQLite store ``db``, polled every 20 ms."""
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db, timeout=1)) as con:
                row = con.execute("SELECT run_uuid FROM runs WHERE status = ?", (status,)).fetchone()
                if row:
                    return row[0]
        time.sleep(0.02)
    pytest.fail(f"no {status} run appeared in {db}")


def start_publish(cwd: Path, **env: str) -> subprocess.Popen:
    """``python -m stages.publish`` in ``cwd``, started (not waited for), without inherited MLflow or DVC variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    environ.update(PYTHONPATH=str(ROOT), DVC_ROOT=str(cwd), **env)
    return subprocess.Popen(
        [sys.executable, "-m", "stages.publish"],
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_mid_log_marks_the_run_failed_and_keeps_the_champion(copy_of):
    copy = copy_of("sigterm")
    assert publish_here(copy).returncode == 0  # version 1, champion
    distinct_model(copy, 1)
    metrics = json.loads((copy / "reports" / "metrics.json").read_text())
    (copy / "reports" / "metrics.json").write_text(json.dumps({**metrics, "val_accuracy": 0.999}))
    proc = start_publish(copy)
    db = copy / "mlflow.db"
    run_id = wait_for_run(db, "RUNNING")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"publish: error: stopped by SIGTERM; run {run_id} was marked FAILED" in err and "Traceback" not in err
    c = client(f"sqlite:///{db}")
    assert [r.info.status for r in mlflow_runs(c.tracking_uri, "FAILED")] == ["FAILED"]
    assert mlflow_runs(c.tracking_uri, "RUNNING") == []
    assert [str(v.version) for v in c.search_model_versions("name = 'mnist-classifier'")] == ["1"]
    assert str(c.get_model_version_by_alias("mnist-classifier", "champion").version) == "1"


def test_a_run_whose_publisher_died_is_mended_by_the_next_publish(copy_of):
    """SIGKILL (or the store going away) leaves a RUNNING run nobody could mark: the next publish does."""
    copy = copy_of("sigkill")
    proc = start_publish(copy)
    db = copy / "mlflow.db"
    stale = wait_for_run(db, "RUNNING")
    proc.kill()
    proc.communicate(timeout=30)
    assert [r.info.run_id for r in mlflow_runs(f"sqlite:///{db}", "RUNNING")] == [stale]
    result = publish_here(copy)
    assert result.returncode == 0, result.stderr
    assert f"publish: marked 1 stale run(s) FAILED (their publishing process has gone): {stale}" in result.stdout
    assert mlflow_runs(f"sqlite:///{db}", "RUNNING") == []
    c = client(f"sqlite:///{db}")
    assert c.get_run(stale).info.status == "FAILED" and len(mlflow_runs(c.tracking_uri, "FINISHED")) == 1
    # A version whose run is not FINISHED is never a candidate, even with the best score.
    failed_version = c.create_model_version(
        "mnist-classifier", f"runs:/{stale}/model", run_id=stale, tags={"val_accuracy": "1.0"}, await_creation_for=0
    )
    distinct_model(copy, 7)
    assert publish_here(copy).returncode == 0
    champion = c.get_model_version_by_alias("mnist-classifier", "champion")
    assert str(champion.version) != str(failed_version.version) and c.get_run(champion.run_id).info.status == "FINISHED"


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


def test_served_model_answers_raw_pixels_like_the_local_model(project, served, tmp_path):
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
    champion = mlflow.pyfunc.load_model("models:/mnist-classifier@champion", dst_path=str(tmp_path))  # not /tmp's
    frame = champion.predict(raw.astype(np.float32))
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


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One SQLite-backed `mlflow server` on 127.0.0.1 for the module's tests (started once: ~10 s)."""
    directory = tmp_path_factory.mktemp("server")
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
            f"sqlite:///{directory}/server.db",
            "--artifacts-destination",
            str(directory / "server-artifacts"),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as make server: no GenAI job runner
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    with running(proc, f"http://127.0.0.1:{port}", "/health", 180) as url:
        yield url, directory


@pytest.fixture
def tracking_server(shared_server):
    """The shared server, emptied for each test: no registered model (versions count from 1), no active run."""
    url, directory = shared_server
    c = client(url)
    for model in c.search_registered_models():
        c.delete_registered_model(model.name)
    for run in mlflow_runs(url):
        c.delete_run(run.info.run_id)
    yield url, directory


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


def test_two_clones_publishing_one_result_at_once_make_one_run_and_one_version(project, tracking_server, tmp_path):
    url, _ = tracking_server
    clones = []
    for name in ("a", "b"):
        clone = tmp_path / name
        shutil.copytree(project, clone, ignore=shutil.ignore_patterns("*.db", "mlartifacts", ".runtime"))
        clones.append(clone)
    procs = [start_publish(clone, MLFLOW_TRACKING_URI=url) for clone in clones]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    finished = mlflow_runs(url, "FINISHED")
    assert len(finished) == 1 and mlflow_runs(url, "RUNNING") == [], outputs
    assert len(client(url).search_model_versions("name = 'mnist-classifier'")) == 1
    said = " ".join(out for out, _ in outputs)
    assert "registered mnist-classifier version 1" in said
    assert ("holds this result already" in said) or ("this result is already in" in said), said


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
    scratch = tmp_path / "scratch"  # its TMPDIR
    scratch.mkdir()
    for model_uri in [f"runs:/{run_id}/model", "models:/mnist-classifier@champion"]:
        # In tmp_path, no data/model: the model comes from the store.
        result = run_in(
            [str(command), str(tmp_path), "--json", "--model", model_uri],
            tmp_path,
            MLFLOW_TRACKING_URI=uri,
            TMPDIR=str(scratch),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(records) == 3 and all(len(r["probabilities"]) == 10 for r in records)
        # The model's files were downloaded for the load only: nothing left behind (MLflow's own download
        # directory would stay).
        assert not list(scratch.iterdir()), sorted(p.name for p in scratch.rglob("*"))[:20]


# --- faults: the champion rule, claims across hosts, retries, a fresh SQLite store ----------------------


def registry_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("registry:"))


def with_score(copy: Path, variant: int, val_accuracy: float) -> None:
    """A distinct served model with this validation score (nothing trained)."""
    distinct_model(copy, variant)
    path = copy / "reports" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "val_accuracy": val_accuracy}))


def champion(url: str) -> int:
    return int(client(url).get_model_version_by_alias("mnist-classifier", "champion").version)


def copies(project: Path, tmp_path: Path, *names: str, keep_timing: bool = True) -> list[Path]:
    """Copies of the tiny project without its store (and without its timing records unless ``keep_timing``)."""
    ignore = ("*.db", "mlartifacts") if keep_timing else ("*.db", "mlartifacts", ".runtime")
    for name in names:
        shutil.copytree(project, tmp_path / name, ignore=shutil.ignore_patterns(*ignore))
    return [tmp_path / name for name in names]


def judging_fails(*args, **kwargs):
    """``registry.update_champion`` when the store goes away right after a registration."""
    raise RuntimeError("the store went away")


def test_a_version_left_unjudged_is_judged_by_the_next_publish_whatever_its_path(
    project, tracking_server, tmp_path, monkeypatch
):
    url, _ = tracking_server
    first, second = copies(project, tmp_path, "first", "second")
    with_score(first, 1, 0.5)
    assert "is the first champion" in registry_line(publish_here(first, MLFLOW_TRACKING_URI=url))
    # Version 2 registers, then the alias update fails (a store error, SIGTERM, "did not settle").
    with_score(second, 2, 0.9)
    from stages.lib import registry

    monkeypatch.setattr(registry, "update_champion", judging_fails)
    broken = publish_here(second, MLFLOW_TRACKING_URI=url)
    assert broken.returncode == 1 and "the store went away" in broken.stderr
    monkeypatch.undo()
    assert champion(url) == 1
    # The next publish logs nothing new (version 1's result, on the fast path), and still judges version 2.
    line = registry_line(publish_here(first, MLFLOW_TRACKING_URI=url))
    assert line.startswith("registry: version 2 (val_accuracy 0.9000) is the new champion, was version 1 (0.5000)")
    assert champion(url) == 2
    # Version 2's own result, published again, records that it is registered and judged; then nothing is left.
    again = publish_here(second, MLFLOW_TRACKING_URI=url)
    assert "holds this result but its model was not registered and judged" in again.stdout, again.stdout
    assert "registry: version 2 (val_accuracy 0.9000) is the champion already" in again.stdout
    last = publish_here(second, MLFLOW_TRACKING_URI=url)
    assert "this result is already in" in last.stdout and "registry:" not in last.stdout, last.stdout


def test_without_an_alias_every_finished_version_is_a_candidate(project, tracking_server, tmp_path, monkeypatch):
    url, _ = tracking_server
    first, second = copies(project, tmp_path, "first", "second")
    from stages.lib import registry

    # A first registration whose alias was never set.
    with_score(first, 1, 0.99)
    monkeypatch.setattr(registry, "update_champion", judging_fails)
    assert publish_here(first, MLFLOW_TRACKING_URI=url).returncode == 1
    monkeypatch.undo()
    # A worse version arrives: it must not become "the first champion".
    with_score(second, 2, 0.90)
    line = registry_line(publish_here(second, MLFLOW_TRACKING_URI=url))
    assert line.startswith("registry: no version held the champion alias: version 1 (val_accuracy 0.9900)"), line
    assert champion(url) == 1


def test_a_deleted_champion_is_replaced_by_the_best_remaining_version(project, tracking_server, tmp_path):
    url, _ = tracking_server
    copy = tmp_path / "deleted"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts"))
    for variant, score in [(1, 0.9772), (2, 0.99)]:
        with_score(copy, variant, score)
        registry_line(publish_here(copy, MLFLOW_TRACKING_URI=url))
    assert champion(url) == 2
    client(url).delete_model_version("mnist-classifier", "2")
    with_score(copy, 3, 0.9635)
    line = registry_line(publish_here(copy, MLFLOW_TRACKING_URI=url))
    assert line.startswith(
        "registry: version 2, the champion, is gone: version 1 (val_accuracy 0.9772) is the best remaining"
    )
    assert champion(url) == 1
    # A hand-set alias still stays until a later version beats it.
    client(url).set_registered_model_alias("mnist-classifier", "champion", "3")
    with_score(copy, 4, 0.95)
    assert "version 3 keeps it" in registry_line(publish_here(copy, MLFLOW_TRACKING_URI=url))
    assert champion(url) == 3


class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of a tracking server that can hold back answers: ``slow`` maps a
    path fragment to seconds slept before forwarding (a slow write), ``lost`` to seconds slept after the
    server answered (the answer of a committed request arrives too late: the client retries)."""

    def __init__(self, target: str, slow: dict[str, float] | None = None, lost: dict[str, float] | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.slow, self.lost, self.seen = slow or {}, dict(lost or {}), []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append(self.path)
                for fragment, seconds in proxy.slow.items():
                    if fragment in self.path:
                        time.sleep(seconds)
                request = urllib.request.Request(
                    target + self.path, data=body if self.command != "GET" else None, method=self.command
                )
                for name in ("Content-Type", "Authorization"):
                    if self.headers.get(name):
                        request.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                for fragment in list(proxy.lost):
                    if fragment in self.path:
                        time.sleep(proxy.lost.pop(fragment))  # once: the retry gets its answer
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = forward  # noqa: N815 - http.server's names

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# Runs publish as another host whose clock is off: socket.gethostname and the wall clock replaced.
AS_HOST = (
    "import os, socket, time, runpy; offset = float(os.environ['TEST_CLOCK_OFFSET_S']); "
    "wall, wall_ns = time.time, time.time_ns; time.time = lambda: wall() + offset; "
    "time.time_ns = lambda: wall_ns() + int(offset * 1e9); socket.gethostname = lambda: os.environ['TEST_HOST']; "
    "runpy.run_module('stages.publish', run_name='__main__', alter_sys=True)"
)


def publish_as(copy: Path, url: str, host: str, clock_offset_s: float = 0.0, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PUBLISH_"))}
    environ.update(PYTHONPATH=str(ROOT), DVC_ROOT=str(copy), MLFLOW_TRACKING_URI=url, TEST_HOST=host)
    environ.update(TEST_CLOCK_OFFSET_S=str(clock_offset_s), **env)
    return subprocess.Popen(
        [sys.executable, "-c", AS_HOST],
        cwd=copy,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_hosts_never_both_win_a_claim_with_a_slow_tag_and_skewed_clocks(project, tracking_server, tmp_path):
    url, _ = tracking_server
    a_copy, b_copy = copies(project, tmp_path, "a", "b", keep_timing=False)
    # Host b's clock is an hour behind, and its tag writes reach the server slowly.
    with Proxy(url, slow={"runs/set-tag": 3.0}) as slow_url:
        b = publish_as(b_copy, slow_url, "runner-b", clock_offset_s=-3600)
        time.sleep(1.5)
        a = publish_as(a_copy, url, "runner-a")
        outputs = [p.communicate(timeout=300) for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [0, 0], outputs
    assert len(mlflow_runs(url, "FINISHED")) == 1 and mlflow_runs(url, "RUNNING") == [], outputs
    assert len(client(url).search_model_versions("name = 'mnist-classifier'")) == 1, outputs
    assert client(url).search_registered_models("name LIKE 'mnist-classifier.claim.%'") == []


def test_a_dead_publishers_claim_on_another_host_is_taken_over(project, tracking_server, tmp_path):
    url, _ = tracking_server
    killed_copy, retry_copy = copies(project, tmp_path, "killed", "retry", keep_timing=False)
    killed = publish_as(killed_copy, url, "ci-runner-1")
    deadline = time.monotonic() + 120
    while not mlflow_runs(url, "RUNNING"):
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.05)
    [dead] = mlflow_runs(url, "RUNNING")
    killed.kill()  # SIGKILL: nothing marks the run, nothing releases the claim
    killed.communicate(timeout=30)
    retry = publish_as(retry_copy, url, "ci-runner-2", PUBLISH_CLAIM_STALE_S="3")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, out + err
    assert "another publish got there first" not in out, out
    assert f"took over from run {dead.info.run_id} (host ci-runner-1, pid {killed.pid})" in out, out
    assert f"marked its run {dead.info.run_id} FAILED" in out and "registered mnist-classifier version" in out, out
    assert client(url).get_run(dead.info.run_id).info.status == "FAILED"
    assert len(mlflow_runs(url, "FINISHED")) == 1 and mlflow_runs(url, "RUNNING") == []
    assert client(url).search_registered_models("name LIKE 'mnist-classifier.claim.%'") == []


def test_requests_retried_after_a_lost_answer_leave_one_run_and_one_version(project, tracking_server, tmp_path):
    url, _ = tracking_server
    copy = tmp_path / "retried"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts", ".runtime"))
    # The server commits each creation, but its first answer arrives after the client gave up: it retries.
    lost = {"runs/create": 4.0, "model-versions/create": 4.0, "registered-models/create": 4.0}
    with Proxy(url, lost=lost) as proxy_url:
        result = run_stage(
            "publish",
            copy,
            MLFLOW_TRACKING_URI=proxy_url,
            MLFLOW_HTTP_REQUEST_TIMEOUT="2",
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(mlflow_runs(url)) == 1 and mlflow_runs(url, "FINISHED"), mlflow_runs(url)
    [version] = client(url).search_model_versions("name = 'mnist-classifier'")
    assert champion(url) == int(version.version)


def test_two_publishers_on_a_fresh_sqlite_store_both_succeed(project, tmp_path):
    """MLflow creates a new SQLite store's schema with its first client: two at once must not race."""
    both = copies(project, tmp_path, "c0", "c1", keep_timing=False)
    for i, copy in enumerate(both):
        distinct_model(copy, i)
    db = tmp_path / "shared.db"
    for _ in range(2):
        db.unlink(missing_ok=True)
        procs = [start_publish(copy, MLFLOW_TRACKING_URI=f"sqlite:///{db}") for copy in both]
        outputs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert len(mlflow_runs(f"sqlite:///{db}", "FINISHED")) == 2


def test_a_url_param_with_credentials_is_logged_redacted(copy_of):
    copy = copy_of("secret-url")
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["fetch"]["keras_url"] = "https://alice:s3cr(e)t@data.example/mnist.npz?token=tok-9f8e7d&v=2"
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    result = publish_here(copy)
    assert result.returncode == 0, result.stderr
    [run] = mlflow_runs(f"sqlite:///{copy}/mlflow.db")
    logged = run.data.params["fetch.keras_url"]
    assert logged == "https://***@data.example/mnist.npz?token=***&v=2", logged
    assert not any(s in value for value in run.data.params.values() for s in ("s3cr", "tok-9f8e7d"))


def test_a_damaged_local_store_stops_publish_in_one_line(project, tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.db", "mlartifacts"))
    (copy / "mlflow.db").write_bytes(b"\x00garbage where the runs were" * 64)
    result = run_stage("publish", copy)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("publish: error: MLflow store ") and "cannot be read: file is not a database" in line
    assert "intact" in line and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("stop", "line"),
    [
        (("SIGTERM",), "stopped by SIGTERM; nothing logged"),
        (("SIGINT", "r1", "FAILED"), "stopped by SIGINT; run r1 was marked FAILED (nothing registered)"),
        (("SIGTERM", "r1", "FINISHED"), "after run r1 finished; the next publish completes its registration"),
        (("SIGTERM", "r1", "FINISHED", True), "after run r1 finished; the next publish completes its registration"),
        (("SIGTERM", "r1", "RUNNING"), "run r1 is left RUNNING (the store did not take FAILED): the next publish"),
        (("SIGTERM", "r1", "RUNNING", True), "at once (a second signal); run r1 may be left RUNNING: the next"),
        (("SIGTERM", None, None, True), "at once (a second signal); a run, if one was being made, may be left"),
    ],
)
def test_a_stop_says_what_it_left_behind(stop, line):
    from stages.lib import stopping
    from stages.publish import stopped

    terminated = stopping.Terminated(*stop)
    assert line in f"stopped by {terminated.signal_name}{stopped(terminated)}"


def test_taking_a_stale_claim_over_fails_the_runs_its_holder_was_making(tmp_path):
    """The holder's run is found by the claim's token, whether or not the claim had named it yet."""
    from stages.lib import claims, tracking
    from stages.publish import take_over

    c = client(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = c.create_experiment("mnist")
    named, unnamed, other = (
        c.create_run(experiment_id, tags={tracking.ATTEMPT_TAG: token}).info.run_id for token in ["t1", "t1", "t2"]
    )
    holder = claims.Holder("mnist-classifier.claim.result.k.1", 1, {claims.TOKEN_TAG: "t1", claims.RUN_TAG: named})
    line = take_over(c, holder, experiment_id)
    assert line.endswith(f"; marked its run {', '.join(sorted([named, unnamed]))} FAILED"), line
    assert [c.get_run(r).info.status for r in (named, unnamed, other)] == ["FAILED", "FAILED", "RUNNING"]
