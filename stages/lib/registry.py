"""The model registry: every logged model is a version of ``mnist-classifier``; ``champion`` is the best.

The rule for the ``champion`` alias: the version with the highest
``val_accuracy`` (the validation split; the test split is never used to
choose) among the versions whose run is FINISHED. A new version takes the
alias only when its ``val_accuracy`` is strictly higher than the current
champion's, or equal with an ONNX form that the champion lacks (the light
runtime can then serve it); otherwise, on a tie, the champion keeps it (it was
there first). Clients use
``models:/mnist-classifier@champion``.

A version is created only once its run is FINISHED with every artifact, and
one served model (same weights, serving config, code and requirements) is
never two versions.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.error
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.lib import claims, redact, stopping, store
from stages.lib.paths import PARAMS_FILE

MODEL_NAME = "mnist-classifier"  # MNIST's; another data set's is model_name(fetch.name)
CHAMPION = "champion"
SCORE_TAG = "val_accuracy"


def model_name(dataset: str) -> str:
    """The registered model of a data set (``fetch.name``): results on different data are never compared."""
    return f"{dataset}-classifier"


def dataset_name(params_path: Path = PARAMS_FILE) -> str:
    """The data set ``params_path`` names (``fetch.name``, validated: a ``ParamsError`` says what is wrong): its
    MLflow experiment."""
    from stages.params import fetch, schema  # noqa: PLC0415

    return str(schema.load(fetch, path=params_path)["fetch"]["name"])


def champion_uri(params_path: Path = PARAMS_FILE) -> str:
    """``models:/<name>-classifier@champion`` of the data set ``params_path`` names (validated, as
    ``dataset_name``): what ``make serve`` and ``make demo`` serve by default, given the project's
    ``params.yaml`` wherever they are started; the notebook's champion (from the repository root)."""
    return f"models:/{model_name(dataset_name(params_path))}@{CHAMPION}"


def describe(uri: str, store_uri: str) -> str:
    """Which model a URI names: a registry URI with its version, kind and val_accuracy (from ``store_uri``);
    otherwise the URI, redacted."""
    if not uri.startswith("models:/"):
        return redact.uri(uri)
    import mlflow  # noqa: PLC0415

    name_part = uri.removeprefix("models:/")
    client = mlflow.MlflowClient(store_uri)
    try:
        if "@" in name_part:
            name, alias = name_part.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = name_part.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except Exception:  # latest/stage URIs and the like: say the URI, the model itself loaded
        return uri
    tags = version.tags
    details = [tags[key] for key in ("model.kind",) if key in tags]
    with contextlib.suppress(KeyError, ValueError):  # a tag edited by hand says nothing rather than fail
        details.append(f"{SCORE_TAG} {float(tags[SCORE_TAG]):.4f}")
    return f"{uri}: version {version.version}" + (f" ({', '.join(details)})" if details else "")


@dataclass(frozen=True)
class Decision:
    champion: int | None  # the version that holds the alias afterwards (None: no finished version)
    previous: int | None  # the version that held it before, if any
    message: str


def _at(version: int, scores: Mapping[int, float]) -> str:
    return f"version {version} ({SCORE_TAG} {scores[version]:.4f})"


def decide(
    new: int | None,
    scores: Mapping[int, float],
    current: int | None,
    last: int | None = None,
    portable: Set[int] = frozenset(),
) -> Decision:
    """Who is champion once version ``new`` (None: nothing new, only a check) is there, given every FINISHED
    version's score, the version the alias points at, and ``last``, the version this rule last made champion.

    With an alias in place, the candidates are the champion and every version
    registered after it (normally just ``new``; more when several experiments
    registered at once, or a version was never judged): the highest score
    wins; on a tie, a version with an ONNX form (``portable``) over one without,
    then the oldest. Versions older than the champion are not
    reconsidered, so an alias a person set by hand stays until a later version
    beats it. Without an alias (never set, lost to a failure, or its version
    deleted), every FINISHED version is a candidate.
    """
    if current not in scores:
        current = None
    if not scores:
        return Decision(None, None, f"no version whose run is FINISHED: no {CHAMPION}")
    floor = min(scores) if current is None else current

    def rank(version: int) -> tuple[float, bool]:
        return scores[version], version in portable

    best = max(sorted(v for v in scores if v >= floor), key=rank)  # max keeps the oldest of equals
    if current is None:
        if last is not None and last not in scores:
            message = f"version {last}, the {CHAMPION}, is gone: {_at(best, scores)} is the best remaining"
        elif len(scores) == 1 and last is None:
            message = f"{_at(best, scores)} is the first {CHAMPION}"
        else:
            message = f"no version held the {CHAMPION} alias: {_at(best, scores)} is the best of {len(scores)}"
        return Decision(best, None, message)
    if new is None or new not in scores:
        if best == current:
            return Decision(best, current, f"{_at(current, scores)} stays the {CHAMPION}")
        return Decision(
            best, current, f"{_at(best, scores)} is the new {CHAMPION}, was version {current} ({scores[current]:.4f})"
        )
    score = scores[new]
    if best == new == current:  # judged again: its publisher stopped before it could record that
        message = f"{_at(new, scores)} is the {CHAMPION} already"
    elif best == new:
        message = f"{_at(new, scores)} is the new {CHAMPION}, was version {current} ({scores[current]:.4f})"
        if score == scores[current]:
            message += ": the same score, and it answers without TensorFlow (ONNX form)"
    elif best == current:
        rule = "a tie keeps the champion" if rank(new) == rank(current) else "it must be higher to take over"
        message = (
            f"{_at(new, scores)} is not the {CHAMPION}: version {current} keeps it with {scores[current]:.4f} ({rule})"
        )
    else:
        message = f"{_at(new, scores)} is not the {CHAMPION}: {_at(best, scores)}, registered at the same time, is"
    return Decision(best, current, message)


