"""MLflow tracking: is a result in the store, claiming it, logging it as one complete run, mending stale runs.

The rule: **one FINISHED run per distinct result per store.** A result is
identified by its key (``stages.lib.identity``), stored on its run as the tag
``pipeline.result``. ``find_run`` answers "is it there already, and is its
model registered?" without importing MLflow (a plain SQLite query, or one REST
call to a server), so a ``dvc repro`` that changed nothing stays fast.

Logging starts with a claim (``stages.lib.claims``): an entity the store
refuses to create twice, so two publishers of one result, on any hosts and
whatever their clocks say, never both log it; a waiter takes over a claim
whose heartbeat has stopped. The run is then created RUNNING with the key,
this host and process id, and the claim's token (a request MLflow's client
retried after the store had committed it leaves a second run with the same
token: it is deleted). A run whose process has gone (killed, or the store
went away mid-way) is found by the next publish on the same host, or by the
publish that takes its claim over, and marked FAILED. SIGTERM or SIGINT while
logging stops it between two steps and marks the run FAILED
(``stages.lib.stopping``); a second signal stops at once, and the run may
stay RUNNING until a later publish mends it.

The functions that log import MLflow when called, with its INFO logs,
progress bars and URL banners turned off (``quiet_mlflow``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.lib import processes, redact, stopping
from stages.lib.store import EXPERIMENT, TrackingError, describe, is_server, rest

RESULT_TAG = "pipeline.result"  # the result key: one FINISHED run per key
HOST_TAG = "pipeline.host"
PID_TAG = "pipeline.pid"
ATTEMPT_TAG = "pipeline.attempt"  # the publisher's claim token: finds a retried create_run's duplicate
# "<model name>/<version>": set once the run's model is registered and judged by the champion rule.
REGISTERED_TAG = "pipeline.registered"
DIRTY_TAG = "git.dirty"
# Opens the experiment in the UI as a model-training one (runs, metrics,
# models), not on the GenAI traces overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Paths that `dvc repro` itself rewrites: changes there do not make a checkout dirty.
PIPELINE_OUTPUTS = ("dvc.lock", "reports/", "data/")


@dataclass(frozen=True)
class Found:
    run_id: str
    run_name: str
    registered: bool  # the run's model has a version (REGISTERED_TAG)


def quiet_output(environ: dict[str, str]) -> None:
    """No MLflow INFO lines, URL banners or (off a terminal) progress bars, in ``environ`` (this process's, or a
    child's such as ``make serve``'s server); what is already set stays."""
    import sys  # noqa: PLC0415

    environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not sys.stderr.isatty():
        environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # the loader of a model logged from code (publish's)
NO_PICKLES = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}  # MLflow's own refusal, for every process that loads


def pin(uri: str, store_uri: str) -> str:
    """``models:/<name>@<alias>`` as the version the alias names now (``models:/<name>/<version>``), so that what
    is checked is what is loaded, wherever the alias moves meanwhile; any other URI as it is."""
    if not (uri.startswith("models:/") and "@" in uri):
        return uri
    import mlflow  # noqa: PLC0415

    name, alias = uri.removeprefix("models:/").split("@", 1)
    return f"models:/{name}/{mlflow.MlflowClient(store_uri).get_model_version_by_alias(name, alias).version}"


def refuse_pickled(uri: str, local: str | Path | None = None) -> None:
    """``TrackingError`` unless the MLflow model at ``uri`` was logged from code, as ``publish`` logs it (MLflow's
    code-model loader, and the code's path, which is what MLflow itself goes by): any other pyfunc model is
    unpickled when loaded, running code its logger chose. Reads its MLmodel only: from ``local``, the model's
    files already downloaded, if given (``uri`` then only names it). Callers also set ``NO_PICKLES`` in the
    loading process's environment, so that MLflow refuses too."""
    from mlflow.models import Model, get_model_info  # noqa: PLC0415

    pyfunc = (Model.load(local) if local is not None else get_model_info(uri)).flavors.get("python_function", {})
    loader = pyfunc.get("loader_module")
    if loader != CODE_LOADER or "model_code_path" not in pyfunc:
        raise TrackingError(
            f"{redact.uri(uri)} was not logged from code (its python_function loader is {loader or 'missing'}"
            f"{'' if 'model_code_path' in pyfunc else ', with no code path'}): loading it would unpickle it, which "
            "this project never does"
        )


def load_from_code(pinned: str, directory: str, **load: Any) -> Any:
    """The pyfunc model at ``pinned``, downloaded into ``directory`` (the caller's, which it removes: MLflow's own
    download directory would stay in the temporary directory for good) and refused there unless it was logged
    from code (``refuse_pickled``); ``load``: ``mlflow.pyfunc.load_model``'s options."""
    import mlflow.artifacts  # noqa: PLC0415
    import mlflow.pyfunc  # noqa: PLC0415

    local = mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=directory)
    refuse_pickled(pinned, local)
    return mlflow.pyfunc.load_model(local, **load)


