"""The rules of logging a result, without a server: dirty checkouts, run names, mended runs, signals."""

import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from stages.lib import stopping, tracking
from stages.publish import run_name
from tests.conftest import commit_all


def test_no_store_yet_means_no_run(tmp_path):
    assert tracking.find_run(f"sqlite:///{tmp_path}/mlflow.db", "k") is None
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create the store


def test_a_dead_process_is_not_alive():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not tracking.process_alive(proc.pid)


def test_dirty_means_changes_a_commit_does_not_hold(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "params.yaml").write_text("a: 1\n")
    (repo / "dvc.lock").write_text("x\n")
    (repo / "reports").mkdir()
    (repo / "reports" / "metrics.json").write_text("{}\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    commit_all(repo, "init")
    assert not tracking.dirty(repo)
    (repo / "dvc.lock").write_text("y\n")  # what `dvc repro` rewrites itself
    (repo / "reports" / "metrics.json").write_text('{"a": 1}\n')
    assert not tracking.dirty(repo)
    (repo / "params.yaml").write_text("a: 2\n")
    assert tracking.dirty(repo)
    facts = tracking.git_facts(repo)
    assert facts[tracking.DIRTY_TAG] == "true"
    assert run_name(facts, {}) == f"workspace@{facts['mlflow.source.git.commit'][:7]}-dirty"
    assert run_name(facts, {"DVC_EXP_NAME": "lucky-lion"}) == "lucky-lion"


def test_the_git_remote_is_tagged_without_credentials(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(
        ["git", "-C", str(repo), "remote", "add", "origin", "https://bob:s3cret@git.example/x.git"], check=True
    )
    assert tracking.git_facts(repo)["mlflow.source.git.repoURL"] == "https://***@git.example/x.git"


class SignalledStore:
    """An MLflow client that receives SIGTERM inside the first of each request named in ``at``, as a publish
    stopped by a CI time-out (or an impatient second Ctrl-C) does; it records every request."""

    def __init__(self, *at):
        self.at, self.calls = set(at), []

    def create_run(self, experiment_id, **kwargs):
        self._request("create_run", experiment_id)
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

    def _request(self, name, *args):
        self.calls.append((name, *args))
        if name in self.at:
            self.at.discard(name)
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: still inside the request
            for _ in range(1000):
                pass
            self.calls.append(("answered", name))
        return []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self._request(name, *args)


def log_run(client, log_rest=lambda run_id: None):
    tracking.log_run(
        client, "1", run_name="r", tags={}, params={}, history=[], metrics={}, start_ms=0, end_ms=None,
        attempt="a", log_rest=log_rest,
    )  # fmt: skip


@pytest.mark.parametrize("at", ["create_run", "log_batch", "log_artifact"])
def test_sigterm_inside_a_request_stops_after_it_and_the_run_is_marked_failed(at):
    client = SignalledStore(at)
    rest = lambda run_id: client.log_artifact(run_id, "metrics.json")  # noqa: E731
    with pytest.raises(stopping.Terminated) as stop, stopping.deferred_signals():
        log_run(client, rest)
    assert (stop.value.signal_name, stop.value.run_id, stop.value.state) == ("SIGTERM", "r1", "FAILED")
    names = [c[0] for c in client.calls]
    after = names[names.index(at) + 1 :]
    assert after[0] == "answered"  # the request was not cut short
    assert not {"log_batch", "log_artifact"} & set(after[1:])  # nothing else was logged
    assert client.calls[-1] == ("set_terminated", "r1", "FAILED")


def test_a_run_the_store_would_not_mark_is_said_to_be_running():
    client = SignalledStore("log_batch")
    client.set_terminated = lambda *args: (_ for _ in ()).throw(OSError("store gone"))
    with pytest.raises(stopping.Terminated) as stop, stopping.deferred_signals():
        log_run(client)
    assert (stop.value.run_id, stop.value.state, stop.value.forced) == ("r1", "RUNNING", False)


def test_a_second_signal_while_marking_the_run_says_it_may_be_running():
    client = SignalledStore("log_batch", "set_terminated")
    with pytest.raises(stopping.Terminated) as stop, stopping.deferred_signals():
        log_run(client)
    assert (stop.value.run_id, stop.value.state, stop.value.forced) == ("r1", "RUNNING", True)


def test_two_signals_in_one_request_stop_at_once_without_another_request():
    client = SignalledStore("log_batch")

    def twice(run_id, **kwargs):
        client.calls.append(("log_batch", run_id))
        signalled_twice = [signal.SIGTERM, signal.SIGINT]
        for signum in signalled_twice:
            os.kill(os.getpid(), signum)
            for _ in range(1000):
                pass
        pytest.fail("went on after the second signal")

    client.log_batch = twice
    with pytest.raises(stopping.Terminated) as stop, stopping.deferred_signals():
        log_run(client)
    assert (stop.value.run_id, stop.value.state, stop.value.forced) == ("r1", "RUNNING", True)
    assert [c[0] for c in client.calls][-1] == "log_batch"  # nothing after: not even marking the run


def test_a_signal_stops_the_wait_for_a_store_lock_another_process_holds(tmp_path):
    lock = tmp_path / "mlflow.db.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        with pytest.raises(stopping.Terminated), stopping.deferred_signals():
            timer.start()
            with tracking.store_lock(f"sqlite:///{tmp_path}/mlflow.db"):
                pytest.fail("took a lock another process holds")
        assert time.monotonic() - started < 5  # the holder keeps it for 20 s
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(20)
"""


@pytest.mark.slow  # a real MLflow store
def test_a_pickled_model_is_refused_before_it_is_loaded(tmp_path, monkeypatch):
    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):  # logged as an instance: cloudpickled
        def predict(self, context, model_input):
            return model_input

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[])
    with pytest.raises(tracking.TrackingError, match=r"was not logged from code \(its python_function loader is "):
        tracking.refuse_pickled(info.model_uri)
    # Its MLmodel edited to name the code-model loader: still a pickle (no code path, which MLflow goes by).
    [mlmodel] = tmp_path.glob("**/MLmodel")
    mlmodel.write_text(
        mlmodel.read_text().replace("loader_module: mlflow.pyfunc.model", f"loader_module: {tracking.CODE_LOADER}")
    )
    assert f"loader_module: {tracking.CODE_LOADER}" in mlmodel.read_text()
    with pytest.raises(tracking.TrackingError, match=r"with no code path\): loading it would unpickle it"):
        tracking.refuse_pickled(info.model_uri)
    # And MLflow itself refuses in a process that says so (what predict, the demo and serve's workers set).
    monkeypatch.setenv(*next(iter(tracking.NO_PICKLES.items())))
    with pytest.raises(mlflow.exceptions.MlflowException, match="Deserializing model using pickle is disallowed"):
        mlflow.pyfunc.load_model(info.model_uri)
