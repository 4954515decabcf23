"""A team-style MLflow tracking server: PostgreSQL backend store, proxied artifact storage, safe by default.

    python -m stages.tools.server start [--host 127.0.0.1] [--port 5000] [--auth] [--artifacts s3://bucket/prefix]
    python -m stages.tools.server stop                                     (make server-stop)
    python -m stages.tools.server remove [--yes]                           stop, then delete the cluster and .server/

``start`` runs ``mlflow server`` with ``--artifacts-destination`` (clients
upload and download artifacts through the server and need no storage
credentials: a local directory, or an S3 bucket whose credentials and
``MLFLOW_S3_ENDPOINT_URL`` only the server's environment holds), bound to
127.0.0.1 unless told otherwise. Its backend store is the database
``MLFLOW_BACKEND_URI`` names, or, for trying it out, a throw-away PostgreSQL
cluster (``initdb``/``pg_ctl`` from Debian's ``postgresql`` package, 127.0.0.1
only, ``scram-sha-256`` with a generated password kept 0600 in ``.server/``;
no system service touched). ``stop`` stops what ``start`` started, by process id.

Secrets never reach a command line or the terminal: the backend URI goes to
``mlflow server`` through its environment (``MLFLOW_BACKEND_STORE_URI``), and
what is printed goes through ``stages.lib.redact``. A host other than loopback is
refused unless MLflow's basic-auth app is on (``--auth``): its admin password
is taken from ``MLFLOW_AUTH_ADMIN_PASSWORD`` or generated and shown once.

The cluster itself is ``stages.lib.cluster``'s (as root it runs as the
``postgres`` user, possibly in that user's home); ``.server/pg.json``
records where it lives and its port.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from stages.lib import processes, redact, s3
from stages.lib.cluster import (
    CONNECT_TIMEOUT_S,
    ClusterError,
    Postgres,
    cluster_directory,
    write_private,
)
from stages.lib.files import write_json
from stages.lib.net import is_loopback, local_url
from stages.lib.paths import SERVER_DIR

# MLflow's basic-auth app (mlflow/server/auth/basic_auth.ini, keys as there). EDIT: every user of the team logs,
# registers and moves the `champion` alias; only the admin manages users and permissions. A password is checked
# against its scrypt hash (~0.1 s of CPU) once a minute per user, not on every request (a publish makes a couple
# of hundred); the server runs one worker, where a password changed through the API takes effect at once.
AUTH_INI = """\
[mlflow]
default_permission = EDIT
database_uri = sqlite:///{db}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""
# One error for what `start`, `stop` and `remove` report, the cluster's included: one line each.
ServerError = ClusterError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def secret_file(path: Path, nbytes: int = 24) -> str:
    """The secret kept in ``path`` (mode 0600), generated on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes) + "\n")
    path.chmod(0o600)
    return path.read_text().strip()


def cluster(directory: Path) -> Postgres:
    """The throw-away cluster of ``directory`` (``.server``): where it lives, its port and password."""
    pg_json = directory / "pg.json"
    saved = json.loads(pg_json.read_text()) if pg_json.exists() else {}
    where = Path(saved["directory"]) if "directory" in saved else cluster_directory(directory)
    pg = Postgres(where, saved.get("port") or free_port(), secret_file(directory / "postgres-password"))
    write_json(pg_json, {"directory": str(pg.directory), "port": pg.port})
    return pg


# --- artifacts on S3: checked up front, with the server's own credentials ---------------
# Not DVC's remote check (tools/remote.py): MLflow's bucket, read as `mlflow server` reads it (boto3, MLFLOW_S3_*).


def check_s3(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within seconds, when the bucket of ``uri`` cannot be listed with this environment's
    credentials and ``MLFLOW_S3_ENDPOINT_URL`` (as the server will use them)."""
    import boto3  # noqa: PLC0415 - the server extra; only `--artifacts s3://...` needs it
    import botocore.config  # noqa: PLC0415
    import botocore.exceptions  # noqa: PLC0415

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    where = f"{uri} (endpoint {redact.uri(endpoint)})" if endpoint else uri
    config = botocore.config.Config(
        connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2, "mode": "standard"}
    )
    try:
        client = boto3.client("s3", endpoint_url=endpoint, config=config)
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (ValueError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise ServerError(redact.text(f"{where}: {s3.reason(exc)}")) from None


def check_backend(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within seconds, when a PostgreSQL backend store cannot be logged into (``mlflow
    server`` itself would retry for minutes)."""
    if not uri.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return
    import psycopg  # noqa: PLC0415 - the server extra; only a PostgreSQL backend needs it

    dsn = "postgresql://" + uri.split("://", 1)[1]
    try:
        psycopg.connect(dsn, connect_timeout=int(timeout_s)).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ServerError(redact.text(f"backend store {redact.uri(uri)}: {reason}")) from None


# --- mlflow server -----------------------------------------------------------------------


def auth_environ(directory: Path) -> tuple[dict[str, str], str | None]:
    """The basic-auth app's environment (config file, Flask secret key, the first admin password) and the
    generated admin password to show once (None when it came from the environment or the admin exists)."""
    directory = directory.resolve() / "auth"  # the config, the Flask key and the users' database: owner only
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    write_private(directory / "basic_auth.ini", AUTH_INI.format(db=directory / "users.db", admin=admin))
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(directory / "basic_auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_file(directory / "flask-secret-key", 32),
    }
    generated = None
    if not (directory / "users.db").exists():  # the first start creates the admin user
        password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
        if not password:
            password = generated = secrets.token_urlsafe(18)
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    return env, generated


HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def check_name(name: str) -> None:
    """A name clients reach the server by: a host name or an IP address, nothing that MLflow would read as a
    pattern (``*`` would switch its Host check off altogether) and no scheme or port."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
        return
    if not HOST_NAME.fullmatch(name):
        raise ServerError(
            f"SERVER_NAME={name}: expected host names or IP addresses, comma-separated (letters, digits, dots "
            "and hyphens; no scheme, port or wildcard)"
        )


def allowed_hosts(names: list[str], client: str, environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """``MLFLOW_SERVER_ALLOWED_HOSTS`` for a server that clients reach as ``names`` (``SERVER_NAME``): MLflow's
    own default list (localhost, the loopback and private addresses, on any port) and each name, with and
    without a port. The variable replaces MLflow's defaults, so a list of bare names alone would refuse
    ``mlflow.example.com:5000`` and ``127.0.0.1:5000`` alike (HTTP 403 to every client). A list the user set
    is kept, but must let in ``client``, the host and port ``start`` prints for clients, or this is one line."""
    own = environ.get("MLFLOW_SERVER_ALLOWED_HOSTS")
    if not names and not own:
        return {}  # MLflow's defaults
    for name in names:
        check_name(name)
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header  # noqa: PLC0415

    if own:
        if names:
            raise ServerError("set SERVER_NAME or MLFLOW_SERVER_ALLOWED_HOSTS, not both (SERVER_NAME builds it)")
        if not is_allowed_host_header([h.strip() for h in own.split(",")], client):
            raise ServerError(
                f"MLFLOW_SERVER_ALLOWED_HOSTS refuses {client}, the address printed for clients, so they would get "
                "HTTP 403 (it replaces MLflow's defaults, and a name without ':*' matches no port): use "
                "SERVER_NAME=<name> instead, which keeps the defaults"
            )
        return {}
    listed = [*get_default_allowed_hosts(), *(pattern for n in names for pattern in host_patterns(n))]
    return {"MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(listed)}


def host_patterns(name: str) -> list[str]:
    """The Host headers of requests to ``name``, without a port and on any port, as MLflow matches them (``fnmatch``
    on a pattern with ``*``): an IPv6 address comes bracketed, and its ``[`` escaped where ``*`` makes a pattern."""
    bare = name.removeprefix("[").removesuffix("]")
    if ":" in bare:  # IPv6
        return [f"[{bare}]", f"[[]{bare}]:*"]
    return [name, f"{name}:*"]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise ServerError(f"mlflow server exited with status {proc.returncode}: {last_error(log)}") from None
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server did not answer on {url} in {timeout_s:.0f}s (see {log})") from None
            time.sleep(0.5)


def last_error(log: Path) -> str:
    """The last line of ``log`` that looks like an error, redacted (or where to look)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln] or lines
    return redact.text(errors[-1][:300]) if errors else f"see {log}"


def start_mlflow(
    backend_uri: str, artifacts: str, host: str, port: int, log: Path, extra_env: dict | None = None, auth=False
) -> subprocess.Popen:
    """``mlflow server`` in its own process group (so that stopping it stops its workers). The backend URI
    (with its password) reaches it through the environment, never its command line."""
    command = [
        processes.program("mlflow"), "server",
        "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--workers", "1",
        *(["--app-name", "basic-auth"] if auth else []),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_BACKEND_URI", "MLFLOW_TRACKING_URI")}
    env.update({"MLFLOW_BACKEND_STORE_URI": backend_uri, **(extra_env or {})})
    # MLflow's job runner (GenAI jobs: prompt optimization, trace roll-ups; eight more processes) is of no
    # use to this project and slows the start on a small machine; set the variable to true to have it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log, "ab") as out:
        try:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:  # not installed, not executable
            raise ServerError(f"cannot start mlflow server ({command[0]}): {exc.strerror}") from None


def is_mlflow(pid: int, url: str | None = None) -> bool:
    """Whether ``pid`` still runs mlflow (after a reboot the number may belong to another program). Where
    ``/proc`` cannot say (another PID namespace's), a live pid counts when ``url`` answers as MLflow does."""
    known = processes.runs(pid, b"mlflow")
    if known is not None or not url:
        return bool(known)
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.read().strip() == b"OK"
    except (OSError, ValueError):
        return False


def stop_process_group(pid: int, url: str | None = None, timeout_s: float = 20.0) -> None:
    if not is_mlflow(pid, url):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not processes.group_running(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def check_port(host: str, port: int) -> None:
    """Fail in one line when ``host:port`` cannot be listened on (another server holds it, or the address is
    not this machine's), before anything is started: ``mlflow server`` would start, fail to bind and exit
    with status 0. Bound as uvicorn binds (``SO_REUSEADDR``), so a port left in TIME_WAIT counts as free;
    a name with several addresses (``localhost``: 127.0.0.1 and ::1) needs one of them."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    failures = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServerError(
                        f"port {port} on {host} is in use (another server?): stop it, or choose another port "
                        "with SERVER_PORT=..."
                    ) from None
                failures.append(exc.strerror)
    if len(failures) == len(addresses):
        raise ServerError(f"cannot listen on {host}:{port}: {failures[0] if failures else 'no address'}")


def start(
    host: str,
    port: int,
    directory: Path = SERVER_DIR,
    backend_uri: str | None = None,
    auth: bool = False,
    artifacts: str | None = None,
    names: list[str] | None = None,
) -> dict:
    """Start PostgreSQL (unless ``backend_uri`` is given) and the tracking server; return the state
    (plus ``admin_password`` when one was generated: show it once, it is stored nowhere).

    The state file is written before PostgreSQL starts, so that whatever happens next (``mlflow server``
    failing, the health check timing out, Ctrl-C, a kill) leaves a record ``stop`` works from; a failure
    that reaches this function stops everything again itself."""
    if not is_loopback(host) and not auth:
        raise ServerError(
            f"refusing to serve MLflow on {host} without authentication: "
            "add AUTH=1 (MLflow's basic-auth app) or keep 127.0.0.1 behind an authenticating proxy"
        )
    state_path = directory / "state.json"
    if state_path.exists():
        raise ServerError(f"a server started from {directory} is already running: `make server-stop` first")
    check_port(host, port)
    url = local_url(host, port)
    hosts_env = allowed_hosts(names or [], urllib.parse.urlsplit(url).netloc, os.environ)
    if artifacts and artifacts.startswith("s3://"):
        check_s3(artifacts)
    directory.mkdir(parents=True, exist_ok=True)
    state: dict = {"url": url, "host": host, "port": port, "auth": auth}
    if names:
        state["client_url"] = local_url(names[0], port)
    generated = None
    try:
        if backend_uri is None:
            pg = cluster(directory)
            state["postgres"] = {"directory": str(pg.directory), "port": pg.port}
            write_json(state_path, state)  # before it starts: a failure from here on can be stopped
            if (pg.data / "PG_VERSION").exists():
                pg.start()
            else:
                pg.init()
            backend_uri = pg.uri
        else:
            check_backend(backend_uri)
        env, generated = auth_environ(directory) if auth else ({}, None)
        env.update(hosts_env)
        artifacts = artifacts or str((directory / "artifacts").resolve())
        log = directory / "mlflow.log"
        proc = start_mlflow(backend_uri, artifacts, host, port, log, env, auth)
        state.update({"mlflow_pid": proc.pid, "artifacts": artifacts})
        write_json(state_path, state)
        wait_healthy(state["url"], proc, log)
    except BaseException as exc:  # Ctrl-C included: what started is stopped again
        note = ""
        if state_path.exists():
            try:
                stop(directory)
            except ServerError:  # the state file stays, for `make server-stop`
                note = " (and stopping what had started failed: `make server-stop`)"
        if generated:  # the password was never shown: let the next start create the admin again
            (directory / "auth" / "users.db").unlink(missing_ok=True)
        if note and isinstance(exc, ServerError):
            raise ServerError(f"{exc}{note}") from None
        raise
    return {**state, "admin_password": generated} if generated else state


def stop(directory: Path = SERVER_DIR) -> list[str]:
    """Stop what ``start`` started, by process id; say what was stopped."""
    state_path = directory / "state.json"
    if not state_path.exists():
        return []
    state = json.loads(state_path.read_text())
    stopped = []
    if state.get("mlflow_pid"):
        stop_process_group(state["mlflow_pid"], state.get("url"))
        stopped.append(f"mlflow server (pid {state['mlflow_pid']})")
    if state.get("postgres"):
        pg = Postgres(Path(state["postgres"]["directory"]), state["postgres"]["port"])
        if pg.running():
            pg.stop()
            stopped.append(f"PostgreSQL ({pg.directory})")
    state_path.unlink()
    return stopped


def doomed(directory: Path = SERVER_DIR) -> list[Path]:
    """What ``remove`` would delete: ``directory`` and, when it lives elsewhere, the cluster ``pg.json`` records."""
    paths = []
    pg_json = directory / "pg.json"
    if pg_json.exists():
        cluster_dir = Path(json.loads(pg_json.read_text())["directory"])
        if cluster_dir.exists() and not cluster_dir.is_relative_to(directory.resolve()):
            paths.append(cluster_dir)
    if directory.exists():
        paths.append(directory)
    return paths


def confirmed(paths: list[Path], yes: bool, answer: Callable[[str], str] | None = None) -> bool:
    """Whether ``remove`` may delete ``paths``: ``yes``, or a yes at the terminal, after listing them. Without a
    terminal and without ``yes``, a ``ServerError``: nothing is deleted by surprise."""
    if yes:
        return True
    if answer is None:
        if not sys.stdin.isatty():
            raise ServerError(
                f"remove deletes {', '.join(map(str, paths))} (every run and model in them): nothing removed without "
                "--yes (or a yes at a terminal)"
            )
        answer = input
    print("server: remove deletes (every run and model in them; nothing rebuilds them):")
    for path in paths:
        print(f"  {path}")
    try:
        reply = answer("Delete them? [y/N] ")
    except EOFError:  # Ctrl-D: no
        print()
        return False
    return reply.strip().lower() in {"y", "yes"}


def remove(directory: Path = SERVER_DIR) -> list[str]:
    """Stop, then delete the throw-away cluster (wherever it lives) and ``directory``: every run and artifact.

    A cluster still running when ``stop`` is done (one no state file records: left by a crash or an earlier
    version) is stopped first; one that cannot be stopped is refused, never deleted under a live server."""
    stop(directory)
    pg_json = directory / "pg.json"
    if pg_json.exists():
        saved = json.loads(pg_json.read_text())
        pg = Postgres(Path(saved["directory"]), saved.get("port") or 0)
        if (pg.data / "postmaster.pid").exists() and pg.running():  # no pid file: not running, no pg_ctl asked
            try:
                pg.stop()
            except ServerError as exc:
                raise ServerError(
                    f"the PostgreSQL cluster in {pg.directory} is running and would not stop ({exc}): nothing removed"
                ) from None
    paths = doomed(directory)
    for path in paths:
        shutil.rmtree(path)
    return [str(path) for path in paths]


def describe(state: dict, backend_env: str | None) -> list[str]:
    """What ``start`` prints: where the server is, its stores, how a client logs in (no secret but a
    generated admin password, shown this once)."""
    backend = redact.uri(backend_env or "")
    if "postgres" in state:
        backend = f"PostgreSQL in {state['postgres']['directory']}"
    lines = [
        f"server: MLflow at {state['url']} (backend: {backend}; artifacts: {redact.uri(state['artifacts'])})",
        f"server: export MLFLOW_TRACKING_URI={state.get('client_url', state['url'])}   "
        "# then dvc repro / dvc exp run log there",
    ]
    if "client_url" not in state and state.get("host") and not is_loopback(state["host"]):
        lines.append(
            f"server: from other machines, http://<a private address of this machine>:{state['port']}, or a name "
            "given in SERVER_NAME=<name> (MLflow answers others with HTTP 403)"
        )
    if state.get("auth"):
        admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
        if state.get("admin_password"):
            lines.append(
                f"server: basic auth on; admin user {admin!r}, password {state['admin_password']} "
                "(generated, shown this once: keep it)"
            )
        else:
            lines.append(f"server: basic auth on; admin user {admin!r} (password as first set)")
        lines.append("server: clients: export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "remove"])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=SERVER_DIR, help="where the state, secrets, logs and data live")
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app (required off loopback)")
    parser.add_argument("--yes", action="store_true", help="remove: delete without asking")
    parser.add_argument("--artifacts", help="artifact destination (default: <dir>/artifacts), e.g. s3://bucket/mlflow")
    parser.add_argument(
        "--name", default="", help="the name(s) clients reach the server by, comma-separated (allowed Host headers)"
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            backend_env = os.environ.get("MLFLOW_BACKEND_URI") or None
            names = [n.strip() for n in args.name.split(",") if n.strip()]
            state = start(args.host, args.port, args.dir, backend_env, args.auth, args.artifacts, names)
            print("\n".join(describe(state, backend_env)))
            if not args.auth and (args.dir / "auth" / "users.db").exists():
                print(f"server: note: basic auth is off this time (the users in {args.dir / 'auth'} are not asked "
                      "for): make server-stop, then make server AUTH=1")  # fmt: skip
        elif args.action == "stop":
            stopped = stop(args.dir)
            print("server: stopped " + ", ".join(stopped) if stopped else "server: nothing to stop")
        else:
            paths = doomed(args.dir)
            if paths and not confirmed(paths, args.yes):
                print("server: nothing removed")
                return 0
            removed = remove(args.dir)
            print("server: removed " + ", ".join(removed) if removed else "server: nothing to remove")
    except ServerError as exc:
        print(f"server: error: {redact.text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during a start: what had started was stopped again
        print("server: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
