"""How many CPU cores this process may use: its CPU affinity (``taskset``) within its cgroup's quota
(``docker --cpus``), whichever is smaller.

``os.cpu_count()`` reports the machine's cores, and so do TensorFlow and
onnxruntime by default: in a container given two of sixteen cores, they would
start sixteen threads that fight over two. Training, evaluation, ``predict``
and the served model size their thread pools from ``usable()``.

Self-contained (the standard library only): the logged MLflow model carries a
copy of this file beside ``classifier.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def affinity() -> int:
    """The cores the scheduler may run this process on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def quota(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in cores (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), None when unlimited
    or unknown."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        limit = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if limit <= 0 or period <= 0 else limit / period
    except (OSError, ValueError):
        return None


def usable(root: Path = CGROUP) -> int:
    """Whole cores this process may use: at least 1; a quota of 1.5 cores counts as 2."""
    cores = affinity()
    share = quota(root)
    if share is not None:
        cores = min(cores, max(1, math.ceil(share)))
    return max(1, cores)
