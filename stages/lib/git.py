"""Reading what git has committed: the tools compare the workspace, or one commit, with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stages.lib import processes


class NotCommitted(RuntimeError):
    """The path is not in that revision (or the revision does not exist); the message is git's own line."""


def committed(rev: str, path: str | Path) -> bytes:
    """The bytes of ``path`` (relative to the repository root) as committed at ``rev``."""
    result = subprocess.run(["git", "show", f"{rev}:{Path(path).as_posix()}"], capture_output=True)
    if result.returncode != 0:
        raise NotCommitted(processes.error_line(result.stderr.decode(errors="replace"), result.returncode))
    return result.stdout
