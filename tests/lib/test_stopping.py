"""Signals while publishing wait for the next checkpoint; a second one stops at once."""

import os
import signal

import pytest

from stages.lib import stopping


def signalled(signum=signal.SIGTERM):
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # the handler runs at one of these bytecodes
        pass


def test_a_signal_waits_for_the_next_checkpoint():
    with stopping.stop_on_signals() as noted:
        stopping.checkpoint()  # nothing yet
        signalled(signal.SIGINT)
        assert noted.pending == ["SIGINT"]  # noted, not raised
        with pytest.raises(stopping.Terminated, match="SIGINT") as stop:
            stopping.checkpoint()
    assert not stop.value.forced and stop.value.run_id is None


def test_a_second_signal_stops_at_once():
    with pytest.raises(stopping.Terminated) as stop, stopping.stop_on_signals():
        signalled()
        signalled(signal.SIGINT)
        pytest.fail("went on after the second signal")
    assert (stop.value.signal_name, stop.value.forced) == ("SIGTERM", True)


def test_outside_the_block_signals_are_handled_as_before():
    stopping.checkpoint()  # a no-op
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        with stopping.stop_on_signals():
            pass
        assert signal.getsignal(signal.SIGTERM) is not None
        signalled()
        assert caught == [signal.SIGTERM]
        stopping.checkpoint()  # nothing pending outside
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_about_keeps_the_signal_and_names_the_run():
    stop = stopping.Terminated("SIGTERM", forced=True).about("r1", "FINISHED")
    assert (stop.signal_name, stop.run_id, stop.state, stop.forced) == ("SIGTERM", "r1", "FINISHED", True)
