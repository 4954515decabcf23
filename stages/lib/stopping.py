"""SIGTERM and Ctrl-C while publishing: stop between two store requests, never inside one.

A signal handler that raised at once would land anywhere, usually inside
SQLAlchemy building or running a request (seen: 6 of 6 tries). A request cut
off there can leave its SQLite transaction, and the database's lock, with a
connection that nobody closes: marking the run FAILED then waits for that lock
for MLflow's 20 s and fails, and the run stays RUNNING. So, within
``stop_on_signals()``, a signal is noted and raised as ``Terminated`` at the
next ``checkpoint()``: the code that writes to the store calls it between its
requests (and while it waits). A second signal raises at once: the way out of
a request that hangs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived while publishing (a BaseException, so that nothing on the way swallows it).

    ``run_id``: the run it concerns, if one was made; ``state``: that run's status once stopped ("FAILED",
    "FINISHED": only its model's registration was cut short, or "RUNNING": it could not be marked);
    ``forced``: a second signal, raised inside whatever ran."""

    def __init__(
        self, signal_name: str, run_id: str | None = None, state: str | None = None, forced: bool = False
    ) -> None:
        super().__init__(signal_name, run_id, state, forced)
        self.signal_name, self.run_id, self.state, self.forced = signal_name, run_id, state, forced

    def about(self, run_id: str, state: str | None) -> Terminated:
        """The same stop, now known to concern ``run_id`` in ``state``."""
        return Terminated(self.signal_name, run_id, state, self.forced)


class Signals:
    """The signals noted within ``stop_on_signals()``, not yet raised."""

    def __init__(self) -> None:
        self.pending: list[str] = []


_current: Signals | None = None


def checkpoint() -> None:
    """Raise ``Terminated`` if a signal came since the block began (a no-op outside ``stop_on_signals``)."""
    if _current is not None and _current.pending:
        raise Terminated(_current.pending[0])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Signals]:
    """Within the block, SIGTERM and SIGINT wait for the next ``checkpoint()``; a second one raises at once.

    Yields the noted signals: one that came after the block's last checkpoint is still in ``.pending``."""
    global _current  # the signal handler reaches the block's state through it

    noted = Signals()

    def note(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if noted.pending:
            raise Terminated(noted.pending[0], forced=True)
        noted.pending.append(name)

    outer, _current = _current, noted
    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield noted
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _current = outer