def quiet_mlflow(environ: dict[str, str] | None = None) -> None:
    """MLflow's output quiet (``quiet_output``), its database errors without tracebacks, its requests without
    minutes of retries: call before importing MLflow."""
    import logging  # noqa: PLC0415

    # Its database errors come with a traceback (from the claim's heartbeat thread too, or after a forced stop
    # interrupted a write): publish reports a failure in one line, and a heartbeat simply tries again.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    environ = os.environ if environ is None else environ
    quiet_output(environ)
    # A server that fails mid-way: a clear error in seconds, not MLflow's minutes of retries.
    environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialize writers of a SQLite store (``dvc queue start -j 2`` runs two at once)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with file_lock(Path(uri.removeprefix("sqlite:///") + ".lock")):
        yield


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block: one process at a time."""
    # flock itself: the filelock package makes the same call, and would be one more dependency to declare.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        while True:  # not a blocking flock: a SIGTERM noted meanwhile must not wait for the other holder
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                stopping.stop_if_signalled()
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- is the result there? (no MLflow import) ----------------------------------------


def find_run(
    uri: str, key: str, environ: Mapping[str, str] | None = None, experiment: str = EXPERIMENT
) -> Found | None:
    """The oldest FINISHED run holding result ``key`` in ``uri``'s ``experiment`` (the data set's name), or None."""
    if uri.startswith("sqlite:///"):
        try:
            return _find_run_sqlite(Path(uri.removeprefix("sqlite:///")), key, experiment)
        except sqlite3.Error:  # not a schema this query knows (or not yet): ask MLflow itself (slower)
            with store_lock(uri):  # MLflow creates or migrates the schema: one process at a time
                return _find_run_client(uri, key, experiment)
    elif is_server(uri):
        return _find_run_rest(uri, key, os.environ if environ is None else environ, experiment)
    return _find_run_client(uri, key, experiment)


def _find_run_sqlite(db: Path, key: str, experiment: str = EXPERIMENT) -> Found | None:
    if not db.exists():
        return None
    query = """
        SELECT r.run_uuid, r.name,
               EXISTS(SELECT 1 FROM tags g WHERE g.run_uuid = r.run_uuid AND g.key = ?) AS registered
        FROM runs r
        JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN tags t ON t.run_uuid = r.run_uuid
        WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'
          AND r.status = 'FINISHED' AND t.key = ? AND t.value = ?
        ORDER BY r.start_time LIMIT 1
    """
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as con:
        row = con.execute(query, (REGISTERED_TAG, experiment, RESULT_TAG, key)).fetchone()
    return Found(row[0], row[1] or "", bool(row[2])) if row else None


def _find_run_rest(uri: str, key: str, environ: Mapping[str, str], experiment: str = EXPERIMENT) -> Found | None:
    shown = redact.uri(uri)
    try:
        found = rest(uri, "experiments/get-by-name", environ, query={"experiment_name": experiment})
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # RESOURCE_DOES_NOT_EXIST: no experiment, so no run
            return None
        raise TrackingError(
            f"MLflow server at {shown} answered HTTP {exc.code} when asked for the experiment"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TrackingError(f"MLflow server at {shown} is unreachable ({describe(exc)})") from None
    body = {
        "experiment_ids": [found["experiment"]["experiment_id"]],
        "filter": f"tags.`{RESULT_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        "max_results": 1,
        "order_by": ["attributes.start_time ASC"],
    }
    try:
        runs = rest(uri, "runs/search", environ, body=body).get("runs", [])
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TrackingError(f"MLflow server at {shown}: searching runs failed ({describe(exc)})") from None
    if not runs:
        return None
    info, tags = runs[0]["info"], {t["key"]: t.get("value") for t in runs[0].get("data", {}).get("tags", [])}
    return Found(info["run_id"], info.get("run_name", ""), REGISTERED_TAG in tags)


def _find_run_client(uri: str, key: str, name: str = EXPERIMENT) -> Found | None:
    quiet_mlflow()
    from mlflow import MlflowClient  # noqa: PLC0415 - slow; only for stores the fast paths do not know

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{RESULT_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if not runs:
        return None
    return Found(runs[0].info.run_id, runs[0].info.run_name, REGISTERED_TAG in runs[0].data.tags)


# --- where the result comes from ------------------------------------------------------


def git_facts(cwd: Path | None = None) -> dict[str, str]:
    """MLflow's standard source tags (commit, branch, the remote URL without credentials), and
    ``git.dirty`` when tracked files other than the pipeline's own outputs differ from the commit."""
    # Not mlflow.utils.git_utils: it reads the first remote rather than origin, drops user-info but keeps a
    # token in the query, imports GitPython, and has no dirty check that ignores what `dvc repro` rewrites.
    from mlflow.utils import mlflow_tags as t  # noqa: PLC0415

    facts = {}
    for tag, args in [
        (t.MLFLOW_GIT_COMMIT, ["rev-parse", "HEAD"]),
        (t.MLFLOW_GIT_BRANCH, ["rev-parse", "--abbrev-ref", "HEAD"]),
        (t.MLFLOW_GIT_REPO_URL, ["config", "--get", "remote.origin.url"]),
    ]:
        value = _git(args, cwd)
        if value and value != "HEAD":
            facts[tag] = redact.uri(value)
    if t.MLFLOW_GIT_COMMIT in facts and dirty(cwd):
        facts[DIRTY_TAG] = "true"
    return facts


