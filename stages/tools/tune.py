"""Hyper-parameter studies on Optuna, shared by any number of workers on any number of machines.

    python -m stages.tools.tune run --study NAME --trials N [--workers K] [--space dense]   (make tune)
    python -m stages.tools.tune worker --study NAME                                       (make tune-worker)
    python -m stages.tools.tune best --study NAME                                         (make tune-best)

A study searches one space of ``tune.yaml`` (params.yaml keys of the model and
train sections), maximizing ``val_accuracy``; the test split is never read.
``run`` validates the space against the params schema, creates the study (or
continues one with the same space) and its MLflow parent run, starts K
long-lived worker processes and waits for them. A worker imports TensorFlow
and loads the prepared arrays once, then asks Optuna for trials until the study
has N: each trains with the train stage's own functions, reports every epoch's
``val_accuracy`` (the median pruner stops hopeless ones) and is one MLflow
child run from its first epoch to its end. ``best`` hands the best trial's
params to ``dvc exp run``, so the winner goes through publish, the registry and
the champion rule like any other result.

Storage: ``TUNE_STORAGE`` (a SQLAlchemy URL, e.g. the team's PostgreSQL) or,
by default, Optuna's journal file ``.tune/optuna.journal`` (safe for several
processes on one machine; SQLite is not, under concurrent writers). A worker
that dies leaves no trial RUNNING: on one machine its process id is gone,
which every other process of the study checks before it asks for a trial;
across machines Optuna's heartbeat (RDB storages) notices the silence. Either
way the trial ends FAIL and is retried once, as a new trial with its params.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stages import KERAS_EXTRAS, finish, leave_out
from stages.lib import redact, store, tracking
from stages.lib.paths import PREPARED_DIR, STATS_PATH
from stages.params import evaluate as evaluate_params
from stages.params import fetch as fetch_params
from stages.params import model as model_params
from stages.params import preprocess as preprocess_params
from stages.params import schema
from stages.params import train as train_params

SPACE_FILE = Path("tune.yaml")
TUNE_DIR = Path(".tune")
JOURNAL = TUNE_DIR / "optuna.journal"
EXPERIMENT = "mnist-tune"
SECTIONS = (model_params, train_params)  # what a trial may vary: the workers train on the prepared arrays
SECTION_NAMES = tuple(section.NAME for section in SECTIONS)
ALL_SECTIONS = {s.NAME for s in (fetch_params, preprocess_params, model_params, train_params, evaluate_params)}
DISTRIBUTIONS = ("log", "float", "int", "choice")
OBJECTIVE = "val_accuracy"
HEARTBEAT_S = 10  # RDB storages: a trial whose worker is silent for GRACE_S ends FAIL
GRACE_S = 40
MAX_RETRY = 1  # a trial whose worker died or was stopped is run again once, as a new trial
DEFAULT_PRUNER = {"n_startup_trials": 4, "n_warmup_steps": 2}
DEFAULT_SAMPLER = {"n_startup_trials": 6}


class TuneError(RuntimeError):
    """Bad input or an unusable storage; the message is one line."""


# --- the search space ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    """A validated search space: overrides every trial shares, and distributions to draw from."""

    name: str
    fixed: dict[str, Any]
    search: dict[str, dict[str, list]]  # key -> {kind: args}
    pruner: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    sampler: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fixed": self.fixed,
            "search": self.search,
            "pruner": self.pruner,
            "sampler": self.sampler,
        }


def schema_keys() -> dict[str, schema.Spec]:
    """Every tunable params key (``model.cnn.filters`` ...) and its spec."""

    def walk(schema: dict, prefix: str) -> Iterator[tuple[str, schema.Spec]]:
        for key, spec in schema.items():
            if isinstance(spec, dict):
                yield from walk(spec, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", spec

    return {key: spec for section in SECTIONS for key, spec in walk(section.SCHEMA, f"{section.NAME}.")}


def apply(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the params tree ``base`` with dotted-key ``overrides`` set (like ``dvc exp run -S``)."""
    tree = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return tree


