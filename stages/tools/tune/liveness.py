"""No trial RUNNING forever: a worker that dies has its trial failed and run again once.

On one machine a trial's worker is a process id (``worker_id``): every process
of the study checks, before it asks for a trial, whether the RUNNING trials'
workers still run (``stages.lib.processes``, the project's one answer to "is
this process alive"). Across machines Optuna's heartbeat (RDB storages) notices
the silence: ``Heartbeat`` records it while a trial trains. Either way the trial
ends FAIL and Optuna's retry callback queues its params again once; the failed
trial then no longer counts towards the study's N (``counted``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from stages.lib import processes

MAX_RETRY = 1  # a trial whose worker died or was stopped is run again once, as a new trial
# In the command line of every worker (`python -m stages.tools.tune worker`, `make tune-worker`).
WORKER_MARKER = b"stages.tools.tune"


def worker_id() -> dict[str, Any]:
    """This worker, as a trial records it: the machine and the process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def is_dead(worker: Mapping[str, Any] | None) -> bool:
    """Whether a trial's worker was a process on this machine that no longer runs (a number reused by
    another program counts as gone; where ``/proc`` cannot tell, a live number counts as alive)."""
    if not worker or worker.get("host") != socket.gethostname():
        return False
    if worker["pid"] == os.getpid():
        return False
    return processes.runs(worker["pid"], WORKER_MARKER) is False


def fail_dead_trials(study: Any, on_failed: Callable[[Any, Any], None]) -> list[int]:
    """Fail the RUNNING trials whose worker is gone (same machine: by process; others: heartbeat)."""
    import optuna  # noqa: PLC0415

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not is_dead(trial.user_attrs.get("worker")):
            continue
        try:
            frozen = study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        failed.append(trial.number)
        on_failed(study, frozen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # RDB: heartbeat; runs the storage's stale callback
    return failed


def retry(study: Any, trial: Any) -> bool:
    """Queue the trial's params once more (Optuna's retry callback); whether it did."""
    import optuna  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = len(study.get_trials(deepcopy=False))
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
        return len(study.get_trials(deepcopy=False)) > before


def retried_trial(study: Any, number: int) -> int | None:
    """The number of the failed trial that RUNNING trial ``number`` runs again, or None."""
    import optuna  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental since Optuna 2.8
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number == number:
                return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return None


def counted(trials: list) -> list:
    """The trials that count towards the study's N: all but those that failed and were run again."""
    import optuna  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental since Optuna 3.0
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history
        retried = {number for trial in trials for number in history(trial)}
    return [t for t in trials if t.number not in retried]


class Heartbeat:
    """Optuna's heartbeat for an ask-and-tell trial: a thread recording it every interval (RDB only).

    By hand because Optuna beats only inside ``study.optimize`` (its heartbeat thread is private), and a worker
    asks and tells. The storage's heartbeat methods are public; reaching the storage and the trial's id is not.
    """

    def __init__(self, study: Any, trial: Any) -> None:
        self.storage, self.trial_id = study._storage, trial._trial_id
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        if interval:
            self.thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self.thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the grace period covers several
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
