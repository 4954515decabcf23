"""The model registry: every logged model is a version of ``mnist-classifier``; ``champion`` is the best.

The rule for the ``champion`` alias: the version with the highest
``val_accuracy`` (the validation split; the test split is never used to
choose) among the versions whose run is FINISHED. A new version takes the
alias only when its ``val_accuracy`` is strictly higher than the current
champion's: on a tie the champion keeps it (it was there first). Clients use
``models:/mnist-classifier@champion``.

A version is created only once its run is FINISHED with every artifact, and
one served model (same weights, serving config, code and requirements) is
never two versions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODEL_NAME = "mnist-classifier"
CHAMPION = "champion"
SCORE_TAG = "val_accuracy"


@dataclass(frozen=True)
class Decision:
    champion: int  # the version that holds the alias afterwards
    previous: int | None  # the version that held it before, if any
    message: str


def decide(new: int, scores: Mapping[int, float], current: int | None) -> Decision:
    """Who is champion after version ``new`` arrives, given every version's score and the current champion.

    The candidates are the current champion and every version registered after
    it (normally just ``new``; more when several experiments registered at
    once): the highest score wins, the oldest on a tie. Versions older than the
    champion are not reconsidered, so an alias a person set by hand stays
    until a later version beats it.
    """
    score = scores[new]
    if current not in scores:
        current = None
    floor = new if current is None else current
    best = max(sorted(v for v in scores if v >= floor), key=lambda v: scores[v])  # max keeps the oldest of equals
    if current is None:
        return Decision(best, None, f"version {best} ({SCORE_TAG} {scores[best]:.4f}) is the first champion")
    if best == new:
        message = (
            f"version {new} ({SCORE_TAG} {score:.4f}) is the new champion, "
            f"was version {current} ({scores[current]:.4f})"
        )
    elif best == current:
        rule = "a tie keeps the champion" if score == scores[current] else "it must be higher to take over"
        message = (
            f"version {new} ({SCORE_TAG} {score:.4f}) is not the champion: version {current} keeps it "
            f"with {scores[current]:.4f} ({rule})"
        )
    else:
        message = (
            f"version {new} ({SCORE_TAG} {score:.4f}) is not the champion: version {best} "
            f"({scores[best]:.4f}), registered at the same time, is"
        )
    return Decision(best, current, message)


MODEL_KEY_TAG = "pipeline.model"  # the served model's identity (stages.lib.identity.model_key)


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


def finished_versions(client: Any) -> list[Any]:
    """Every version of ``mnist-classifier`` whose run is FINISHED: the only ones that may be champion."""
    versions = list(client.search_model_versions(f"name = '{MODEL_NAME}'"))
    status = _run_status(client, {v.run_id for v in versions if v.run_id})
    return [v for v in versions if v.run_id and status.get(v.run_id) == "FINISHED"]


def register(client: Any, model_uri: str, model_id: str | None, run_id: str, model_key: str, tags: Mapping[str, str]):
    """The version of ``mnist-classifier`` for the logged model: an existing one with the same model key
    (same weights, serving config, code and requirements) whose run is FINISHED, or a new one.

    Call only once the run is FINISHED. Returns (version number, whether it is new).
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    for version in finished_versions(client):
        if version.tags.get(MODEL_KEY_TAG) == model_key:
            return int(version.version), False
    try:
        client.create_registered_model(MODEL_NAME)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    created = client.create_model_version(
        MODEL_NAME,
        model_uri,
        run_id=run_id,
        tags={**tags, MODEL_KEY_TAG: model_key},
        await_creation_for=0,
        model_id=model_id,
    )
    return int(created.version), True


def scores(client: Any) -> dict[int, float]:
    """``val_accuracy`` of every version whose run is FINISHED."""
    return {int(v.version): float(v.tags[SCORE_TAG]) for v in finished_versions(client) if SCORE_TAG in v.tags}


def current_champion(client: Any) -> int | None:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return int(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def update_champion(client: Any, new: int, attempts: int = 10) -> Decision:
    """Apply ``decide`` to the registry, then re-read: another publisher may have registered or moved the
    alias meanwhile (a stale write included), so decide again until the alias holds the best FINISHED version
    and nothing changed in between."""
    decision = None
    for _ in range(attempts):
        current = current_champion(client)
        before = scores(client)
        decision = decide(new, before, current)
        if decision.champion != current:
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(decision.champion))
        if scores(client) == before and current_champion(client) == decision.champion:
            return decision
        time.sleep(0.2)
    raise RuntimeError(
        f"the {CHAMPION} alias did not settle after {attempts} attempts (other publishers kept moving it)"
    )