def trial_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The validated model and train params of a trial: ``params.yaml`` with its overrides."""
    return schema.validate(apply(base, overrides), SECTIONS)


def load_space(name: str, base: Mapping[str, Any], path: Path = SPACE_FILE) -> Space:
    """Space ``name`` of ``path``, checked against the params schema (one-line errors naming the key)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TuneError(f"{path} not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise TuneError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    spaces = (raw or {}).get("spaces") if isinstance(raw, dict) else None
    if not isinstance(spaces, dict) or not spaces:
        raise TuneError(f"{path}: expected a mapping 'spaces' of named search spaces")
    if name not in spaces:
        raise TuneError(f"{path}: no space '{name}' (spaces: {', '.join(spaces)})")
    return validate_space(name, spaces[name], base, str(path))


def validate_space(name: str, raw: Any, base: Mapping[str, Any], where: str = "tune.yaml") -> Space:
    """Check a space's structure, every key and every value it can take, and that one backend serves it."""
    at = f"{where}: spaces.{name}"
    if not isinstance(raw, dict):
        raise TuneError(f"{at} must be a mapping with 'search' (and optionally 'fixed', 'pruner', 'sampler')")
    unknown = sorted(set(raw) - {"fixed", "search", "pruner", "sampler"})
    if unknown:
        raise TuneError(f"{at}: unknown entry '{unknown[0]}' (allowed: fixed, search, pruner, sampler)")
    fixed, search = raw.get("fixed") or {}, raw.get("search") or {}
    if not isinstance(fixed, dict) or not isinstance(search, dict):
        raise TuneError(f"{at}: 'fixed' and 'search' must be mappings of params keys")
    if not search:
        raise TuneError(f"{at}.search is empty: nothing to tune")
    keys = schema_keys()
    for key in [*fixed, *search]:
        if key not in keys:
            section = str(key).split(".")[0]
            why = "not a params key"
            if section in ALL_SECTIONS and section not in SECTION_NAMES:
                why = "not tunable (only model.* and train.* keys: the workers train on the prepared arrays)"
            raise TuneError(f"{at}: {key} is {why}")
    both = sorted(set(fixed) & set(search))
    if both:
        raise TuneError(f"{at}: {both[0]} is both fixed and searched")
    candidates: dict[str, list] = {}
    for key, dist in search.items():
        candidates[key] = _distribution_values(f"{at}.search.{key}", key, dist, keys[key])
    for key, value in fixed.items():
        _check_value(f"{at}.fixed.{key}", key, value, keys[key])
    # Every value of every key, each with everything else at its first value: each is a valid params override.
    first = {key: values[0] for key, values in candidates.items()}
    for key, values in candidates.items():
        for value in values:
            try:
                trial_config(base, {**fixed, **first, key: value})
            except schema.ParamsError as exc:
                raise TuneError(f"{at}: {key}={value!r} gives invalid params ({exc})") from None
    backends = _backends(base, fixed, candidates)
    if len(backends) > 1:
        raise TuneError(
            f"{at}: trials would need different TensorFlow backends (dense without dropout: XLA; "
            "cnn or dropout > 0: oneDNN graph); fix model.kind, and model.dropout at 0 or above 0"
        )
    pruner = _settings(f"{at}.pruner", raw.get("pruner"), DEFAULT_PRUNER)
    sampler = _settings(f"{at}.sampler", raw.get("sampler"), DEFAULT_SAMPLER)
    return Space(name, dict(fixed), {k: dict(v) for k, v in search.items()}, pruner, sampler)


def _check_value(at: str, key: str, value: Any, spec: schema.Spec) -> None:
    try:
        spec.check(value)
    except (ValueError, TypeError):
        raise TuneError(f"{at}: {key} must be {spec.describe}, got {value!r}") from None


def _distribution_values(at: str, key: str, dist: Any, spec: schema.Spec) -> list:
    """The values a distribution can take that decide validity: a choice's values, a range's ends."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise TuneError(
            f"{at} must be one of {{log: [low, high]}}, {{float: [low, high]}}, {{int: [low, high]}}, "
            "{choice: [values]}"
        )
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise TuneError(f"{at}: choice needs a non-empty list of values")
        for value in args:
            _check_value(at, key, value, spec)
        if len({json.dumps(v, sort_keys=True) for v in args}) != len(args):
            raise TuneError(f"{at}: choice lists a value twice")
        return list(args)
    if not (isinstance(args, list) and len(args) == 2):
        raise TuneError(f"{at}: {kind} needs [low, high]")
    low, high = args
    for value in args:
        if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise TuneError(f"{at}: int bounds must be integers, got {value!r}")
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value):
            raise TuneError(f"{at}: bounds must be numbers, got {value!r}")
        _check_value(at, key, int(value) if kind == "int" else float(value), spec)
    if not low < high:
        raise TuneError(f"{at}: low must be below high, got [{low}, {high}]")
    if kind == "log" and low <= 0:
        raise TuneError(f"{at}: log needs low > 0, got {low}")
    return [int(low), int(high)] if kind == "int" else [float(low), float(high)]


def _settings(at: str, raw: Any, default: dict[str, int]) -> dict[str, int]:
    if raw is None:
        return dict(default)
    if not isinstance(raw, dict):
        raise TuneError(f"{at} must be a mapping ({', '.join(default)})")
    for key, value in raw.items():
        if key not in default:
            raise TuneError(f"{at}: unknown setting '{key}' (allowed: {', '.join(default)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TuneError(f"{at}.{key} must be an integer >= 0, got {value!r}")
    return {**default, **raw}


def _backends(base: Mapping[str, Any], fixed: dict[str, Any], candidates: dict[str, list]) -> set[str]:
    """The TensorFlow set-ups (``train.backend_settings``) the space's model params can need."""
    from stages.lib.training import backend_settings  # noqa: PLC0415 - no TensorFlow; only when validating

    model_keys = [key for key in candidates if key.startswith("model.")]
    saved = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    seen = set()
    try:
        for values in itertools.product(*(candidates[key] for key in model_keys)):
            os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
            model = trial_config(base, {**fixed, **dict(zip(model_keys, values, strict=True))})["model"]
            settings = backend_settings(model)
            seen.add(json.dumps({**settings, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}, sort_keys=True))
    finally:
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
        if saved is not None:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = saved
    return seen


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values are scalars: a list choice travels as its JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode_choice(value: Any, choices: list) -> Any:
    for choice in choices:
        if encode_choice(choice) == value:
            return copy.deepcopy(choice)
    raise TuneError(f"value {value!r} is not one of the space's choices")


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """One draw from the space (Optuna's sampler decides), as params overrides: fixed values included."""
    overrides = dict(space.fixed)
    for key, dist in space.search.items():
        kind, args = next(iter(dist.items()))
        if kind == "log":
            overrides[key] = trial.suggest_float(key, args[0], args[1], log=True)
        elif kind == "float":
            overrides[key] = trial.suggest_float(key, args[0], args[1])
        elif kind == "int":
            overrides[key] = trial.suggest_int(key, args[0], args[1])
        else:
            overrides[key] = decode_choice(trial.suggest_categorical(key, [encode_choice(c) for c in args]), args)
    return overrides


def cli_value(value: Any) -> str:
    """A value as ``dvc exp run -S key=<value>`` takes it (YAML) and params.yaml reads it back the same.

    Floats are written positionally: YAML 1.1 (PyYAML, which the stages use) reads ``1e-05`` as a string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return np.format_float_positional(value, unique=True, trim="0")
    if isinstance(value, list):
        return "[" + ",".join(cli_value(v) for v in value) + "]"
    return str(value)


def exp_run_command(study_name: str, overrides: Mapping[str, Any]) -> list[str]:
    """``dvc exp run -n tune-<study> -S key=value ...`` with exactly the trial's overrides."""
    command = ["dvc", "exp", "run", "-n", f"tune-{study_name}"]
    for key, value in overrides.items():
        command += ["-S", f"{key}={cli_value(value)}"]
    return command


# --- storage and studies ------------------------------------------------------------------------


def storage_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``TUNE_STORAGE``, or None for the journal file."""
    environ = os.environ if environ is None else environ
    return environ.get("TUNE_STORAGE") or None


def describe_storage(url: str | None) -> str:
    return str(JOURNAL) if url is None else redact.uri(url)


def open_storage(url: str | None, on_stale: Callable | None = None) -> Any:
    """Optuna's storage: the journal file, or an RDB (heartbeat on) at ``url``; a one-line error if unusable."""
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # noqa: PLC0415

        TUNE_DIR.mkdir(exist_ok=True)
        path = str(JOURNAL)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=on_stale,
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )
    except Exception as exc:  # SQLAlchemy's errors (driver, DNS, refused, auth) all mean: cannot use it
        reason = redact.text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if "revision" in reason:  # another program's alembic_version table (MLflow's database, say)
            reason += " - Optuna needs a database of its own (MLflow's cannot be shared)"
        raise TuneError(f"storage {describe_storage(url)} is unusable: {reason[:300]}") from None


