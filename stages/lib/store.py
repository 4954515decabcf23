"""Where the MLflow store is, and whether it answers: checked before training, without importing MLflow.

Default store: SQLite ``mlflow.db`` and artifacts in ``mlartifacts/`` at the
root of the DVC repository, found through ``DVC_ROOT`` so that ``dvc exp run
--temp`` and queued runs (which run in ``.dvc/tmp/exps/...`` copies) land in
the same store as workspace runs. ``MLFLOW_TRACKING_URI`` overrides it.

A tracking server is asked with the credentials and TLS settings MLflow's own
client uses (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` or user-info in the URI,
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_TRACKING_CLIENT_CERT_PATH``), so a server behind authentication
passes the check exactly when MLflow itself could log there. Every URI in a
message is redacted (``stages.lib.redact``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.lib import redact
from stages.lib.paths import MLFLOW_ARTIFACTS, MLFLOW_DB

EXPERIMENT = "mnist"


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message says which and why (secrets redacted)."""


def read_store(project: Path, environ: Mapping[str, str] | None = None) -> str:
    """The store that predict, serve and the demo read models from: ``MLFLOW_TRACKING_URI``, or else the
    ``mlflow.db`` of ``project``, the checkout their code is in (they run from any directory). A relative
    SQLite path means ``project``'s, as it means the repository root's to the stages (``store``)."""
    environ = os.environ if environ is None else environ
    return store({**environ, "DVC_ROOT": str(project)})[0]