MODEL_KEY_TAG = "pipeline.model"  # the served model's identity (stages.lib.identity.model_key)
ONNX_TAG = "pipeline.onnx"  # the sha256 of the version's ONNX form, when it has one
ATTEMPT_TAG = "pipeline.attempt"  # the registering process's claim token: finds a retried request's duplicate
# On the registered model: the version this rule last made champion, and the newest version it has judged.
CHAMPION_TAG = "pipeline.champion"
JUDGED_TAG = "pipeline.judged"


def _run_status(client: Any, run_ids: set[str]) -> dict[str, str]:
    """The status of each run in ``run_ids`` (absent when the run is deleted or unknown)."""
    status: dict[str, str] = {}
    ids = sorted(run_ids)
    for start in range(0, len(ids), 100):
        chunk = ", ".join(f"'{r}'" for r in ids[start : start + 100])
        experiments = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(experiments, f"attributes.run_id IN ({chunk})", max_results=1000):
            status[run.info.run_id] = run.info.status
    return status


def versions(client: Any, model: str = MODEL_NAME) -> list[Any]:
    """Every version of the registered model, whatever its run's state."""
    return list(client.search_model_versions(f"name = '{model}'"))


def finished_versions(client: Any, every: list[Any] | None = None, model: str = MODEL_NAME) -> list[Any]:
    """Every version of ``mnist-classifier`` whose run is FINISHED: the only ones that may be champion."""
    every = versions(client, model) if every is None else every
    status = _run_status(client, {v.run_id for v in every if v.run_id})
    return [v for v in every if v.run_id and status.get(v.run_id) == "FINISHED"]


def _version_of(client: Any, model_key: str, model: str = MODEL_NAME) -> int | None:
    for version in finished_versions(client, model=model):
        if version.tags.get(MODEL_KEY_TAG) == model_key:
            return int(version.version)
    return None


