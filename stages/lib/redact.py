"""One redaction for every URI or message that may carry a secret.

Tracking URIs, database URIs, DVC remotes and git remotes often hold
credentials: ``http://alice:s3cret@host``, ``postgresql://mlflow:pw@db/mlflow``,
``https://TOKEN@github.com/org/repo``, ``https://host/x?token=…``. Whatever the
project prints, logs, raises or tags goes through ``uri`` (one URI) or
``text`` (a message that may contain URIs and the values of secret environment
variables), so a secret never reaches a terminal, a CI log or a shared server.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping

MASK = "***"
# Query parameters whose values are credentials (matched as substrings, any case).
SECRET_QUERY_KEYS = ("token", "key", "secret", "password", "passwd", "pwd", "signature", "sig", "credential", "auth")
# Environment variables whose values are credentials: their values are masked wherever they appear in a message.
SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_BACKEND_URI",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "KAGGLE_KEY",
    "TUNE_STORAGE",
    "PGPASSWORD",
)
_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def uri(value: str) -> str:
    """``value`` with its user-info (``user:password@``) and secret query values masked.

    ``http://alice:s3cret@host:5000/x?token=abc&page=2`` ->
    ``http://***@host:5000/x?token=***&page=2``. Anything that does not parse
    as a URI with a network location is returned unchanged.
    """
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:  # e.g. an invalid port or bracket: mask everything before the host to be safe
        return re.sub(r"//[^/@]*@", f"//{MASK}@", value)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_secret_key(k) for k, _ in pairs):
            query = "&".join(f"{k}={MASK if _secret_key(k) else v}" for k, v in pairs)
    if netloc == parts.netloc and query == parts.query:
        return value
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_key(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_QUERY_KEYS)


def text(message: str, environ: Mapping[str, str] | None = None) -> str:
    """``message`` with every URI in it redacted and the values of secret environment variables masked."""
    environ = os.environ if environ is None else environ
    out = _URI.sub(lambda m: uri(m.group(0)), str(message))
    for name in SECRET_ENV:
        value = environ.get(name, "")
        if len(value) >= 4:  # a short value would mask ordinary words
            secret_parts = {value}
            if "://" in value:  # a secret URI: its password and user-info on their own, too
                netloc = urllib.parse.urlsplit(value).netloc if _parses(value) else ""
                userinfo = netloc.rpartition("@")[0]
                secret_parts |= {p for p in (userinfo, userinfo.partition(":")[2]) if len(p) >= 4}
                secret_parts.discard(value)  # the URI itself was redacted above, its host may stay
            for secret in sorted(secret_parts, key=len, reverse=True):
                out = out.replace(secret, MASK)
    return out


def _parses(value: str) -> bool:
    try:
        urllib.parse.urlsplit(value).port  # noqa: B018 - raises on an invalid port
    except ValueError:
        return False
    return True


def first_line(exc: BaseException) -> str:
    """An exception as one redacted line: its message's first line, or its type's name when it has none."""
    message = str(exc).strip()
    return text(message.splitlines()[0] if message else type(exc).__name__)
