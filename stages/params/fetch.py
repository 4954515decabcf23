"""The ``fetch`` section: where the raw MNIST files come from.

None of these keys can change the result: whichever source answers, the four
files must match the same sha256 digests, so the data digest identifies the
data and ``effective`` keeps nothing.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from stages.params.schema import ParamsError, Schema, Spec, choice, integer, list_of, number, text

NAME = "fetch"
SOURCES = ("keras", "kaggle", "npm", "local")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def secure_url() -> Spec:
    """An https URL; plain http only for this machine (a local mirror or a test server)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        parts = urllib.parse.urlsplit(value)
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK)
        ):
            raise ValueError
        return value

    return Spec("an https:// URL (credentials are sent to it; http:// only for 127.0.0.1)", check)


SCHEMA: Schema = {
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


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    return {}
