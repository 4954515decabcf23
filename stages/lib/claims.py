"""Claims: one publisher at a time for a result (or a served model), enforced by the store, never by clocks.

Two publishers of one result must not both log it, and two registrations of
one served model must not both create a version, whichever hosts they run on
and however their clocks disagree. A claim is therefore something the store
itself refuses to create twice: a registered model named
``<model name>.claim.<kind>.<key>.<generation>`` (registered-model names are
unique in every MLflow store, SQLite or PostgreSQL, local or behind a server).
Whoever creates it holds the claim; everyone else waits.

- **Retries.** MLflow's client retries a request whose answer it did not
  get; a retried creation that the store had already committed answers
  "already exists". The claim carries its owner's random token, so the owner
  recognises its own claim instead of waiting for itself.
- **Heartbeat.** The holder bumps a counter tag every ``beat_s`` seconds
  while it works. A waiter compares counter values only, timed by its own
  monotonic clock: a claim whose counter has not moved for ``stale_s`` is
  stale, whatever the clocks of either host say. On the holder's own host a
  dead process id makes it stale at once.
- **Take-over.** A stale claim is not deleted (two waiters could each delete
  the other's new claim); the next generation is created instead, which again
  only one waiter can do. A holder that finds a newer generation has lost its
  claim and must stop writing (``lost``).
- **Release.** The holder deletes its generation and the older ones, so the
  registry keeps no claim once the work is done.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stages.lib import processes, stopping

TOKEN_TAG = "pipeline.claim.token"
HOST_TAG = "pipeline.claim.host"
PID_TAG = "pipeline.claim.pid"
BEAT_TAG = "pipeline.claim.beat"
RUN_TAG = "pipeline.claim.run"  # the run the holder is logging, once it exists
DESCRIPTION = "A publish in progress holds this claim; it is deleted when that publish ends (stages/lib/claims.py)."

BEAT_S = float(os.environ.get("PUBLISH_CLAIM_BEAT_S", "2"))
# Longer than a heartbeat can take on a slow server (MLflow's client: a 20 s time-out, one retry, back-off).
STALE_S = float(os.environ.get("PUBLISH_CLAIM_STALE_S", "90"))
WAIT_S = float(os.environ.get("PUBLISH_CLAIM_WAIT_S", "600"))
POLL_S = 0.5
PUBLISH_MARKER = b"stages.publish"


class ClaimTimeout(RuntimeError):
    """Another live publisher still held the claim when the wait ran out; ``holder`` describes it."""

    def __init__(self, holder: Holder, waited_s: float) -> None:
        super().__init__(f"{holder.describe()} still holds it after {waited_s:.0f}s")
        self.holder = holder


@dataclass
class Holder:
    """Another publisher's claim, as read from the store."""

    name: str
    generation: int
    tags: dict[str, str]

    @property
    def run_id(self) -> str | None:
        return self.tags.get(RUN_TAG)

    def describe(self) -> str:
        host, pid = self.tags.get(HOST_TAG, "?"), self.tags.get(PID_TAG, "?")
        run = f"run {self.run_id}" if self.run_id else "a publish"
        return f"{run} (host {host}, pid {pid})"


def prefix(model_name: str, kind: str, key: str) -> str:
    return f"{model_name}.claim.{kind}.{key}."


def generations(client: Any, name_prefix: str) -> dict[int, Any]:
    """The claim generations that exist for one prefix: {generation: registered model}."""
    found = {}
    for model in client.search_registered_models(f"name LIKE '{name_prefix}%'"):
        suffix = model.name.removeprefix(name_prefix)
        if model.name.startswith(name_prefix) and suffix.isdigit():
            found[int(suffix)] = model
    return found


def _tags(model: Any) -> dict[str, str]:
    tags = model.tags
    return dict(tags) if isinstance(tags, dict) else {t.key: t.value for t in tags}


def dead_here(tags: dict[str, str], host: str) -> bool:
    """Whether the claim was made on this host by a process that is no longer publishing."""
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != host or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return processes.runs(int(pid), PUBLISH_MARKER) is False