@contextlib.contextmanager
def study_lock(url: str | None, study_name: str) -> Iterator[None]:
    """One process at a time counts a study's trials and asks for the next (else N could become N + 1).

    PostgreSQL: a session advisory lock; files (the journal, SQLite): ``flock`` beside them.
    """
    if url is not None and url.startswith(("postgresql", "postgres")):
        import sqlalchemy  # noqa: PLC0415

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                key = sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:name))")
                connection.execute(key, {"name": f"tune:{study_name}"})
                try:
                    yield
                finally:
                    connection.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:name))"), {"name": f"tune:{study_name}"}
                    )
        finally:
            engine.dispose()
        return
    if url is None:
        lock_path = JOURNAL.with_name(JOURNAL.name + ".ask-lock")
    elif url.startswith("sqlite:///"):
        lock_path = Path(url.removeprefix("sqlite:///") + ".ask-lock")
    else:
        yield  # another database: no lock (a study may end one trial over N)
        return
    with tracking.file_lock(lock_path):
        yield


def base_params() -> dict[str, Any]:
    """params.yaml as read (the tree that trials override); its model and train sections must be valid."""
    raw = schema.read_raw()
    schema.validate(raw, SECTIONS)
    return raw


def fingerprint(base: Mapping[str, Any]) -> str:
    """The model and train params every trial starts from, as compared between workers."""
    return json.dumps(schema.flatten(schema.validate(base, SECTIONS)), sort_keys=True)


def data_digest(stats_path: Path = STATS_PATH) -> str:
    try:
        return json.loads(Path(stats_path).read_text())["sha256"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        raise TuneError(f"{stats_path} missing or incomplete: run `dvc repro` (or `dvc pull`) first") from None


def load_study(storage: Any, name: str) -> Any:
    """An existing study (one line if there is none), its sampler and pruner from its own space."""
    import optuna  # noqa: PLC0415

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        hint = f" (studies: {', '.join(known)})" if known else " (none yet)"
        raise TuneError(f"no study '{name}' in this storage{hint}: start it with `make tune STUDY={name}`") from None
    space = study.user_attrs.get("space")
    if not space:
        raise TuneError(f"study '{name}' was not made by `make tune` (no space recorded)")
    study.sampler = optuna.samplers.TPESampler(
        n_startup_trials=space["sampler"]["n_startup_trials"], constant_liar=True, multivariate=True
    )
    study.pruner = optuna.pruners.MedianPruner(
        n_startup_trials=space["pruner"]["n_startup_trials"], n_warmup_steps=space["pruner"]["n_warmup_steps"]
    )
    return study


def create_or_continue(storage: Any, name: str, space: Space, trials: int, base: Mapping[str, Any]) -> Any:
    """The study ``name``: created with ``space``, or an existing one with the same space (TRIALS may grow)."""
    import optuna  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space.as_dict())
        study.set_user_attr("params", fingerprint(base))
        study.set_user_attr("data", data_digest())
    elif recorded != json.loads(json.dumps(space.as_dict())):
        ours, theirs = schema.flatten(json.loads(json.dumps(space.as_dict()))), schema.flatten(recorded)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise TuneError(
            f"study '{name}' exists with another space (space '{recorded.get('name')}'; differs in "
            f"{differ[0]}): pick another STUDY name"
        )
    study.set_user_attr("n_trials", trials)
    return load_study(storage, name)


