"""Where a study lives (Optuna's storage), what it starts from, and the lock around asking for a trial.

``TUNE_STORAGE`` names an RDB storage (a SQLAlchemy URL: the team's
PostgreSQL, with Optuna's heartbeat on); without it, a study lives in
Optuna's journal file ``.tune/optuna.journal``, which several processes on
one machine share safely. A study records the space it searches, the model
and train params its trials start from and the digest of the prepared data:
a worker whose checkout differs is refused, since its trials would mean
something else. ``study_lock`` lets one process at a time count a study's
trials and ask for the next, so that a study of N trials ends with N.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stages.lib import redact, tracking
from stages.lib.data import read_stats
from stages.lib.paths import STATS_PATH
from stages.params import schema
from stages.tools.tune import TuneError
from stages.tools.tune.liveness import counted
from stages.tools.tune.space import SECTIONS, Space

TUNE_DIR = Path(".tune")
JOURNAL = TUNE_DIR / "optuna.journal"
HEARTBEAT_S = 10  # RDB storages: a trial whose worker is silent for GRACE_S ends FAIL
GRACE_S = 40


def storage_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``TUNE_STORAGE``, or None for the journal file."""
    environ = os.environ if environ is None else environ
    return environ.get("TUNE_STORAGE") or None


def describe_storage(url: str | None) -> str:
    return str(JOURNAL) if url is None else redact.uri(url)


def open_storage(url: str | None, on_stale: Callable | None = None, create: bool = True) -> Any:
    """Optuna's storage: the journal file, or an RDB (heartbeat on) at ``url``; a one-line error if unusable.

    ``create=False`` (a worker, ``tune-best``: they read a study that must exist): a journal or SQLite file that
    is not there yet is read as an empty storage, and nothing is created.
    """
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url is None:
        if not create and not JOURNAL.exists():
            return optuna.storages.InMemoryStorage()
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # noqa: PLC0415

        TUNE_DIR.mkdir(exist_ok=True)
        path = str(JOURNAL)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    try:
        if not create and not _sqlite_file_exists(url):
            return optuna.storages.InMemoryStorage()
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=on_stale,
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )
    except Exception as exc:  # SQLAlchemy's errors (driver, DNS, refused, auth) all mean: cannot use it
        reason = redact.first_line(exc)
        if "revision" in reason:  # another program's alembic_version table (MLflow's database, say)
            reason += " - Optuna needs a database of its own (MLflow's cannot be shared)"
        raise TuneError(f"storage {describe_storage(url)} is unusable: {reason[:300]}") from None


def _sqlite_file_exists(url: str) -> bool:
    """Whether a SQLite storage's file is there (in memory, or a server's database: taken as there); SQLite's
    ``file:`` URI form (``?uri=true``) included."""
    if not url.startswith("sqlite"):
        return True
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.query.get("uri") == "true" and database.startswith("file:"):
        database = database.removeprefix("file:").split("?")[0]
        if "memory" in str(parsed.query.get("mode")):
            return True
    return database in ("", ":memory:") or Path(database).exists()


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
        return read_stats(stats_path)["sha256"]
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
            "check out the study's commit, and `git restore params.yaml` if an experiment left its values there"
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
