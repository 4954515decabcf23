"""MLflow tracking: where the store is, whether it answers, whether a result is in it, logging a run.

Default store: SQLite ``mlflow.db`` and artifacts in ``mlartifacts/`` at the
root of the DVC repository, found through ``DVC_ROOT`` so that ``dvc exp run
--temp`` and queued runs (which run in ``.dvc/tmp/exps/...`` copies) land in
the same store as workspace runs. ``MLFLOW_TRACKING_URI`` overrides it.

The rule: **one run per distinct result per store.** A result is identified by
``result_key`` (the model, metrics, history and data hashes plus every param),
stored on its run as the tag ``pipeline.result``. ``find_run`` answers "is it
there already?" without importing MLflow (a plain SQLite query, or two REST
calls to a server), so a ``dvc repro`` that changed nothing stays fast. The
functions that log import MLflow when called.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stages.config import MLFLOW_ARTIFACTS, MLFLOW_DB
from stages.files import sha256_file

EXPERIMENT = "mnist"
RESULT_TAG = "pipeline.result"
# Opens the experiment in the UI as a model-training one (runs, metrics,
# models), not on the GenAI traces overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


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
    if uri and uri.startswith("sqlite:///"):
        # A relative path means the repository root (not .dvc/tmp/exps/... of a queued experiment);
        # artifacts go beside the database, not into ./mlruns of wherever the stage ran.
        db = repo_root(environ) / uri.removeprefix("sqlite:///")
        return f"sqlite:///{db}", (db.parent / MLFLOW_ARTIFACTS).as_uri()
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


def result_key(files: list[Path], params: Mapping[str, Any]) -> str:
    """The fingerprint of a result: the content of ``files`` and every param."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{Path(path).as_posix()}\0{sha256_file(path)}\0".encode())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def find_run(uri: str, key: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(run id, run name) of the FINISHED run holding result ``key`` in ``uri``'s ``mnist`` experiment, or None."""
    if uri.startswith("sqlite:///"):
        try:
            return _find_run_sqlite(Path(uri.removeprefix("sqlite:///")), key)
        except sqlite3.Error:
            pass  # not a schema this query knows: ask MLflow itself (slower)
    elif uri.startswith(("http://", "https://")):
        return _find_run_rest(uri, key, os.environ if environ is None else environ)
    return _find_run_client(uri, key)


def _find_run_sqlite(db: Path, key: str) -> tuple[str, str] | None:
    if not db.exists():
        return None
    query = """
        SELECT r.run_uuid, r.name FROM runs r
        JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN tags t ON t.run_uuid = r.run_uuid
        WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'
          AND r.status = 'FINISHED' AND t.key = ? AND t.value = ?
        ORDER BY r.start_time LIMIT 1
    """
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as con:
        row = con.execute(query, (EXPERIMENT, RESULT_TAG, key)).fetchone()
    return (row[0], row[1]) if row else None


def _auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """MLflow's own client settings for a server behind authentication (never printed)."""
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {environ['MLFLOW_TRACKING_TOKEN']}"}
    if environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{environ['MLFLOW_TRACKING_USERNAME']}:{environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}


def _rest(
    uri: str,
    endpoint: str,
    environ: Mapping[str, str],
    body: dict | None = None,
    query: dict | None = None,
    timeout_s: float = 30.0,
) -> dict:
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **_auth_headers(environ)}
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read() or b"{}")


def _find_run_rest(uri: str, key: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    try:
        experiment = _rest(uri, "experiments/get-by-name", environ, query={"experiment_name": EXPERIMENT})
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # RESOURCE_DOES_NOT_EXIST: no experiment, so no run
            return None
        raise TrackingError(f"MLflow server at {uri} answered HTTP {exc.code} when asked for the experiment") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TrackingError(f"MLflow server at {uri} is unreachable ({getattr(exc, 'reason', exc)})") from None
    body = {
        "experiment_ids": [experiment["experiment"]["experiment_id"]],
        "filter": f"tags.`{RESULT_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        "max_results": 1,
        "order_by": ["attributes.start_time ASC"],
    }
    try:
        runs = _rest(uri, "runs/search", environ, body=body).get("runs", [])
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TrackingError(f"MLflow server at {uri}: searching runs failed ({getattr(exc, 'reason', exc)})") from None
    if not runs:
        return None
    return runs[0]["info"]["run_id"], runs[0]["info"].get("run_name", "")


def _find_run_client(uri: str, key: str) -> tuple[str, str] | None:
    from mlflow import MlflowClient  # noqa: PLC0415 - slow; only for stores the fast paths do not know

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{RESULT_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return (runs[0].info.run_id, runs[0].info.run_name) if runs else None


def git_facts(cwd: Path | None = None) -> dict[str, str]:
    """MLflow's standard source tags for the checkout (commit, branch, remote URL) that git can tell."""
    from mlflow.utils import mlflow_tags as t  # noqa: PLC0415

    facts = {}
    for tag, args in [
        (t.MLFLOW_GIT_COMMIT, ["rev-parse", "HEAD"]),
        (t.MLFLOW_GIT_BRANCH, ["rev-parse", "--abbrev-ref", "HEAD"]),
        (t.MLFLOW_GIT_REPO_URL, ["config", "--get", "remote.origin.url"]),
    ]:
        value = _git(args, cwd)
        if value and value != "HEAD":
            facts[tag] = value
    return facts


def _git(args: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ensure_experiment(client: Any, artifact_location: str | None) -> str:
    """The ``mnist`` experiment's id, created as a model-training experiment when missing."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)


def log_run(
    client: Any,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    history: list[Mapping[str, float]],
    metrics: Mapping[str, float],
    start_ms: int,
    end_ms: int | None,
    log_rest: Callable[[str], None],
) -> str:
    """Log one complete run; ``log_rest(run_id)`` adds inputs, artifacts and the model.

    The run is FINISHED only when everything is logged; any failure on the way
    marks it FAILED (never left RUNNING) and re-raises.
    """
    from mlflow.entities import Metric, Param  # noqa: PLC0415

    run = client.create_run(experiment_id, start_time=start_ms, run_name=run_name, tags=dict(tags))
    run_id = run.info.run_id
    try:
        epoch_metrics = [
            Metric(key, float(row[key]), start_ms, int(row["epoch"]))
            for row in history
            for key in row
            if key != "epoch"
        ]
        # A final value whose name is also a per-epoch series would add a bogus point to it.
        series = {key for row in history for key in row}
        final = [
            Metric(f"final_{key}" if key in series else key, float(value), start_ms, 0)
            for key, value in metrics.items()
        ]
        params_list = [Param(key, str(value)) for key, value in params.items()]
        batch = epoch_metrics + final
        for start in range(0, max(len(batch), 1), 900):  # log_batch takes <= 1000 metrics, 100 params
            client.log_batch(run_id, metrics=batch[start : start + 900], params=params_list if start == 0 else [])
        log_rest(run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED", end_time=end_ms)  # None: now
    return run_id