def check_worker(study: Any, base: Mapping[str, Any]) -> None:
    """A worker must start from the study's params and data: otherwise its trials mean something else."""
    if study.user_attrs.get("params") != fingerprint(base):
        raise TuneError(
            f"params.yaml's model/train sections differ from those study '{study.study_name}' started from: "
            "check out the study's commit"
        )
    if study.user_attrs.get("data") != data_digest():
        raise TuneError(
            f"data/prepared differs from the data study '{study.study_name}' used: `dvc pull` the study's commit"
        )


def pending(study: Any) -> bool:
    """Whether the study wants another trial: fewer than its N, or one queued to run again."""
    import optuna  # noqa: PLC0415

    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
    return waiting or len(counted(trials)) < study.user_attrs["n_trials"]


def retried_numbers(trials: list) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counted(trials: list) -> list:
    """The trials that count towards the study's N: all but those that failed and were run again."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.number not in retried]


# --- liveness: no trial RUNNING forever ---------------------------------------------------------


def worker_id() -> dict[str, Any]:
    import psutil  # noqa: PLC0415

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def is_dead(worker: Mapping[str, Any] | None) -> bool:
    """Whether a trial's worker was a process on this machine that no longer runs."""
    import psutil  # noqa: PLC0415

    if not worker or worker.get("host") != socket.gethostname():
        return False
    try:
        return psutil.Process(worker["pid"]).create_time() != worker["started"]
    except psutil.NoSuchProcess:
        return True


