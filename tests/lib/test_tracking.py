"""The rules of logging a result, without a server: dirty checkouts, run names, mended runs."""

import subprocess

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
