"""Signals while publishing wait for the next stop_if_signalled(); a second one stops at once."""

import os
import signal

import pytest

from stages.lib import stopping


def signalled(signum=signal.SIGTERM):
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # the handler runs at one of these bytecodes
        pass


def test_a_signal_waits_for_the_next_stop_if_signalled():
    with stopping.deferred_signals() as block:
        stopping.stop_if_signalled()  # nothing yet
        signalled(signal.SIGINT)
        assert block.signal == "SIGINT"  # noted, not raised
        with pytest.raises(stopping.Terminated, match="SIGINT") as stop:
            stopping.stop_if_signalled()
    assert not stop.value.forced and stop.value.run_id is None
    assert stopping._current is None  # the block is gone


def test_a_stop_names_the_run_it_concerns_a_forced_one_too():
    with stopping.deferred_signals():
        stopping.concerning("r1", "RUNNING")
        signalled()
        with pytest.raises(stopping.Terminated) as stop:
            stopping.stop_if_signalled()
        assert (stop.value.run_id, stop.value.state, stop.value.forced) == ("r1", "RUNNING", False)
        stopping.concerning("r1", "FINISHED")
        with pytest.raises(stopping.Terminated) as forced:
            signalled(signal.SIGINT)
            pytest.fail("went on after the second signal")
    # The first signal's name, the run as last known, and that it was raised inside whatever ran.
    assert (forced.value.signal_name, forced.value.run_id, forced.value.state) == ("SIGTERM", "r1", "FINISHED")
    assert forced.value.forced


def test_outside_a_block_signals_are_handled_as_before():
    stopping.stop_if_signalled()  # a no-op
    stopping.concerning("r1", "RUNNING")  # a no-op
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        with stopping.deferred_signals():
            pass
        signalled()
        assert caught == [signal.SIGTERM]  # the handler from before the block is back
    finally:
        signal.signal(signal.SIGTERM, previous)
