"""Whether a process id still names the program that wrote it down.

A pid recorded in a run's tags, a tuning trial's attributes or a server's
state file may have ended, or been reused by another program (after a
reboot, or a busy machine). ``/proc``
tells which program runs under a number, but only when it is this process's
own PID namespace: a sandbox may keep the host's ``/proc``, where our numbers
name other processes. There, only ``kill(pid, 0)`` can tell, and the answer is
"alive, program unknown".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROC = Path("/proc")


def bin_dir() -> Path:
    """Where this environment's programs are (dvc, mlflow, uvicorn, ...): beside its Python."""
    return Path(sys.executable).parent


def program(name: str) -> str:
    """This environment's ``name``, whatever PATH says; else ``name``, for PATH to find."""
    path = bin_dir() / name
    return str(path) if path.exists() else name


def error_line(stderr: str, code: int | None = None) -> str:
    """What another program's error output says went wrong, in one line: its first ``ERROR:`` line (DVC, whose
    output may end in a "Having any troubles?" footer), ``fatal:`` or ``error:`` line (git); else its first two
    lines (DVC's "'dvc.yaml' validation failed." and the reason, before an excerpt of the file); else its exit
    status."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if line.lower().startswith(("error:", "fatal:"))]
    if said:
        return said[0]
    if lines:
        return " ".join(lines[:2])
    return f"exit status {code}" if code is not None else "no output"


def own_proc(proc: Path = PROC) -> bool:
    """Whether ``proc`` is a procfs of this process's PID namespace."""
    try:
        return (proc / "self").resolve().name == str(os.getpid())
    except OSError:
        return False


def runs(pid: int, marker: bytes, proc: Path = PROC) -> bool | None:
    """Whether ``pid`` is alive and its command line holds ``marker``; None when it is alive but ``proc``
    cannot say (yet) what it runs."""
    # Not psutil: it reads the same /proc, and in another PID namespace's would describe another process.
    if not _signalled(os.kill, pid):
        return False
    if not own_proc(proc):
        return None
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    # Empty while the process is still being exec'd (seen right after a fork) or already a zombie: either
    # way it cannot say yet what it runs.
    return (marker in cmdline) if cmdline else None


def group_running(pgid: int, proc: Path = PROC) -> bool:
    """Whether a process of process group ``pgid`` still runs. A process that has exited but that its parent
    has not reaped yet (a zombie: an orphan waits for the init process, which may take its time) counts as
    gone, though ``killpg(pgid, 0)`` still finds it."""
    if not _signalled(os.killpg, pgid):
        return False
    if not own_proc(proc):
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command name)"
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def signalled(pid: int) -> bool:
    """Whether process ``pid`` exists (whatever it runs now: its number may have been reused)."""
    return _signalled(os.kill, pid)


def _signalled(kill, target: int) -> bool:
    """Whether signal 0 reaches ``target`` through ``kill`` (``os.kill``, ``os.killpg``): something is there."""
    try:
        kill(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True
