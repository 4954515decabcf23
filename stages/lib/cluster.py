"""A throw-away PostgreSQL cluster for trying the team's tracking server out: 127.0.0.1, SCRAM passwords.

``Postgres(directory, port, password)`` makes a cluster with Debian's
``initdb``/``pg_ctl`` (``pg_bin`` finds them), with one role, ``mlflow``,
owner of the ``mlflow`` database, whose password ``initdb`` reads from a
0600 file, never from its command line. It listens on 127.0.0.1 only, takes
password (``scram-sha-256``) logins over TCP and no Unix socket, and refuses
to start a cluster whose ``pg_hba.conf`` trusts anyone. No system service is
touched.

As root (PostgreSQL refuses to run as root) its programs run as the
``postgres`` user; when that user cannot enter the directory meant for the
cluster (a project under ``/root``), ``cluster_directory`` puts it in a 0700
directory of the ``postgres`` user's home instead.

Kept by hand: no locked library makes a cluster; ``initdb`` and ``pg_ctl``
are PostgreSQL's own tools for it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from stages.lib import redact

PG_USER = "mlflow"  # the cluster's only role, owner of the `mlflow` database
# What the throw-away cluster accepts: password (SCRAM) logins over TCP from this machine; no Unix socket, no trust.
PG_HBA = """\
# Written by stages.tools.server: TCP from this machine only, SCRAM password required (no `trust`).
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""
CONNECT_TIMEOUT_S = 5  # seconds a client waits for the cluster (or any server) to answer a connection


class ClusterError(RuntimeError):
    """The cluster cannot be made, started or stopped; the message is one line (secrets redacted)."""


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian installs it."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ClusterError(f"{name} not found: install PostgreSQL's server (Debian: apt-get install postgresql)")
    return found


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (created that way, not chmod-ed after)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def as_postgres() -> list[str]:
    """The prefix that runs a PostgreSQL server program as ``postgres`` when we are root (it refuses root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def postgres_can_enter(directory: Path) -> bool:
    return subprocess.run([*as_postgres(), "test", "-x", str(directory)], capture_output=True).returncode == 0


def cluster_directory(server_dir: Path) -> Path:
    """Where the cluster of ``server_dir`` lives: ``server_dir/postgres``, or, as root when the ``postgres``
    user cannot enter ``server_dir`` (a project under /root), ``~postgres/mnist-mlflow/<key of the path>``."""
    server_dir = server_dir.resolve()
    if os.geteuid() != 0 or postgres_can_enter(server_dir):
        return server_dir / "postgres"
    try:
        home = Path(pwd.getpwnam("postgres").pw_dir)
    except KeyError:
        raise ClusterError("running as root needs the `postgres` user (Debian's postgresql creates it)") from None
    return home / "mnist-mlflow" / hashlib.sha256(str(server_dir).encode()).hexdigest()[:16]


def make_postgres_dir(path: Path) -> None:
    """``path`` (and missing parents under it) with mode 0700, owned by ``postgres`` when we are root."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for p in [path, *missing]:
        p.chmod(0o700)
        if os.geteuid() == 0:
            shutil.chown(p, "postgres", "postgres")


class Postgres:
    """A PostgreSQL cluster in ``directory``: 127.0.0.1:``port`` only, role ``mlflow`` with ``password``."""

    def __init__(self, directory: Path, port: int, password: str = "") -> None:
        self.directory = Path(directory).resolve()
        self.data = self.directory / "data"
        self.port = port
        self.password = password

    @property
    def uri(self) -> str:
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args: str, owner: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        prefix = as_postgres() if owner else []
        result = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
        )
        if result.returncode != 0:
            message = " ".join((result.stderr or result.stdout).split())
            raise ClusterError(redact.text(f"{Path(args[0]).name} failed: {message}"))
        return result

    def init(self) -> None:
        """Create the cluster (SCRAM passwords, no `trust`) and the ``mlflow`` database."""
        make_postgres_dir(self.directory)
        pwfile = self.directory / "initdb.pw"  # initdb reads the password from a file, never from its arguments
        write_private(pwfile, self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._run(
                pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "--pwfile", str(pwfile),
                "--auth=scram-sha-256", "-E", "UTF8",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        hba = self.data / "pg_hba.conf"
        hba.write_text(PG_HBA)
        self.start()
        # createdb is a client: it runs as us and logs in with the password from its environment.
        self._run(
            pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "mlflow",
            owner=False, env={"PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)},
        )  # fmt: skip

    def check_hba(self) -> None:
        """Refuse a cluster that lets anyone in (one created with ``--auth=trust``, by hand or by another tool)."""
        lines = [ln.split() for ln in (self.data / "pg_hba.conf").read_text().splitlines()]
        if any(fields and not fields[0].startswith("#") and "trust" in fields for fields in lines):
            raise ClusterError(
                f"the PostgreSQL cluster in {self.directory} accepts `trust` logins (anyone on this machine can "
                "connect): stop it, back up what you need, and remove that directory to get a password-protected one"
            )

    def start(self) -> None:
        self.check_hba()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        log = self.directory / "postgres.log"
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        status = [*as_postgres(), pg_bin("pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(status, capture_output=True).returncode == 0