def fail_dead_trials(study: Any, on_failed: Callable[[Any, Any], None]) -> list[int]:
    """Fail the RUNNING trials whose worker is gone (same machine: by process; others: heartbeat)."""
    import optuna  # noqa: PLC0415

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not is_dead(trial.user_attrs.get("worker")):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        failed.append(trial.number)
        on_failed(study, study._storage.get_trial(trial._trial_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # RDB: heartbeat; runs the storage's stale callback
    return failed


def retry(study: Any, trial: Any) -> bool:
    """Queue the trial's params once more (Optuna's retry callback); whether it did."""
    import optuna  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = len(study.get_trials(deepcopy=False))
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
        return len(study.get_trials(deepcopy=False)) > before


class Heartbeat:
    """Optuna's heartbeat for an ask-and-tell trial: a thread recording it every interval (RDB only)."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        if interval:
            self.thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self.thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the grace period covers several
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


# --- MLflow: one parent run per study, one child run per trial ----------------------------------


class Runs:
    """The study's runs in the project's MLflow store (``tracking.store``), experiment ``mnist-tune``.

    Every write holds ``tracking.store_lock``: K workers share a SQLite store safely on one machine.
    """

    def __init__(self) -> None:
        self.uri, self.artifact_location = store.store()
        store.preflight(self.uri)
        from mlflow import MlflowClient  # noqa: PLC0415 - 2 s; once per process

        with tracking.store_lock(self.uri):
            self.client = MlflowClient(self.uri)

    @contextlib.contextmanager
    def lock(self) -> Iterator[Any]:
        with tracking.store_lock(self.uri):
            yield self.client

    def experiment(self) -> str:
        with self.lock() as client:
            found = client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                return found.experiment_id
            return client.create_experiment(
                EXPERIMENT, artifact_location=self.artifact_location, tags=tracking.EXPERIMENT_TAGS
            )

    def parent(self, study: Any, space: Space, trials: int) -> str:
        """The study's parent run: created once, marked RUNNING again when the study continues."""
        run_id = study.user_attrs.get("mlflow_parent")
        with self.lock() as client:
            if run_id:
                try:
                    client.update_run(run_id, status="RUNNING")
                    client.set_tag(run_id, "tune.trials", str(trials))
                    return run_id
                except Exception as exc:
                    raise store.TrackingError(
                        f"study '{study.study_name}' logs to MLflow run {run_id}, which this store lacks: "
                        "set MLFLOW_TRACKING_URI to the study's store"
                    ) from exc
        experiment_id = self.experiment()
        tags = {
            "tune.study": study.study_name,
            "tune.space": space.name,
            "tune.trials": str(trials),
            "tune.storage": describe_storage(storage_url()),
            **tracking.git_facts(),
        }
        with self.lock() as client:
            run = client.create_run(experiment_id, run_name=f"study-{study.study_name}", tags=tags)
            client.log_param(run.info.run_id, "space", json.dumps(space.as_dict(), sort_keys=True)[:6000])
        study.set_user_attr("mlflow_parent", run.info.run_id)
        study.set_user_attr("mlflow_experiment", experiment_id)
        return run.info.run_id

    def start_trial(self, study: Any, number: int, config: dict, overrides: dict, retry_of: int | None) -> str:
        tags = {
            "mlflow.parentRunId": study.user_attrs["mlflow_parent"],
            "tune.study": study.study_name,
            "tune.trial": str(number),
            "tune.state": "RUNNING",
            "tune.worker": f"{socket.gethostname()}:{os.getpid()}",
            "tune.overrides": json.dumps(overrides, sort_keys=True),
        }
        if retry_of is not None:
            tags["tune.retry_of"] = str(retry_of)
        from mlflow.entities import Param  # noqa: PLC0415

        flat = schema.flatten(config)
        with self.lock() as client:
            run = client.create_run(
                study.user_attrs["mlflow_experiment"], run_name=f"{study.study_name}-trial-{number}", tags=tags
            )
            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
        return run.info.run_id

    def log_epochs(self, run_id: str, rows: list[Mapping[str, float]]) -> None:
        """Per-epoch metrics, several epochs in one write (see ``EpochLog``)."""
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"])) for row in rows for k, v in row.items() if k != "epoch"]
        if metrics:
            with self.lock() as client:
                client.log_batch(run_id, metrics=metrics)

    def end_trial(
        self,
        run_id: str,
        state: str,
        metrics: Mapping[str, float],
        note: str | None = None,
        rows: list[Mapping[str, float]] = (),
    ) -> None:
        """state: COMPLETE (run FINISHED), PRUNED (KILLED) or FAIL (FAILED), also as the tag ``tune.state``;
        ``rows``: epochs not logged yet. Two writes."""
        from mlflow.entities import Metric, RunTag  # noqa: PLC0415

        now = int(time.time() * 1000)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        tags = [RunTag("tune.state", state)] + ([RunTag("tune.note", note[:500])] if note else [])
        final = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        series = [Metric(k, float(v), now, int(r["epoch"])) for r in rows for k, v in r.items() if k != "epoch"]
        with self.lock() as client:
            client.log_batch(run_id, metrics=series + final, tags=tags)
            client.set_terminated(run_id, status)

    def end_study(self, run_id: str, summary: Mapping[str, float], figures: Path | None, killed: bool) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(time.time() * 1000)
        with self.lock() as client:
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
            if figures is not None:
                client.log_artifacts(run_id, str(figures), "figures")
            client.set_terminated(run_id, "KILLED" if killed else "FINISHED")


# --- the worker: long-lived, one TensorFlow import, many trials ---------------------------------


class EpochLog:
    """Epoch rows on their way to a trial's MLflow run: written every ``interval`` seconds, not every epoch
    (each write takes the store's lock: with K workers and short epochs it would cost more than it shows)."""

    def __init__(self, runs: Runs, run_id: str, interval: float = 10.0) -> None:
        self.runs, self.run_id, self.interval = runs, run_id, interval
        self.rows: list[dict[str, float]] = []
        self.last = time.monotonic()

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if time.monotonic() - self.last >= self.interval:
            self.runs.log_epochs(self.run_id, self.rows)
            self.rows, self.last = [], time.monotonic()

    def take(self) -> list[dict[str, float]]:
        rows, self.rows = self.rows, []
        return rows


class Stopped(Exception):
    """SIGTERM or Ctrl-C: stop after telling Optuna and MLflow about the current trial."""


STOP = threading.Event()  # set by SIGTERM or Ctrl-C; checked between epochs and between trials


def _stop(signum: int, frame: Any) -> None:
    # A flag, not an exception: raised from a handler, an exception can land in a finalizer and be lost.
    STOP.set()


def on_stop_signals() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def threads_for(workers: int, backend_threads: int) -> int:
    """TensorFlow threads per worker: the backend's own, but no more than the cores K workers share."""
    cores = len(os.sched_getaffinity(0))
    return max(1, min(backend_threads, cores // max(workers, 1)))


def progress_line(trial: Any, study: Any, seconds: float, epochs: int) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    last = trial.intermediate_values.get(max(trial.intermediate_values)) if trial.intermediate_values else None
    if trial.value is None and last is not None:
        value = f"{last:.4f}@{max(trial.intermediate_values)}"
    try:
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "best -"
    return (
        f"trial {trial.number} {trial.state.name} val_accuracy {value} {seconds:.1f}s "
        f"({epochs} epochs) - {best} [{socket.gethostname()}:{os.getpid()}]"
    )


def work(study_name: str, workers: int = 1, threads: int | None = None, log: Callable[[str], None] = print) -> int:
    """Run trials of ``study_name`` until it has its N; the number of trials this worker ran."""
    url = storage_url()
    base = base_params()
    store.preflight(store.store()[0])
    runs: Runs | None = None

    def on_failed(study: Any, trial: Any) -> None:
        """A trial whose worker died: its child run FAILED, the trial queued again once."""
        again = retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run")
        if run_id and runs is not None:
            runs.end_trial(run_id, "FAIL", {}, "its worker stopped answering" + ("; retried" if again else ""))
        log(f"trial {trial.number} FAIL: its worker died" + (" (queued again)" if again else ""))

    storage = open_storage(url, on_stale=on_failed)
    study = load_study(storage, study_name)
    check_worker(study, base)
    space = study.user_attrs["space"]
    runs = Runs()

    from stages.lib.data import load_split  # noqa: PLC0415
    from stages.lib.training import backend_settings, background_value  # noqa: PLC0415

    first = {k: next(iter(d.values()))[0] for k, d in space["search"].items()}
    backend = backend_settings(trial_config(base, {**space["fixed"], **first})["model"])  # before TensorFlow
    n_threads = threads or threads_for(workers, backend["threads"])
    from stages.lib import model as nn  # noqa: PLC0415 - TensorFlow, once for every trial of this worker

    nn.configure(0, threads=n_threads)
    nn.tf.get_logger().setLevel("ERROR")  # each trial traces its own functions: TensorFlow's retracing warning
    data = {split: load_split(PREPARED_DIR, split) for split in ("train", "val")}
    background = background_value()
    log(
        f"worker {socket.gethostname()}:{os.getpid()}: study '{study_name}', {n_threads} thread(s), "
        f"{'XLA' if backend['jit_compile'] else 'oneDNN graph'}; storage {describe_storage(url)}"
    )

    on_stop_signals()
    done = 0
    while True:
        if STOP.is_set():
            raise Stopped("stopped between trials")
        with study_lock(url, study_name):
            fail_dead_trials(study, on_failed)
            if not pending(study):
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": see Heartbeat
                trial = study.ask()
            trial.set_user_attr("worker", worker_id())
        run_trial(study, trial, space, base, data, background, backend["jit_compile"], runs, log)
        done += 1
    return done


def run_trial(
    study: Any,
    trial: Any,
    space: Mapping[str, Any],
    base: Mapping[str, Any],
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    background: float,
    jit_compile: bool,
    runs: Runs,
    log: Callable[[str], None],
) -> Any:
    """Train one trial with the train stage's functions, report each epoch, tell Optuna and MLflow how it ended."""
    import keras  # noqa: PLC0415
    import optuna  # noqa: PLC0415

    from stages.lib import model as nn  # noqa: PLC0415
    from stages.lib.training import BatchTooLarge, TrainingDiverged, fit  # noqa: PLC0415

    started = time.monotonic()
    sp = Space(space["name"], space["fixed"], space["search"], space["pruner"], space["sampler"])
    overrides = suggest(trial, sp)
    trial.set_user_attr("overrides", overrides)
    config = trial_config(base, overrides)
    retry_of = study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
    run_id = runs.start_trial(study, trial.number, config, overrides, retry_of)
    trial.set_user_attr("mlflow_run", run_id)
    trial.set_user_attr("epochs_planned", config["train"]["epochs"])
    history: list[dict[str, float]] = []
    epochs = EpochLog(runs, run_id)

    def on_epoch(row: dict[str, float]) -> None:
        history.append(row)
        epochs.add(row)
        if STOP.is_set():
            raise Stopped(f"stopped after epoch {row['epoch']}")
        trial.report(row[OBJECTIVE], int(row["epoch"]))
        # After the last epoch there is nothing left to save: the trial is COMPLETE, whatever its value.
        if row["epoch"] < config["train"]["epochs"] and trial.should_prune():
            raise optuna.TrialPruned(f"epoch {row['epoch']}: val_accuracy {row[OBJECTIVE]:.4f} below the median")

    state, value, note = "FAIL", None, None
    with Heartbeat(study._storage, trial._trial_id):
        try:
            keras.backend.clear_session(free_memory=False)  # Keras' global state; the gc pass took 0.8 s a trial
            nn.configure(config["train"]["seed"])  # same seeds as the train stage: same weights
            model = nn.build(**config["model"])
            fit(
                model,
                data["train"],
                data["val"],
                config["train"],
                config["model"]["output"],
                log=lambda _line: None,
                background=background,
                jit_compile=jit_compile,
                on_epoch=on_epoch,
            )
            state = "COMPLETE"
            value = final_val_accuracy(model, data["val"], config, history)
        except optuna.TrialPruned as exc:
            state, note = "PRUNED", str(exc)
        except (TrainingDiverged, BatchTooLarge) as exc:
            note = str(exc)
        except (Stopped, KeyboardInterrupt) as exc:
            note = str(exc) or "stopped (Ctrl-C)"
            _finish(study, trial, runs, run_id, "FAIL", None, history, started, note, epochs.take())
            again = retry(study, study._storage.get_trial(trial._trial_id))
            log(f"trial {trial.number} FAIL: worker stopped" + (" (queued again)" if again else ""))
            raise Stopped(note) from None
        except Exception as exc:  # a bug or a resource error: this trial FAILs, not retried; the worker stops
            note = f"{type(exc).__name__}: {exc}"
            _finish(study, trial, runs, run_id, "FAIL", None, history, started, note, epochs.take())
            raise
    frozen = _finish(study, trial, runs, run_id, state, value, history, started, note, epochs.take())
    log(progress_line(frozen, study, time.monotonic() - started, len(history)))
    return frozen


def final_val_accuracy(
    model: Any, val: tuple[np.ndarray, np.ndarray], config: Mapping[str, Any], history: list[dict[str, float]]
) -> float:
    """The objective: the trained model's accuracy on the validation split, as the evaluate stage computes it.

    Without early stopping that is the last epoch's (the same weights, the same function); with it, ``fit``
    restored the best epoch's weights, which are evaluated again.
    """
    if not config["train"]["early_stopping_patience"]:
        return history[-1][OBJECTIVE]
    from stages.lib import model as nn  # noqa: PLC0415

    labels, output = config["train"]["labels"], config["model"]["output"]
    _, accuracy, _ = nn.evaluate(model, val[0], nn.encode_labels(val[1], labels), nn.loss_function(labels, output))
    return accuracy


def _finish(
    study: Any,
    trial: Any,
    runs: Runs,
    run_id: str,
    state: str,
    value: float | None,
    history: list[dict[str, float]],
    started: float,
    note: str | None,
    rows: list[dict[str, float]],
) -> Any:
    import optuna  # noqa: PLC0415

    seconds = time.monotonic() - started
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("epochs_run", len(history))
    trial.set_user_attr("train_seconds", sum(r["seconds"] for r in history))
    metrics = {"trial_seconds": seconds, "epochs_run": len(history)}
    if value is not None:
        metrics[f"final_{OBJECTIVE}"] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if state == "COMPLETE":
            frozen = study.tell(trial, value)
        else:
            frozen = study.tell(trial, state=getattr(optuna.trial.TrialState, state))
    runs.end_trial(run_id, state, metrics, note, rows)
    return frozen


# --- the study's end: summary and figures -------------------------------------------------------


def summary(
    study: Any, since: datetime.datetime | None = None, wall_seconds: float | None = None, workers: int | None = None
) -> dict[str, float]:
    """Counts and best value (the whole study); epochs run and saved by pruning, trials per hour and the share
    of the workers' time spent outside training (the trials that started ``since``, over ``wall_seconds``)."""
    import optuna  # noqa: PLC0415

    state = optuna.trial.TrialState
    trials = counted(study.get_trials(deepcopy=False))
    out: dict[str, float] = {
        "trials_complete": sum(t.state == state.COMPLETE for t in trials),
        "trials_pruned": sum(t.state == state.PRUNED for t in trials),
        "trials_failed": sum(t.state == state.FAIL for t in trials),
    }
    if out["trials_complete"]:
        out[f"best_{OBJECTIVE}"] = study.best_value
        out["best_trial"] = study.best_trial.number
    recent = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and (since is None or (t.datetime_start and t.datetime_start >= since))
    ]
    out["epochs_run"] = sum(t.user_attrs.get("epochs_run", 0) for t in recent)
    out["epochs_saved_by_pruning"] = sum(
        t.user_attrs.get("epochs_planned", 0) - t.user_attrs.get("epochs_run", 0)
        for t in recent
        if t.state == state.PRUNED
    )
    train = sum(t.user_attrs.get("train_seconds", 0.0) for t in recent)
    out["train_seconds"] = train
    if wall_seconds and workers:
        out["wall_seconds"] = wall_seconds
        out["trials_per_hour"] = len(recent) * 3600 / wall_seconds
        out["share_outside_training"] = max(0.0, 1 - train / (wall_seconds * workers))
    return out


def draw_figures(study: Any, directory: Path) -> list[str]:
    """Optuna's own plots (matplotlib): optimization history, intermediate values, parameter importances;
    and the best trials as a table (pandas' table plot). Returns the files written."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import optuna  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {
        "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history,
        "intermediate_values.png": optuna.visualization.matplotlib.plot_intermediate_values,
        "param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in plots.items():
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need 2+ complete trials
                continue
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(directory / name, dpi=100)
            plt.close(figure)
            written.append(name)
        frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
        if len(frame):
            frame.to_csv(directory / "trials.csv", index=False)
            written.append("trials.csv")
            best = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=False).head(10)
            if len(best):
                best = best.assign(duration=best["duration"].dt.total_seconds().round(1))
                best.columns = [c.removeprefix("params_") for c in best.columns]
                best = best.drop(columns=["state"]).rename(columns={"value": OBJECTIVE, "duration": "seconds"})
                best = best.round(5)
                figure, ax = plt.subplots(figsize=(min(3 + 1.6 * len(best.columns), 24), 0.9 + 0.3 * len(best)))
                ax.axis("off")
                table = pd.plotting.table(ax, best, loc="center", cellLoc="center")
                table.auto_set_font_size(False)
                table.set_fontsize(8)
                ax.set_title(f"study {study.study_name}: best trials by {OBJECTIVE}")
                figure.tight_layout()
                figure.savefig(directory / "best_trials.png", dpi=100)
                plt.close(figure)
                written.append("best_trials.png")
    return written


# --- the commands -------------------------------------------------------------------------------


def start_workers(study_name: str, workers: int, threads: int | None) -> list[subprocess.Popen]:
    """K ``tune worker`` processes (the code ``make tune-worker`` runs), each in its own session so that
    a Ctrl-C reaches them once, from here."""
    command = [sys.executable, "-m", "stages.tools.tune", "worker", "--study", study_name, "--workers", str(workers)]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        for _ in range(workers)
    ]


class Relay:
    """Copy the workers' lines to our output; on a terminal, with a bar of finished trials under them."""

    def __init__(self, procs: list[subprocess.Popen], total: int, done: int, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, initial=done, unit="trial", desc="study", file=self.stream)
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._copy, args=(p, i), daemon=True) for i, p in enumerate(procs, start=1)
        ]
        for thread in self.threads:
            thread.start()

    def _copy(self, proc: subprocess.Popen, index: int) -> None:
        for line in proc.stdout:
            with self.lock:
                text = f"[worker {index}] {line.rstrip()}"
                if self.bar is None:
                    print(text, file=self.stream, flush=True)
                    continue
                self.bar.write(text)
                if line.startswith("trial ") and " FAIL: " not in line:
                    self.bar.update(1)

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=10)
        if self.bar is not None:
            self.bar.close()


