"""The rules of logging a result, without a server: dirty checkouts, run names, mended runs, signals."""

import os
import signal
import subprocess
import types

import pytest

from stages.lib import tracking
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


class StoreThatIsSignalled:
    """An MLflow client whose create_run makes the run, then receives SIGTERM before it answers (CI caught a
    publish stopped there: its run was left RUNNING, yet it said it had marked it FAILED)."""

    def __init__(self):
        self.calls = []

    def create_run(self, experiment_id, **kwargs):
        self.calls.append(("create_run", experiment_id))
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: still inside create_run
        for _ in range(1000):
            pass
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args)) or []


def test_a_signal_inside_create_run_waits_for_the_run_id_and_the_run_is_marked_failed():
    client = StoreThatIsSignalled()
    with pytest.raises(tracking.Terminated, match="SIGTERM"), tracking.terminate_on_signals():
        tracking.log_run(
            client, "1", run_name="r", tags={}, params={}, history=[], metrics={}, start_ms=0, end_ms=None,
            attempt="a", log_rest=lambda run_id: pytest.fail("went on logging after SIGTERM"),
        )  # fmt: skip
    assert ("set_terminated", "r1", "FAILED") in client.calls
    assert [c[0] for c in client.calls] == ["create_run", "set_terminated"]  # nothing else was logged
    assert tracking._Held.current is None  # and signals are no longer held


def test_held_signals_are_raised_on_release_and_only_then():
    with tracking.terminate_on_signals():
        held = tracking.hold_signals()
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass  # not raised here
        with pytest.raises(tracking.Terminated, match="SIGINT"):
            held.release()
        quiet = tracking.hold_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        quiet.release(raise_pending=False)  # dropped: the caller raises its own error
        with pytest.raises(tracking.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # no longer held
            for _ in range(1000):
                pass
