"""A team-style MLflow tracking server: PostgreSQL backend store, proxied artifact storage.

    python -m stages.tools.server start [--host 127.0.0.1] [--port 5000]    (make server)
    python -m stages.tools.server stop                                     (make server-stop)

``start`` runs ``mlflow server`` with ``--artifacts-destination`` (clients
upload and download artifacts through the server and need no storage
credentials), bound to 127.0.0.1 unless told otherwise. Its backend store is
the PostgreSQL database ``MLFLOW_BACKEND_URI`` names, or, for trying it out, a
throw-away PostgreSQL cluster created in ``.server/`` (``initdb`` and
``pg_ctl`` from Debian's ``postgresql`` package, on 127.0.0.1, no system
service touched). ``stop`` stops what ``start`` started, by process id.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stages.lib.files import write_json
from stages.lib.paths import SERVER_DIR


class ServerError(RuntimeError):
    pass


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian installs it."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ServerError(f"{name} not found: install PostgreSQL's server (Debian: apt-get install postgresql)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL cluster in ``directory``, listening on 127.0.0.1:``port`` only, user ``mlflow``."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = Path(directory).resolve()
        self.data = self.directory / "data"
        self.port = port

    @property
    def uri(self) -> str:
        return f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        # PostgreSQL refuses to run as root: run its programs as the postgres user then.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ServerError(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()}")
        return result

    def init(self) -> None:
        """Create the cluster and the ``mlflow`` database once; later starts reuse them."""
        if (self.data / "PG_VERSION").exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        # Only connections from this machine are accepted (listen_addresses below); no passwords.
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "mlflow", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        log = self.directory / "postgres.log"
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return (
            subprocess.run([*prefix, pg_bin("pg_ctl"), "-D", str(self.data), "status"], capture_output=True).returncode
            == 0
        )


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise ServerError(f"mlflow server exited with status {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server did not answer on {url} within {timeout_s:.0f}s") from None
            time.sleep(0.5)


def start_mlflow(backend_uri: str, artifacts: Path, host: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` in its own process group (so that stopping it stops its workers)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow if mlflow.exists() else "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def is_mlflow(pid: int) -> bool:
    """Whether ``pid`` still runs mlflow (after a reboot the number may belong to another program)."""
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_process_group(pid: int, timeout_s: float = 20.0) -> None:
    if not is_mlflow(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def start(host: str, port: int, directory: Path = SERVER_DIR, backend_uri: str | None = None) -> dict:
    """Start PostgreSQL (unless ``backend_uri`` is given) and the tracking server; return the state."""
    state_path = directory / "state.json"
    if state_path.exists():
        raise ServerError(f"a server started from {directory} is already running: `make server-stop` first")
    directory.mkdir(parents=True, exist_ok=True)
    state: dict = {"url": f"http://{host}:{port}"}
    if backend_uri is None:
        pg = Postgres(
            directory / "postgres",
            json.loads((directory / "pg.json").read_text())["port"]
            if (directory / "pg.json").exists()
            else free_port(),
        )
        write_json(directory / "pg.json", {"port": pg.port})
        if (pg.data / "PG_VERSION").exists():
            pg.start()
        else:
            pg.init()
        state["postgres"] = {"directory": str(pg.directory), "port": pg.port}
        backend_uri = pg.uri
    proc = start_mlflow(backend_uri, (directory / "artifacts").resolve(), host, port, directory / "mlflow.log")
    state["mlflow_pid"] = proc.pid
    write_json(state_path, state)
    try:
        wait_healthy(state["url"], proc)
    except ServerError:
        stop(directory)
        raise
    return state


def stop(directory: Path = SERVER_DIR) -> list[str]:
    """Stop what ``start`` started, by process id; say what was stopped."""
    state_path = directory / "state.json"
    if not state_path.exists():
        return []
    state = json.loads(state_path.read_text())
    stopped = []
    if state.get("mlflow_pid"):
        stop_process_group(state["mlflow_pid"])
        stopped.append(f"mlflow server (pid {state['mlflow_pid']})")
    if state.get("postgres"):
        pg = Postgres(Path(state["postgres"]["directory"]), state["postgres"]["port"])
        if pg.running():
            pg.stop()
            stopped.append(f"PostgreSQL ({pg.directory})")
    state_path.unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=SERVER_DIR, help="where the state, logs and data live")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            state = start(args.host, args.port, args.dir, os.environ.get("MLFLOW_BACKEND_URI") or None)
            backend = "PostgreSQL in " + state["postgres"]["directory"] if "postgres" in state else "MLFLOW_BACKEND_URI"
            print(f"server: MLflow at {state['url']} (backend: {backend}; artifacts: {args.dir / 'artifacts'})")
            print(f"server: export MLFLOW_TRACKING_URI={state['url']}   # then dvc repro / dvc exp run log there")
        else:
            stopped = stop(args.dir)
            print("server: stopped " + ", ".join(stopped) if stopped else "server: nothing to stop")
    except ServerError as exc:
        print(f"server: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
