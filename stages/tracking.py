"""MLflow tracking: where the store is, whether it answers, and logging one run.

Default store: SQLite ``mlflow.db`` and artifacts in ``mlartifacts/`` at the
root of the DVC repository, found through ``DVC_ROOT`` so that ``dvc exp run
--temp`` and queued runs (which run in ``.dvc/tmp/exps/...`` copies) land in
the same store as workspace runs. ``MLFLOW_TRACKING_URI`` overrides it.

Only ``log_run`` imports MLflow; the rest is cheap enough to run before
TensorFlow is imported, so a bad store fails a stage in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stages.config import MLFLOW_ARTIFACTS, MLFLOW_DB

EXPERIMENT = "mnist"


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message says which and why."""


def repo_root(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The DVC repository's root, seen through experiment temp copies."""
    environ = os.environ if environ is None else environ
    root = Path(environ.get("DVC_ROOT") or cwd or Path.cwd()).resolve()
    parts = root.parts
    # dvc exp run --temp / --queue run in <repo>/.dvc/tmp/exps/<...>/<copy>
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def store(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None to let the server decide)."""
    environ = os.environ if environ is None else environ
    uri = environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    root = repo_root(environ)
    return f"sqlite:///{root / MLFLOW_DB}", (root / MLFLOW_ARTIFACTS).as_uri()


def preflight(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, if the store cannot be reached or written."""
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow server at {uri} answered HTTP {response.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow server at {uri} is unreachable ({reason}); start it or unset MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        directory = Path(uri.removeprefix("sqlite:///")).parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: {directory} is not a writable directory")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialize writers of a SQLite store (``dvc queue start -j 2`` runs two at once)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def run_tags(data_hash: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags that tie a run to its code, data and DVC experiment."""
    environ = os.environ if environ is None else environ
    tags = {"data.sha256": data_hash}
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    if environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = environ["DVC_EXP_NAME"]
    if environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = environ["DVC_EXP_BASELINE_REV"]
    return tags


def log_run(
    *,
    params: Mapping[str, Any],
    history: list[Mapping[str, float]],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts: Path,
    model: Any,
    input_example: Any,
    pip_requirements: list[str],
    run_name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Log one complete run (params, per-epoch history, metrics, artifacts, model); return its id."""
    # Keep MLflow's HTTP client from retrying for minutes when a server goes away.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow  # noqa: PLC0415 - heavy, and only needed here
    import mlflow.tensorflow  # noqa: PLC0415
    from mlflow.entities import Metric, Param  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    uri, artifact_location = store(environ)
    preflight(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    with store_lock(uri):
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        )
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        run_id = run.info.run_id
        try:
            timestamp = run.info.start_time
            epoch_metrics = [
                Metric(key, float(row[key]), timestamp, int(row["epoch"]))
                for row in history
                for key in row
                if key != "epoch"
            ]
            # A final value whose name is also a per-epoch series would add a bogus point to it.
            series = {key for row in history for key in row}
            final = [
                Metric(f"final_{key}" if key in series else key, float(value), timestamp, 0)
                for key, value in metrics.items()
            ]
            params_list = [Param(key, str(value)) for key, value in params.items()]
            for start in range(0, max(len(epoch_metrics), 1), 900):  # log_batch takes <= 1000 metrics
                client.log_batch(
                    run_id, metrics=epoch_metrics[start : start + 900], params=params_list if start == 0 else []
                )
            client.log_batch(run_id, metrics=final)
            client.log_artifacts(run_id, str(artifacts), "reports")
            with mlflow.start_run(run_id=run_id):
                signature = infer_signature(input_example, model(input_example, training=False).numpy())
                mlflow.tensorflow.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=pip_requirements,
                )
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return run_id
