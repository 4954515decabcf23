"""The model registry: every logged model is a version of ``mnist-classifier``; ``champion`` is the best.

The rule for the ``champion`` alias: the version with the highest
``val_accuracy`` (the validation split; the test split is never used to
choose). A new version takes the alias only when its ``val_accuracy`` is
strictly higher than the current champion's: on a tie the champion keeps it
(it was there first). Clients use ``models:/mnist-classifier@champion``.
"""

from __future__ import annotations

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


def register(model_uri: str, tags: Mapping[str, str]) -> int:
    """A new version of ``mnist-classifier`` for the logged model at ``model_uri``; its number.

    Uses the store of ``mlflow.set_tracking_uri`` (``models:/m-...`` URIs are resolved there).
    """
    import mlflow  # noqa: PLC0415

    return int(mlflow.register_model(model_uri, MODEL_NAME, tags=dict(tags)).version)


def scores(client: Any) -> dict[int, float]:
    """``val_accuracy`` of every version that has one."""
    found = {}
    for version in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        if SCORE_TAG in version.tags:
            found[int(version.version)] = float(version.tags[SCORE_TAG])
    return found


def current_champion(client: Any) -> int | None:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return int(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def update_champion(client: Any, new: int, attempts: int = 3) -> Decision:
    """Apply ``decide`` to the registry; re-check so that concurrent registrations settle on the best."""
    decision = None
    for _ in range(attempts):
        current = current_champion(client)
        before = scores(client)
        decision = decide(new, before, current)
        if decision.champion != current:
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(decision.champion))
        # Another process may have registered a version meanwhile: decide again with it.
        if scores(client).keys() == before.keys() and current_champion(client) == decision.champion:
            break
    return decision
