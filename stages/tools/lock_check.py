"""Fail when ``dvc.lock`` is stale: the code or params changed since the pipeline last ran.

    python -m stages.tools.lock_check

``dvc status`` also reports data that is merely absent (a fresh CI checkout
has no DVC cache), which says nothing about the lock; this keeps only what
does: a dependency modified or added, a changed param, a changed command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from stages.lib import processes


def stale_entries(status: dict[str, Any]) -> list[str]:
    """One line per reason ``dvc.lock`` does not describe the committed code and params."""
    problems = []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):
                if entry != "always changed":
                    problems.append(f"{stage}: {entry}")
                continue
            for path, state in entry.get("changed deps", {}).items():
                if isinstance(state, dict):  # params: {"train": "modified"}
                    problems += [f"{stage}: param {key} {how}" for key, how in state.items()]
                elif state != "deleted" or not path.startswith("data/"):  # data not checked out here is fine
                    problems.append(f"{stage}: {path} {state}")
            for path, state in entry.get("changed outs", {}).items():
                if state == "modified":  # a committed output (metrics, reports) that its stage did not write
                    problems.append(f"{stage}: output {path} modified")
            for other in set(entry) - {"changed deps", "changed outs"}:
                problems.append(f"{stage}: {other}")
    return problems


def main() -> int:
    try:
        result = subprocess.run([processes.program("dvc"), "status", "--json"], capture_output=True, text=True)
    except FileNotFoundError:
        print(
            "lock-check: error: no dvc here: run it in the project's environment (`make lock-check`)", file=sys.stderr
        )
        return 2
    if result.returncode != 0:
        print(
            f"lock-check: error: dvc status failed: {processes.error_line(result.stderr, result.returncode)}",
            file=sys.stderr,
        )
        return 2
    problems = stale_entries(json.loads(result.stdout or "{}"))
    for line in problems:
        print(f"lock-check: {line}", file=sys.stderr)
    if problems:
        print("lock-check: dvc.lock is stale: run `dvc repro` and commit dvc.lock and reports/", file=sys.stderr)
        return 1
    print("lock-check: dvc.lock matches the code and params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
