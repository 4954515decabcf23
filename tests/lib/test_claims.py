"""Claims against a real MLflow store: the store refuses a second claim, heartbeats and not clocks decide
staleness, one waiter takes a stale claim over, and nothing is left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from stages.lib import claims, stopping

MODEL = "mnist-classifier"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('claims')}/mlflow.db")


def names(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models(f"name LIKE '{MODEL}.claim.%'"))


@pytest.mark.slow
def test_the_store_refuses_a_second_claim(client):
    first = claims.acquire(client, MODEL, "result", "k1")
    assert first is not None and first.generation == 1
    with pytest.raises(claims.ClaimTimeout, match=r"host .*, pid \d+\) still holds it"):
        claims.acquire(client, MODEL, "result", "k1", wait_s=0.5, poll_s=0.1)
    first.release()
    second = claims.acquire(client, MODEL, "result", "k1", wait_s=0.5)
    assert second is not None and second.generation == 1
    second.release()
    assert names(client) == []


@pytest.mark.slow
def test_a_retried_creation_is_recognised_as_the_owners(client):
    name = claims.prefix(MODEL, "result", "k2") + "1"
    assert claims._create(client, name, "token-a", "h", 1)
    assert claims._create(client, name, "token-a", "h", 1)  # the retry: "already exists", but ours
    assert not claims._create(client, name, "token-b", "h", 1)
    client.delete_registered_model(name)


@pytest.mark.slow
def test_a_beating_claim_is_never_stale_whatever_the_clocks(client, monkeypatch):
    holder = claims.acquire(client, MODEL, "result", "k3", host="runner-1")
    with holder.beating(beat_s=0.1):
        # This waiter's wall clock is a day ahead: only the heartbeat counts.
        monkeypatch.setattr(time, "time", lambda: 1e10)
        with pytest.raises(claims.ClaimTimeout):
            claims.acquire(client, MODEL, "result", "k3", host="runner-2", stale_s=0.8, wait_s=2, poll_s=0.05)
    assert not holder.lost()
    holder.release()


@pytest.mark.slow
def test_one_waiter_takes_a_stale_claim_over(client):
    dead = claims.acquire(client, MODEL, "result", "k4", host="runner-1")  # never beats: its host died
    dead.tag(claims.RUN_TAG, "run-of-the-dead")
    won, errors, over = [], [], threading.Event()

    def wait(host: str) -> None:
        try:
            claim = claims.acquire(client, MODEL, "result", "k4", host=host, stale_s=0.5, wait_s=3, poll_s=0.05)
        except claims.ClaimTimeout as exc:
            errors.append(exc)
            over.set()
            return
        won.append(claim)
        with claim.beating(beat_s=0.1):  # as publish does: the winner beats while it works
            over.wait(timeout=10)

    threads = [threading.Thread(target=wait, args=(f"runner-{i}",)) for i in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(errors) == 1, (won, errors)
    assert won[0].generation == 2 and won[0].took_over.run_id == "run-of-the-dead"
    assert dead.lost()  # the old holder, should it wake up, knows it must stop
    won[0].release()
    assert names(client) == []


@pytest.mark.slow
def test_a_dead_publisher_on_this_host_is_taken_over_at_once(client):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    name = claims.prefix(MODEL, "result", "k5") + "1"
    client.create_registered_model(
        name, tags={claims.HOST_TAG: socket.gethostname(), claims.PID_TAG: str(proc.pid), claims.BEAT_TAG: "0"}
    )
    started = time.monotonic()
    claim = claims.acquire(client, MODEL, "result", "k5", stale_s=60)
    assert claim.took_over is not None and time.monotonic() - started < 5
    claim.release()
    # A claim left by a dead publisher of another result is swept; a live one (this process) is not.
    client.create_registered_model(name, tags={claims.HOST_TAG: socket.gethostname(), claims.PID_TAG: str(proc.pid)})
    live = claims.acquire(client, MODEL, "result", "k6")
    assert claims.sweep_dead(client, MODEL) == [name]
    assert names(client) == [live.name]
    live.release()


@pytest.mark.slow
def test_done_ends_the_wait(client):
    holder = claims.acquire(client, MODEL, "result", "k7")
    calls = []
    assert claims.acquire(client, MODEL, "result", "k7", done=lambda: calls.append(1) or len(calls) > 2) is None
    holder.release()


def test_only_a_publish_process_counts_as_alive_here():  # fast: processes only, no store
    here = socket.gethostname()
    publishing = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(30)", "stages.publish"],
        stdout=subprocess.PIPE,
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(30)"], stdout=-1)
    try:
        publishing.stdout.readline()  # running: its exec is over (until then its command line is empty)
        other.stdout.readline()
        assert not claims.dead_here({claims.HOST_TAG: here, claims.PID_TAG: str(publishing.pid)}, here)
        # A reused pid running something else: dead, where /proc can tell (this PID namespace's).
        from stages.lib import processes

        assert claims.dead_here({claims.HOST_TAG: here, claims.PID_TAG: str(other.pid)}, here) is processes.own_proc()
    finally:
        for proc in (publishing, other):
            proc.kill()
            proc.wait()
    assert claims.dead_here({claims.HOST_TAG: here, claims.PID_TAG: str(publishing.pid)}, here)
    assert not claims.dead_here({claims.HOST_TAG: here, claims.PID_TAG: str(os.getpid())}, here)  # this process
    assert not claims.dead_here({claims.HOST_TAG: "elsewhere", claims.PID_TAG: "1"}, here)  # cannot be seen
    assert not claims.dead_here({claims.PID_TAG: str(publishing.pid)}, here)  # no host: not known to be here
    assert not any(claims.dead_here({claims.HOST_TAG: here, claims.PID_TAG: pid}, here) for pid in ("", "12a"))


@pytest.mark.slow
def test_a_holder_that_wakes_after_being_taken_over_and_released_knows_it_and_deletes_nothing(client):
    sleeper = claims.acquire(client, MODEL, "result", "k8", host="runner-1")
    taker = claims.acquire(client, MODEL, "result", "k8", host="runner-2", stale_s=0, poll_s=0.01)
    assert taker.generation == 2 and sleeper.lost()
    taker.release()  # the taker published and released: no claim left, numbering starts again
    newcomer = claims.acquire(client, MODEL, "result", "k8", host="runner-3")
    assert newcomer.generation == 1
    assert sleeper.lost()  # generation 1 exists again, but it is not the sleeper's
    sleeper.release()  # must not delete the newcomer's claim
    assert names(client) == [newcomer.name] and not newcomer.lost()
    newcomer.release()
    assert names(client) == []


@pytest.mark.slow
def test_release_never_raises_while_unwinding(client):
    claim = claims.acquire(client, MODEL, "result", "k9")

    class Down:
        def search_registered_models(self, *args, **kwargs):
            raise ConnectionError("the store went away")

    claim.client = Down()
    claim.release()  # the original error, not this one, is what a failed publish reports
    claim.client = client
    claim.release()


@pytest.mark.slow
def test_a_signal_while_waiting_for_a_claim_stops_the_wait(client):
    holder = claims.acquire(client, MODEL, "result", "k10")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    with pytest.raises(stopping.Terminated, match="SIGTERM"), stopping.deferred_signals():
        timer.start()
        claims.acquire(client, MODEL, "result", "k10", wait_s=30, poll_s=0.05)
    assert time.monotonic() - started < 10  # not the 30 s wait
    assert names(client) == [holder.name]  # and nothing claimed
    holder.release()


@pytest.mark.parametrize(
    ("stop", "kept"),
    [
        (stopping.Terminated("SIGTERM", "r1", "FAILED"), False),
        (stopping.Terminated("SIGTERM", "r1", "FINISHED"), False),
        (stopping.Terminated("SIGTERM", "r1", "RUNNING"), True),  # the store would not mark it
        (stopping.Terminated("SIGTERM", "r1", "FINISHED", forced=True), True),  # no more requests
        (RuntimeError("the store went away"), False),
    ],
)
@pytest.mark.slow
def test_a_claim_is_kept_after_a_stop_that_may_leave_a_run_running(client, stop, kept):
    """Kept, it goes stale, and whoever takes it over marks that run FAILED, from any host."""
    with pytest.raises(type(stop)), claims.acquire(client, MODEL, "result", "k11").holding():
        raise stop
    assert names(client) == ([claims.prefix(MODEL, "result", "k11") + "1"] if kept else [])
    for name in names(client):
        client.delete_registered_model(name)


# --- fast: what is read from a claim's tags, without a store ----------------------------------------------------


class Models:
    """A stand-in for MlflowClient's registered-model search: SQL's LIKE, where ``_`` matches any character."""

    def __init__(self, *names: str, tags: dict[str, str] | None = None) -> None:
        self.models = [SimpleNamespace(name=n, tags=dict(tags or {})) for n in names]

    def search_registered_models(self, filter_string: str) -> list:
        pattern = filter_string.split("'")[1]
        regex = "".join("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in pattern)
        return [m for m in self.models if re.fullmatch(regex, m.name)]


def test_generations_are_the_numbered_claims_of_exactly_one_prefix():
    name_prefix = claims.prefix("my_model", "publish", "abc")
    assert name_prefix == "my_model.claim.publish.abc."
    client = Models(
        f"{name_prefix}1",
        f"{name_prefix}12",
        f"{name_prefix}x",  # not a generation
        "myXmodel.claim.publish.abc.3",  # LIKE's _ matched another model's claim
        "my_model.claim.publish.abcd.4",  # another key
        "my_model",
    )
    assert sorted(claims.generations(client, name_prefix)) == [1, 12]