def dirty(cwd: Path | None = None) -> bool:
    """Whether the checkout differs from its commit (tracked files changed, or new files git does not
    ignore) in anything but what ``dvc repro`` writes itself."""
    # -z: "XY path\0", a rename adding "\0old path"; paths are never quoted.
    entries = (_git(["status", "--porcelain", "-z", "--untracked-files=normal"], cwd, strip=False) or "").split("\0")
    changed = [entry[3:] for entry in entries if len(entry) > 3 and entry[2] == " "]
    return any(not path.startswith(PIPELINE_OUTPUTS) for path in changed)


def _git(args: list[str], cwd: Path | None = None, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return (out.stdout.strip() if strip else out.stdout) or None


# --- logging ---------------------------------------------------------------------------


def ensure_experiment(client: Any, artifact_location: str | None, name: str = EXPERIMENT) -> str:
    """The experiment ``name``'s id (the data set's name), created as a model-training experiment when missing."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
    except MlflowException as exc:  # another publisher created it a moment ago
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def process_alive(pid: int, proc: Path = processes.PROC) -> bool:
    """Whether ``pid`` is a live process that could still be publishing: a reused number running something
    else does not count, and where ``proc`` cannot tell (another PID namespace's) a live pid does."""
    return processes.runs(pid, b"stages.publish", proc) is not False


def mend_stale_runs(client: Any, experiment_id: str, host: str | None = None) -> list[str]:
    """Mark FAILED this host's RUNNING runs whose publishing process has gone; their ids."""
    host = host or socket.gethostname()
    stale = []
    for run in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"):
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, "FAILED")
            stale.append(run.info.run_id)
    return stale


def fail_attempt(client: Any, experiment_id: str, attempt: str, run_ids: Iterable[str] = ()) -> list[str]:
    """Mark FAILED the RUNNING runs of a publisher that stopped: those carrying its claim's token ``attempt``
    (the run it was logging, named on its claim or not yet) and ``run_ids``; their ids."""
    stale = set(run_ids)
    if attempt:
        query = f"tags.`{ATTEMPT_TAG}` = '{attempt}' and attributes.status = 'RUNNING'"
        stale |= {run.info.run_id for run in client.search_runs([experiment_id], query)}
    failed = []
    for run_id in sorted(stale):
        with contextlib.suppress(Exception):  # deleted meanwhile
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FAILED")
                failed.append(run_id)
    return failed


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
    attempt: str,
    log_rest: Callable[[str], None],
    created: Callable[[str], None] = lambda run_id: None,
) -> str:
    """Log one complete run of a claimed result; ``log_rest(run_id)`` adds inputs, artifacts and the model.

    Call while holding the result's claim, whose token is ``attempt``;
    ``created(run_id)`` is called as soon as the run exists. Returns
    the run's id once it is FINISHED. Any failure on the way marks the run
    FAILED (never left RUNNING) and re-raises the original error, even when
    marking it fails too (the store has gone: the next publish on this host,
    or the one that takes the claim over, mends it). Under
    ``stopping.deferred_signals``, SIGTERM and SIGINT stop it between two
    requests, as ``stopping.Terminated`` naming the run and its state.
    """
    from mlflow.entities import Metric, Param  # noqa: PLC0415

    stopping.stop_if_signalled()
    run = client.create_run(
        experiment_id,
        start_time=start_ms,
        run_name=run_name,
        tags={**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), ATTEMPT_TAG: attempt},
    )
    run_id = run.info.run_id
    stopping.concerning(run_id, "RUNNING")
    try:
        created(run_id)
        for twin in client.search_runs([experiment_id], f"tags.`{ATTEMPT_TAG}` = '{attempt}'"):
            if twin.info.run_id != run_id:  # the first try of a create_run that MLflow's client retried
                client.set_terminated(twin.info.run_id, "KILLED")
                client.delete_run(twin.info.run_id)
        stopping.stop_if_signalled()
        epoch_metrics = [
            Metric(name, float(row[name]), start_ms, int(row["epoch"]))
            for row in history
            for name in row
            if name != "epoch"
        ]
        # A final value whose name is also a per-epoch series would add a bogus point to it.
        series = {name for row in history for name in row}
        final = [
            Metric(f"final_{name}" if name in series else name, float(value), start_ms, 0)
            for name, value in metrics.items()
        ]
        params_list = [Param(name, str(value)) for name, value in params.items()]
        # MlflowClient.log_batch splits into requests the store accepts (100 params, 1000 metrics each).
        client.log_batch(run_id, metrics=epoch_metrics + final, params=params_list)
        stopping.stop_if_signalled()
        log_rest(run_id)
        stopping.stop_if_signalled()
        client.set_terminated(run_id, "FINISHED", end_time=end_ms)  # None: now
        stopping.concerning(run_id, "FINISHED")
    except stopping.Terminated as stop:
        # After a forced stop, a request may have been cut short, holding the store's lock: no more requests
        # (the next publish on this host, or the one that takes the claim over, marks the run). A second
        # signal while marking it raises a forced stop naming the run as RUNNING, in place of this one.
        if stop.forced or not _mark_failed(client, run_id):
            raise
        stopping.concerning(run_id, "FAILED")
        raise stopping.Terminated(stop.signal_name, run_id, "FAILED") from None
    except BaseException:
        _mark_failed(client, run_id)  # or not: the original error is the one to report
        raise
    return run_id


def _mark_failed(client: Any, run_id: str) -> bool:
    """Mark the run FAILED; whether the store took it."""
    try:
        client.set_terminated(run_id, "FAILED")
    except Exception:
        return False
    return True