@dataclass
class Claim:
    """A claim this process holds: ``beating`` keeps it fresh, ``release`` ends it."""

    client: Any
    name_prefix: str
    generation: int
    token: str
    took_over: Holder | None = None  # the stale claim this one replaced
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return f"{self.name_prefix}{self.generation}"

    def tag(self, key: str, value: str) -> None:
        self.client.set_registered_model_tag(self.name, key, value)

    def lost(self) -> bool:
        """Whether this claim is no longer this process's: a waiter took it over (it found this one stale), or
        it is gone (the one who took over released it). Stop writing if so."""
        existing = generations(self.client, self.name_prefix)
        mine = existing.get(self.generation)
        return mine is None or _tags(mine).get(TOKEN_TAG) != self.token or any(g > self.generation for g in existing)

    @contextlib.contextmanager
    def beating(self, beat_s: float = BEAT_S) -> Iterator[Claim]:
        """Bump the heartbeat every ``beat_s`` seconds in a background thread, for the block."""

        def beat() -> None:
            count = 0
            while not self._stop.wait(beat_s):
                count += 1
                with contextlib.suppress(Exception):  # a store hiccup: the next beat tries again
                    self.tag(BEAT_TAG, str(count))

        thread = threading.Thread(target=beat, name="claim-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=beat_s + 30)

    @contextlib.contextmanager
    def holding(self, beat_s: float = BEAT_S) -> Iterator[Claim]:
        """Beat for the block, then release the claim; except after a stop that may leave a run RUNNING (a
        forced one, or one whose run the store would not mark FAILED): the claim then goes stale, and whoever
        takes it over, on any host, marks that run FAILED; a forced stop makes no more requests either."""
        keep = False
        try:
            with self.beating(beat_s):
                yield self
        except stopping.Terminated as stop:
            keep = stop.forced or stop.state == "RUNNING"
            raise
        finally:
            if not keep:
                self.release()

    def release(self) -> None:
        """Delete this claim and the older generations it superseded, only while it is still this process's
        (never a newer one, nor a claim someone made after this one was taken over and released). Never
        raises: it runs while unwinding, where the original error must stay the one reported."""
        with contextlib.suppress(Exception):
            existing = generations(self.client, self.name_prefix)
            mine = existing.get(self.generation)
            if mine is None or _tags(mine).get(TOKEN_TAG) != self.token:
                return
            for generation, model in sorted(existing.items(), reverse=True):
                if generation <= self.generation:
                    with contextlib.suppress(Exception):  # deleted meanwhile by another releaser
                        self.client.delete_registered_model(model.name)


def _create(client: Any, name: str, token: str, host: str, pid: int) -> bool:
    """Create the claim ``name``; True when this process holds it (created now, or by a retried request)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    tags = {TOKEN_TAG: token, HOST_TAG: host, PID_TAG: str(pid), BEAT_TAG: "0"}
    try:
        client.create_registered_model(name, tags=tags, description=DESCRIPTION)
        return True
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    try:  # a retry of our own creation answers "already exists": then it is ours
        return _tags(client.get_registered_model(name)).get(TOKEN_TAG) == token
    except MlflowException:
        return False  # released meanwhile: try again on the next round


def acquire(
    client: Any,
    model_name: str,
    kind: str,
    key: str,
    *,
    done: Callable[[], bool] = lambda: False,
    on_wait: Callable[[Holder], None] = lambda holder: None,
    stale_s: float = STALE_S,
    wait_s: float = WAIT_S,
    poll_s: float = POLL_S,
    host: str | None = None,
) -> Claim | None:
    """Hold the claim for ``key``, waiting while a live publisher holds it; None when ``done()`` says the
    work was finished by someone else meanwhile. Raises ``ClaimTimeout`` after ``wait_s`` of waiting."""
    host = host or socket.gethostname()
    name_prefix = prefix(model_name, kind, key)
    token = uuid.uuid4().hex
    started = time.monotonic()
    beats: dict[str, tuple[str, float]] = {}  # claim name -> (last beat seen, when it was first seen)
    announced: set[str] = set()
    while True:
        stopping.stop_if_signalled()
        if done():
            return None
        existing = generations(client, name_prefix)
        if not existing:
            if _create(client, f"{name_prefix}1", token, host, os.getpid()):
                return Claim(client, name_prefix, 1, token)
            continue
        top = max(existing)
        tags = _tags(existing[top])
        if tags.get(TOKEN_TAG) == token:
            return Claim(client, name_prefix, top, token)
        holder = Holder(existing[top].name, top, tags)
        now = time.monotonic()
        beat = tags.get(BEAT_TAG, "")
        if beats.get(holder.name, (None,))[0] != beat:
            beats[holder.name] = (beat, now)
        if dead_here(tags, host) or now - beats[holder.name][1] >= stale_s:
            if _create(client, f"{name_prefix}{top + 1}", token, host, os.getpid()):
                return Claim(client, name_prefix, top + 1, token, took_over=holder)
            continue
        if holder.name not in announced:
            announced.add(holder.name)
            on_wait(holder)
        if now - started >= wait_s:
            raise ClaimTimeout(holder, now - started)
        time.sleep(poll_s)


def sweep_dead(client: Any, model_name: str, host: str | None = None) -> list[str]:
    """Delete the claims this host's dead publishers left behind (SIGKILL, power cut); their names."""
    host = host or socket.gethostname()
    removed = []
    for model in client.search_registered_models(f"name LIKE '{model_name}.claim.%'"):
        if dead_here(_tags(model), host):
            with contextlib.suppress(Exception):
                client.delete_registered_model(model.name)
                removed.append(model.name)
    return removed
