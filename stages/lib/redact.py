"""One redaction for every URI or message that may carry a secret.

Tracking URIs, database URIs, DVC remotes and git remotes often hold
credentials: ``http://alice:s3cret@host``, ``postgresql://mlflow:pw@db/mlflow``,
``https://TOKEN@github.com/org/repo``, ``https://host/x?token=…``. Whatever the
project prints, logs, raises or tags goes through ``uri`` (one URI) or
``text`` (a message that may contain URIs and the values of secret environment
variables), and what is logged as run params through ``params``, so a secret
never reaches a terminal, a CI log or a shared server.
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
# A URI's scheme and "//", then its user-info: everything up to the last "@" before white space. RFC 3986 ends
# an authority at "/", "?" or "#", but a password written raw holds those too (and '"', "[" or "@"), and the URI
# is then misread by its parsers, whose errors quote the part they choke on; so only white space or another
# URI's "://" (``?next=http://u:pw@h2``, masked on its own) ends it. The cost is more masked, never less: an "@"
# later in a path masks the host and path before it too.
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:(?!://)\S)*@")
# A query (or fragment) parameter: its key after "?", "&" or "#", its value up to the next "&", "#" or white space.
# A lookahead, so that a parameter inside another one's value (``?next=http://h/?token=…``) is found too.
_PARAM = re.compile(r"(?=[?&#]([^=&#?\s]*)=([^&#\s]*))")
# In a message, what may follow a URI without being part of it: a closing bracket or quote, sentence punctuation.
_CLOSERS = {")": "(", "]": "[", "}": "{", ">": "<", "'": "'", '"': '"'}
_PUNCTUATION = ".,;:!"


def uri(value: str) -> str:
    """``value`` with its user-info (``user:password@``) and secret query values masked.

    ``http://alice:s3cret@host:5000/x?token=abc&page=2`` ->
    ``http://***@host:5000/x?token=***&page=2``: the host, the path and the other query values stay as they were
    written. A value without user-info or secret parameters is returned unchanged, whether it parses or not.
    """
    return _mask_params(_USERINFO.sub(_mask_userinfo, value))


def _mask_userinfo(match: re.Match[str]) -> str:
    return f"{match.group(1)}{MASK}@"


def _mask_params(value: str, prose: bool = False) -> str:
    """``value`` with the value of every parameter whose key names a secret masked.

    In ``prose`` (a word of a message), a closing bracket or quote that matches one before the parameter, and
    sentence punctuation, are kept after the mask (two characters at most, and never the whole value).
    """
    spans = []
    for match in _PARAM.finditer(value):
        if _secret_key(urllib.parse.unquote_plus(match.group(1))):
            start, end = match.span(2)
            if prose:
                end = _trim_trailing(value, start, end)
            spans.append((start, end))
    if not spans:
        return value
    out, done = [], 0
    for start, end in sorted(spans):
        if end <= done:  # inside a value already masked
            continue
        out += [value[done : max(start, done)], MASK]
        done = end
    return "".join(out) + value[done:]


def _trim_trailing(word: str, start: int, end: int) -> int:
    """Where a secret value in ``word[start:end]`` ends once the punctuation the sentence put after it is left out."""
    for _ in range(2):
        if end - start < 2:
            break
        last = word[end - 1]
        before = word[:start]
        opener = _CLOSERS.get(last)
        if opener == last:  # a quote: closes one when an odd number precede
            balanced = before.count(last) % 2 == 1
        else:
            balanced = opener is not None and before.count(opener) > before.count(last)
        if not (balanced or last in _PUNCTUATION):
            break
        end -= 1
    return end


def _secret_key(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_QUERY_KEYS)


def _secret_parts(value: str) -> set[str]:
    """A secret URI's user-info, password and secret parameter values, as written and pct-decoded."""
    parts = set()
    match = _USERINFO.search(value)
    if match:
        userinfo = match.group(0)[len(match.group(1)) : -1]
        parts |= {userinfo, userinfo.partition(":")[2]}
    parts |= {m.group(2) for m in _PARAM.finditer(value) if _secret_key(urllib.parse.unquote_plus(m.group(1)))}
    return parts | {urllib.parse.unquote(p) for p in parts}


def text(message: str, environ: Mapping[str, str] | None = None) -> str:
    """``message`` with every URI in it redacted and the values of secret environment variables masked.

    A URI's user-info is masked whatever characters it holds, and wherever the URI sits (in parentheses, quotes);
    secret parameter values are masked in every word of the message, which catches a path and query printed
    without their scheme (requests' ``with url: /x?token=…``).
    """
    environ = os.environ if environ is None else environ
    out = _USERINFO.sub(_mask_userinfo, str(message))
    out = re.sub(r"\S+", lambda m: _mask_params(m.group(0), prose=True), out)
    for name in SECRET_ENV:
        value = environ.get(name, "")
        if len(value) >= 4:  # a short value would mask ordinary words
            secret_parts = {value}
            if "://" in value:  # a secret URI: its password and user-info on their own, too
                secret_parts |= {p for p in _secret_parts(value) if len(p) >= 4}
                secret_parts.discard(value)  # the URI itself was redacted above, its host may stay
            for secret in sorted(secret_parts, key=len, reverse=True):
                out = out.replace(secret, MASK)
    return out


def params(mapping: Mapping[str, object], environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """A copy of a flat params mapping (``{"fetch.keras_url": …}``) with every string in it redacted by ``text``.

    What a run logs as params is shown to everyone who reads the tracking server, and a URL param may carry a
    user's token (``https://user:pw@host/mnist.npz?token=abc``). Strings in lists, tuples and nested mappings are
    redacted too; other values, and the keys, are kept as they are.
    """
    return {key: _redact_value(value, environ) for key, value in mapping.items()}


def _redact_value(value: object, environ: Mapping[str, str] | None) -> object:
    if isinstance(value, str):
        return text(value, environ)
    if isinstance(value, Mapping):
        return params(value, environ)
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, environ) for v in value)
    return value


def first_line(exc: BaseException) -> str:
    """An exception as one redacted line: its message's first line, or its type's name when it has none."""
    message = str(exc).strip()
    return text(message.splitlines()[0] if message else type(exc).__name__)


def described(exc: BaseException) -> str:
    """An exception as one redacted line with its type: ``Type: first line``, or ``Type`` when it has no
    message."""
    message = str(exc).strip()
    return text(f"{type(exc).__name__}: {message.splitlines()[0]}" if message else type(exc).__name__)