def register(
    client: Any,
    model_uri: str,
    model_id: str | None,
    run_id: str,
    model_key: str,
    tags: Mapping[str, str],
    model: str = MODEL_NAME,
):
    """The version of ``mnist-classifier`` for the logged model: an existing one with the same model key
    (same weights, serving config, code and requirements) whose run is FINISHED, or a new one.

    Creating a version holds the model key's claim (``stages.lib.claims``), so
    two publishers of one served model, on any hosts, make one version; a
    creation request that MLflow's client retried after the store had already
    committed it leaves one version too. Call only once the run is FINISHED.
    Returns (version number, whether it is new).
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    existing = _version_of(client, model_key, model)
    if existing is not None:
        return existing, False
    try:
        client.create_registered_model(model)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    claim = claims.acquire(client, model, "version", model_key, done=lambda: _version_of(client, model_key, model))
    if claim is None:  # registered by another publisher meanwhile
        return _version_of(client, model_key, model), False
    with claim.holding():
        existing = _version_of(client, model_key, model)
        if existing is not None:
            return existing, False
        if claim.lost():  # fenced: whoever took this over registers the served model
            raise RuntimeError("another publish took the registration of this served model over")
        stopping.stop_if_signalled()
        created = client.create_model_version(
            model,
            model_uri,
            run_id=run_id,
            tags={**tags, MODEL_KEY_TAG: model_key, ATTEMPT_TAG: claim.token},
            await_creation_for=0,
            model_id=model_id,
        )
        for version in versions(client, model):  # a retried request's first, committed creation
            if version.tags.get(ATTEMPT_TAG) == claim.token and str(version.version) != str(created.version):
                client.delete_model_version(model, version.version)
        return int(created.version), True


def scores(client: Any, every: list[Any] | None = None, model: str = MODEL_NAME) -> dict[int, float]:
    """``val_accuracy`` of every version whose run is FINISHED."""
    finished = finished_versions(client, every, model)
    return {int(v.version): float(v.tags[SCORE_TAG]) for v in finished if SCORE_TAG in v.tags}


def portable(every: list[Any]) -> set[int]:
    """The versions among ``every`` that carry an ONNX form."""
    return {int(v.version) for v in every if v.tags.get(ONNX_TAG)}


def current_champion(client: Any, model: str = MODEL_NAME) -> int | None:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return int(client.get_model_version_by_alias(model, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _model_tag(client: Any, key: str, model: str = MODEL_NAME) -> str | None:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return client.get_registered_model(model).tags.get(key)
    except MlflowException:
        return None


def update_champion(client: Any, new: int | None, attempts: int = 10, model: str = MODEL_NAME) -> Decision:
    """Apply ``decide`` to the registry, then re-read: another publisher may have registered or moved the
    alias meanwhile (a stale write included), so decide again until the alias holds the best FINISHED version
    and nothing changed in between. ``new``: the version just registered, or None to judge what is there
    (a version whose publisher stopped before judging it, a lost alias, a deleted champion).

    Records on the registered model which version it made champion and the newest version it has judged,
    so that a later publish can tell, without MLflow, whether anything waits to be judged (``needs_judging``).
    """
    last = _model_tag(client, CHAMPION_TAG, model)
    last_version = int(last) if last and last.isdigit() else None
    decision = None
    for _ in range(attempts):
        stopping.stop_if_signalled()
        current = current_champion(client, model)
        every = versions(client, model)
        before = scores(client, every, model)
        decision = decide(new, before, current, last_version, portable(every))
        if decision.champion is not None and decision.champion != current:
            client.set_registered_model_alias(model, CHAMPION, str(decision.champion))
        if scores(client, model=model) == before and current_champion(client, model) == decision.champion:
            if decision.champion is not None:
                client.set_registered_model_tag(model, CHAMPION_TAG, str(decision.champion))
            newest = max((int(v.version) for v in every), default=0)
            client.set_registered_model_tag(model, JUDGED_TAG, str(newest))
            return decision
        time.sleep(0.2)
    raise RuntimeError(
        f"the {CHAMPION} alias did not settle after {attempts} attempts (other publishers kept moving it)"
    )


# --- is there anything to judge? (no MLflow import: the fast path of a publish that logs nothing) -----


def needs_judging(uri: str, environ: Mapping[str, str] | None = None, model: str = MODEL_NAME) -> bool:
    """Whether the registry holds a version no publish has judged, or lacks its ``champion`` alias
    (lost to a failure, or its version deleted). True when it cannot tell: the slow path then checks."""
    try:
        if uri.startswith("sqlite:///"):
            state = _state_sqlite(Path(uri.removeprefix("sqlite:///")), model)
        elif store.is_server(uri):
            state = _state_rest(uri, os.environ if environ is None else environ, model)
        else:
            return True
    except (sqlite3.Error, urllib.error.URLError, OSError, ValueError, KeyError):
        return True
    if state is None:  # no registered model: nothing to judge
        return False
    newest, judged, alias = state
    return alias is None or not judged.isdigit() or newest > int(judged)


def _state_sqlite(db: Path, model: str) -> tuple[int, str, str | None] | None:
    if not db.exists():
        return None
    query = """
        SELECT (SELECT MAX(version) FROM model_versions WHERE name = :m AND current_stage != 'Deleted_Internal'),
               (SELECT value FROM registered_model_tags WHERE name = :m AND key = :judged),
               (SELECT version FROM registered_model_aliases WHERE name = :m AND alias = :alias)
    """
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as con:
        newest, judged, alias = con.execute(query, {"m": model, "judged": JUDGED_TAG, "alias": CHAMPION}).fetchone()
    if newest is None:
        return None
    return int(newest), judged or "", alias


def _state_rest(uri: str, environ: Mapping[str, str], model: str) -> tuple[int, str, str | None] | None:
    try:
        found = store.rest(uri, "registered-models/get", environ, query={"name": model})["registered_model"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    newest = max((int(v["version"]) for v in found.get("latest_versions", [])), default=None)
    if newest is None:
        return None
    tags = {t["key"]: t.get("value", "") for t in found.get("tags", [])}
    aliases = {a["alias"]: a["version"] for a in found.get("aliases", [])}
    return newest, tags.get(JUDGED_TAG, ""), aliases.get(CHAMPION)
