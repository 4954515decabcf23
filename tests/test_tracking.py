"""The rules of logging a result, without a server: who keeps a claimed result, dirty checkouts, run names."""

import os
import subprocess
import sys
import types

from stages.lib import processes, tracking
from stages.publish import run_name
from tests.conftest import commit_all


def run(run_id, status, claim_s=None, start_time=0):
    tags = {} if claim_s is None else {tracking.CLAIM_TAG: tracking.claim_stamp(run_id, int(claim_s * 1e9))}
    return types.SimpleNamespace(
        info=types.SimpleNamespace(run_id=run_id, status=status, start_time=start_time),
        data=types.SimpleNamespace(tags=tags),
    )


def test_the_oldest_live_claim_keeps_the_result():
    now = 1_000_000.0
    mine, older = run("b", "RUNNING", now - 1), run("a", "RUNNING", now - 2)
    assert tracking.winner([mine, older], "b", now) is older
    assert tracking.winner([mine, older], "a", now) is None  # the older claimant goes on


def test_a_finished_run_always_keeps_the_result():
    now = 1_000_000.0
    finished = run("z", "FINISHED", start_time=5)
    assert tracking.winner([run("a", "RUNNING", now - 9), finished], "a", now) is finished


def test_failed_and_stale_claims_do_not_count():
    now = 1_000_000.0
    failed = run("a", "FAILED", now - 5)
    stale = run("c", "RUNNING", now - tracking.STALE_AFTER_S - 1)
    assert tracking.winner([failed, stale, run("b", "RUNNING", now - 1)], "b", now) is None


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


def test_a_publisher_still_registering_is_left_to_it():
    import socket

    def finished(host, pid, end_s):
        tags = {tracking.HOST_TAG: host, tracking.PID_TAG: str(pid)}
        return types.SimpleNamespace(
            info=types.SimpleNamespace(end_time=int(end_s * 1000)), data=types.SimpleNamespace(tags=tags)
        )

    here, now = socket.gethostname(), 1_000_000.0
    # Not a publish process: a reused pid does not count.
    alive = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE
    )
    try:
        alive.stdout.readline()  # running: its exec is over (until then its command line is empty: "can't tell")
        # Where /proc is not our PID namespace's, a live pid is all that can be known.
        assert tracking.publisher_busy(finished(here, alive.pid, now), now) is not processes.own_proc()
    finally:
        alive.kill()
        alive.wait()
    assert not tracking.publisher_busy(finished(here, os.getpid(), now), now)  # that is this very process
    publishing = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(30)", "stages.publish"],
        stdout=subprocess.PIPE,
    )
    try:
        publishing.stdout.readline()
        assert tracking.publisher_busy(finished(here, publishing.pid, now), now)
    finally:
        publishing.kill()
        publishing.wait()
    assert not tracking.publisher_busy(finished(here, publishing.pid, now), now)
    assert tracking.publisher_busy(finished("elsewhere", 1, now - 10), now)  # another host, just finished
    assert not tracking.publisher_busy(finished("elsewhere", 1, now - 600), now)  # long ago: gone
