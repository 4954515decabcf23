"""SIGTERM and Ctrl-C while publishing: stop between two store requests, never inside one.

A signal handler that raised at once would land anywhere, usually inside
SQLAlchemy building or running a request. A request cut off there can leave
its SQLite transaction, and the database's lock, with a connection that nobody
closes: marking the run FAILED then waits for that lock for MLflow's 20 s and
fails, and the run stays RUNNING. So, within ``deferred_signals()``, a signal
is noted and raised as ``Terminated`` at the next ``stop_if_signalled()``: the
code that writes to the store calls it between its steps and while it waits
(a step may be several requests: logging the model is the longest). What
blocks in the meantime (a request that hangs, a lock another process holds)
is not interrupted by a first signal; a second one raises at once, wherever
the code is (``forced``): the way out of a hang, which may leave a run
RUNNING for a later publish to mend.

The code tells the block which run a stop would concern (``concerning``), so
that every ``Terminated``, a forced one too, names it and its status. Signal
handlers run in the main thread only: call all of this from there.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived while publishing (a BaseException, so that nothing on the way swallows it).

    ``run_id``: the run it concerns, once one was made; ``state``: that run's status as this process last
    knew it ("RUNNING", "FAILED", or "FINISHED": only its model's registration or judging was cut short);
    ``forced``: a second signal, raised inside whatever ran (the store may not have heard the last request)."""

    def __init__(
        self, signal_name: str, run_id: str | None = None, state: str | None = None, forced: bool = False
    ) -> None:
        super().__init__(signal_name, run_id, state, forced)
        self.signal_name, self.run_id, self.state, self.forced = signal_name, run_id, state, forced


class Block:
    """What one ``deferred_signals()`` block knows: the first signal not yet raised, the run a stop concerns."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.run_id: str | None = None
        self.state: str | None = None

    def stop(self, forced: bool = False) -> Terminated:
        assert self.signal is not None
        return Terminated(self.signal, self.run_id, self.state, forced)


_current: Block | None = None


def concerning(run_id: str, state: str) -> None:
    """From now on, a stop concerns run ``run_id``, whose status is ``state`` (a no-op outside a block)."""
    if _current is not None:
        _current.run_id, _current.state = run_id, state


def stop_if_signalled() -> None:
    """Raise ``Terminated`` if a signal came since the block began (a no-op outside ``deferred_signals``)."""
    if _current is not None and _current.signal is not None:
        raise _current.stop()


@contextlib.contextmanager
def deferred_signals() -> Iterator[Block]:
    """Within the block, SIGTERM and SIGINT wait for the next ``stop_if_signalled()``; a second one raises at once.

    Yields the block's state: a signal that came after the last ``stop_if_signalled()`` is still in
    ``.signal`` at the end."""
    global _current  # the signal handler reaches the block's state through it

    block = Block()

    def note(signum: int, frame: Any) -> None:
        if block.signal is not None:
            raise block.stop(forced=True)
        block.signal = signal.Signals(signum).name

    outer, _current = _current, block
    previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield block
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _current = outer