def wait_for_workers(procs: list[subprocess.Popen]) -> bool:
    """Wait for the workers; on SIGTERM or Ctrl-C, stop them (each tells Optuna and MLflow). Whether stopped."""
    on_stop_signals()
    try:
        while any(p.poll() is None for p in procs):
            if STOP.is_set():
                raise Stopped
            time.sleep(0.5)
        return False
    except (Stopped, KeyboardInterrupt):
        print("tune: stopping the workers after their current epoch (each ends its trial in Optuna and MLflow)")
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
            if proc.poll() is None:  # its trial is found dead and queued again by the next process
                proc.kill()
                proc.wait()
        return True


def wait_for_others(study: Any, on_failed: Callable, url: str | None, poll_s: float = 5.0) -> None:
    """Trials still running on other machines' workers: wait for them to end (or to be found dead)."""
    import optuna  # noqa: PLC0415

    said = 0.0
    while True:
        with study_lock(url, study.study_name):
            fail_dead_trials(study, on_failed)
        active = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not active:
            return
        if time.monotonic() - said > 30:
            print(f"tune: waiting for {len(active)} trial(s) on other workers: {[t.number for t in active]}")
            said = time.monotonic()
        time.sleep(poll_s)


def run(
    study_name: str,
    trials: int,
    workers: int,
    space_name: str,
    threads: int | None = None,
    space_file: Path = SPACE_FILE,
) -> int:
    """``make tune``: validate, create or continue the study, run K workers, then figures and summary."""
    if trials < 1:
        raise TuneError(f"TRIALS must be at least 1, got {trials}")
    if workers < 1:
        raise TuneError(f"WORKERS must be at least 1, got {workers}")
    base = base_params()
    space = load_space(space_name, base, space_file)
    data_digest()
    url = storage_url()

    def on_failed(study: Any, trial: Any) -> None:
        again = retry(study, trial)
        if trial.user_attrs.get("mlflow_run"):
            runs.end_trial(trial.user_attrs["mlflow_run"], "FAIL", {}, "its worker stopped answering")
        print(f"tune: trial {trial.number} FAIL: its worker died" + (" (queued again)" if again else ""))

    storage = open_storage(url, on_stale=on_failed)
    store.preflight(store.store()[0])
    study = create_or_continue(storage, study_name, space, trials, base)
    runs = Runs()
    parent = runs.parent(study, space, trials)
    existing = len(counted(study.get_trials(deepcopy=False)))
    print(
        f"tune: study '{study_name}' (space {space.name}) in {describe_storage(url)}: {existing} of {trials} "
        f"trials exist; {workers} worker(s); MLflow {redact.uri(runs.uri)} experiment {EXPERIMENT}, run {parent}"
    )

    since = datetime.datetime.now()  # Optuna's trial times are naive local times
    started = time.monotonic()
    procs = start_workers(study_name, workers, threads)
    relay = Relay(procs, trials, min(existing, trials))
    killed = wait_for_workers(procs)
    relay.close()
    if not killed:
        # A worker that died (SIGKILL, out of memory) left its trial RUNNING: fail it, and run what is left.
        with study_lock(url, study_name):
            fail_dead_trials(study, on_failed)
        if pending(study) and any(p.returncode != 0 for p in procs):
            print("tune: a worker ended early; one more worker runs what is left", file=sys.stderr)
            procs = start_workers(study_name, 1, threads)
            relay = Relay(procs, trials, 0, stream=_Plain(sys.stdout))
            killed = wait_for_workers(procs)
            relay.close()
    if not killed:
        wait_for_others(study, on_failed, url)
    wall = time.monotonic() - started
    facts = summary(study, since, wall, workers)
    figures = TUNE_DIR / "figures" / study_name
    written = draw_figures(study, figures)
    runs.end_study(parent, facts, figures if written else None, killed)
    print("tune: " + ", ".join(f"{k} {_fmt(v)}" for k, v in facts.items()))
    if written:
        print(f"tune: figures ({', '.join(written)}) in {figures} and on MLflow run {parent}")
    if "best_trial" in facts and not killed:
        print(f"tune: promote the best trial with `make tune-best STUDY={study_name}`")
    return 130 if killed else 0