def repo_root(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The DVC repository's root, seen through experiment temp copies."""
    environ = os.environ if environ is None else environ
    root = Path(environ.get("DVC_ROOT") or cwd or Path.cwd()).resolve()
    parts = root.parts
    # dvc exp run --temp / --queue run in <repo>/.dvc/tmp/exps/<...>/<copy>
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def store(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None to let the server decide)."""
    environ = os.environ if environ is None else environ
    uri = environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:///") and not uri.startswith(("sqlite:///:memory:", "sqlite:///file:")):
        # A relative path means the repository root (not .dvc/tmp/exps/... of a queued experiment);
        # artifacts go beside the database, not into ./mlruns of wherever the stage ran.
        db = repo_root(environ) / uri.removeprefix("sqlite:///")
        return f"sqlite:///{db}", (db.parent / MLFLOW_ARTIFACTS).as_uri()
    if uri:
        return uri, None
    root = repo_root(environ)
    return f"sqlite:///{root / MLFLOW_DB}", (root / MLFLOW_ARTIFACTS).as_uri()


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


# --- a tracking server over HTTP, as MLflow's client would ask it ------------------


def without_credentials(uri: str) -> tuple[str, tuple[str, str] | None]:
    """(``uri`` without user-info, the (user, password) it held or None)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, (urllib.parse.unquote(user), urllib.parse.unquote(password))


def auth_headers(environ: Mapping[str, str], from_uri: tuple[str, str] | None = None) -> dict[str, str]:
    """MLflow's own client credentials: a token, a user and password, or the URI's user-info (never printed)."""
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {environ['MLFLOW_TRACKING_TOKEN']}"}
    pair = None
    if environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = (environ["MLFLOW_TRACKING_USERNAME"], environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    elif from_uri:
        pair = from_uri
    if pair is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()}


def ssl_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """TLS as MLflow's client does it: a CA bundle, a client certificate, or no verification when asked."""
    context = ssl.create_default_context(cafile=environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        context.load_cert_chain(environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"])
    if environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true", "yes"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return (
        parts.scheme.lower(),
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(parts.scheme),
    )


class SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follows a redirect as urllib does, but never sends ``Authorization`` to another scheme, host or port
    (urllib forwards every header to any redirect target)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def rest(
    uri: str,
    endpoint: str,
    environ: Mapping[str, str] | None = None,
    body: dict | None = None,
    query: dict | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One call of MLflow's REST API (``api/2.0/mlflow/<endpoint>``); urllib's errors pass through."""
    environ = os.environ if environ is None else environ
    base, credentials = without_credentials(uri)
    url = f"{base.rstrip('/')}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **auth_headers(environ, credentials)}
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    handlers: list[Any] = [SameOriginCredentials()]
    if url.startswith("https://"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context(environ)))
    with urllib.request.build_opener(*handlers).open(request, timeout=timeout_s) as response:
        return json.loads(response.read() or b"{}")


def describe(exc: BaseException) -> str:
    """A short, redacted reason for an error talking to a server (urllib's ``reason`` when it has one)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return redact.first_line(reason)
    return redact.text(str(reason)) if reason else redact.first_line(exc)


def preflight(uri: str, environ: Mapping[str, str] | None = None, timeout_s: float = 10.0) -> None:
    """Fail fast, before any training, if the store cannot be reached, authenticated against, or written."""
    environ = os.environ if environ is None else environ
    shown = redact.uri(uri)
    if is_server(uri):
        try:
            rest(uri, "experiments/get-by-name", environ, query={"experiment_name": EXPERIMENT}, timeout_s=timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise TrackingError(refusal(shown, exc, credentials_source(uri, environ))) from None
            if exc.code >= 500:
                raise TrackingError(f"MLflow server at {shown} failed (HTTP {exc.code}): is its database up?") from None
            if exc.code != 404:  # 404: no experiment yet, which is fine
                raise TrackingError(
                    f"MLflow server at {shown} answered HTTP {exc.code}; is it an MLflow server?"
                ) from None
        except http.client.InvalidURL:  # its message quotes what it misread: part of a raw password, say
            raise TrackingError(
                f"MLflow server at {shown}: not a valid URL (a password holding '/', '?', '#' or '@' must be "
                "percent-encoded, or set in MLFLOW_TRACKING_PASSWORD instead)"
            ) from None
        except (urllib.error.URLError, OSError, ValueError, ssl.SSLError, http.client.HTTPException) as exc:
            raise TrackingError(
                f"MLflow server at {shown} is unreachable ({describe(exc)}); start it or unset MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        directory = db.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise TrackingError(f"MLflow store {shown}: {directory} is not a writable directory")
        if db.exists():
            check_sqlite(db, timeout_s)
    else:  # a database URI, file:, databricks...: the claims, locks and fast checks are made for these two
        raise TrackingError(
            f"MLflow store {shown} is not supported: set MLFLOW_TRACKING_URI to sqlite:///<file> or to an "
            "http(s):// tracking server (make server runs one over PostgreSQL)"
        )


def credentials_source(uri: str, environ: Mapping[str, str]) -> str | None:
    """Where the credentials ``rest`` sends for ``uri`` come from (as ``auth_headers`` picks them): the
    environment, the URI's user-info, or nowhere (None)."""
    if auth_headers(environ):  # without the URI's: the environment's own, which come first
        return "environment"
    return "uri" if without_credentials(uri)[1] else None


def refusal(shown: str, exc: urllib.error.HTTPError, source: str | None) -> str:
    """What a server's 401 or 403 means, in one line: no credentials sent, credentials refused (from the
    environment or the URI, ``source``), a host name the server does not allow (MLflow's guard against DNS
    rebinding answers 403 before any login), or a user without the permission."""
    body = ""
    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
        body = exc.read(2000).decode(errors="replace")
    variables = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    if "Host header" in body:
        host = urllib.parse.urlsplit(shown).netloc.rpartition("@")[2]
        return (
            f"MLflow server at {shown} refused the host name {host} (HTTP 403; MLflow's guard against DNS "
            "rebinding): its MLFLOW_SERVER_ALLOWED_HOSTS must allow it (make server SERVER_NAME=<name> does)"
        )
    if source is None:
        return f"MLflow server at {shown} asks for a login (HTTP {exc.code}): set {variables}"
    if exc.code == 401:
        where = variables if source == "environment" else "the user and password in MLFLOW_TRACKING_URI"
        return f"MLflow server at {shown} rejected the credentials (HTTP 401): check {where}"
    return (
        f"MLflow server at {shown} refused the request (HTTP 403): the user lacks the permission; ask the "
        "server's admin"
    )


def check_readable(model_uri: str, store_uri: str) -> None:
    """Before ``model_uri`` is loaded (predict, serve, the demo): when it is read from the store (``models:/``,
    ``runs:/``) and that store is a SQLite file, the file must exist and be readable. MLflow would create an
    empty store instead, fail with "not found" and leave it behind, where ``make ui`` would then open it."""
    if not model_uri.startswith(("models:/", "runs:/")) or not store_uri.startswith("sqlite:///"):
        return
    db = Path(store_uri.removeprefix("sqlite:///").split("?")[0])
    if not db.exists():
        raise TrackingError(
            f"no MLflow store at {redact.uri(store_uri)}: run `make repro` first, or set MLFLOW_TRACKING_URI"
        )
    check_sqlite(db)


def check_sqlite(db: Path, timeout_s: float = 10.0) -> None:
    """A SQLite store that cannot be read (damaged, not a database, locked past ``timeout_s``): one line that
    says what to do, instead of SQLAlchemy's traceback."""
    import sqlite3  # noqa: PLC0415

    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
        ) as con:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        locked = "locked" in str(exc) or "busy" in str(exc)
        cause = f"is locked by another process ({exc})" if locked else f"cannot be read: {exc}"
        fix = (
            "wait for that process, or stop it"
            if locked
            else f"restore it from a backup, or move it aside (mv {db.name} {db.name}.damaged) to start a new one"
        )
        raise TrackingError(
            f"MLflow store {db} {cause}: {fix}; the pipeline's outputs (data/, reports/, DVC's cache) are intact"
        ) from None