class _Plain:
    """A stream that is not a terminal (no second bar)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def best(study_name: str, dry_run: bool = False) -> int:
    """``make tune-best``: the best trial's overrides through ``dvc exp run -n tune-<study>``."""
    study = load_study(open_storage(storage_url()), study_name)
    try:
        winner = study.best_trial
    except ValueError:
        raise TuneError(f"study '{study_name}' has no complete trial yet") from None
    overrides = winner.user_attrs["overrides"]
    trial_config(base_params(), overrides)  # still a valid override of today's params.yaml
    command = exp_run_command(study_name, overrides)
    print(f"tune-best: trial {winner.number} of '{study_name}', val_accuracy {winner.value:.4f}: {' '.join(command)}")
    if dry_run:
        return 0
    result = subprocess.run(command)
    if result.returncode != 0:
        return result.returncode
    metrics = json.loads(Path("reports/metrics.json").read_text())
    print(
        f"tune-best: dvc exp run tune-{study_name}: val_accuracy {metrics['val_accuracy']:.4f} "
        f"(trial {winner.value:.4f}), test_accuracy {metrics['test_accuracy']:.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="create or continue a study and run K workers on it (make tune)")
    run_p.add_argument("--study", required=True)
    run_p.add_argument("--trials", type=int, required=True, help="the study's number of trials (all workers)")
    run_p.add_argument("--workers", type=int, default=1)
    run_p.add_argument("--space", default="dense", help="a space of tune.yaml (default: dense)")
    run_p.add_argument("--threads", type=int, default=None, help="TensorFlow threads per worker (default: cores/K)")
    run_p.add_argument("--space-file", type=Path, default=SPACE_FILE, help="where the spaces are (default: tune.yaml)")
    worker_p = commands.add_parser("worker", help="join an existing study (make tune-worker)")
    worker_p.add_argument("--study", required=True)
    worker_p.add_argument("--workers", type=int, default=1, help="workers on this machine (sets threads)")
    worker_p.add_argument("--threads", type=int, default=None)
    best_p = commands.add_parser("best", help="the best trial as a DVC experiment (make tune-best)")
    best_p.add_argument("--study", required=True)
    best_p.add_argument("--dry-run", action="store_true", help="print the dvc exp run command only")
    args = parser.parse_args(argv)
    name = f"tune{'-' + args.command if args.command != 'run' else ''}"
    try:
        if not args.study.strip():
            raise TuneError("STUDY must not be empty")
        if args.command == "run":
            return run(args.study, args.trials, args.workers, args.space, args.threads, args.space_file)
        if args.command == "worker":
            try:
                ran = work(args.study, args.workers, args.threads)
            except (Stopped, KeyboardInterrupt):
                return 130
            print(f"worker: study '{args.study}' has its trials; this worker ran {ran}")
            return 0
        return best(args.study, args.dry_run)
    except (TuneError, schema.ParamsError, store.TrackingError) as exc:
        print(f"{name}: error: {redact.text(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        leave_out(*KERAS_EXTRAS)  # a worker trains only; figures are drawn by `run`
    finish(main())
