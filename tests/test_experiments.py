"""The MLflow rule through real DVC commands on a clone (slow: real MNIST, 1-epoch trainings).

One run per distinct result per store: a fresh store gets the result, the same
store twice gets nothing, queued experiments (`dvc queue start -j 2`) get one
run each, outputs that DVC restored from its cache are not logged again where
they already are, and a new store gets them once. (DVC saves no run-cache for
train and evaluate: their history and reports are kept in git, out of DVC's
cache; outputs come back with git and `dvc checkout` or `dvc pull`.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import commit_all, mlflow_runs, queue_seeds, run_in, tiny_clone

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    path = tiny_clone(tmp_path_factory.mktemp("exp") / "clone")
    commit_all(path, "tiny")
    return path


def test_repro_queue_run_cache_and_stores(clone):
    import mlflow

    uri = f"sqlite:///{clone}/mlflow.db"
    first = run_in(["dvc", "repro"], clone)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "is the first champion" in first.stdout and "epoch 1/1" in first.stdout  # trained here
    [run] = mlflow_runs(uri, "FINISHED")
    assert run.info.run_name.startswith("workspace@")
    commit_all(clone, "results")

    again = run_in(["dvc", "repro"], clone)
    assert again.returncode == 0 and "this result is already in" in again.stdout
    assert "epoch 1/1" not in again.stdout and len(mlflow_runs(uri, "FINISHED")) == 1

    status = queue_seeds(clone, (2, 3))
    assert status.count("Success") == 2, status

    runs = mlflow_runs(uri, "FINISHED")
    assert len(runs) == 3
    names = {r.data.tags.get("dvc.exp_name") for r in runs} - {None}
    assert len(names) == 2 and all(r.info.run_name in names for r in runs if r.data.tags.get("dvc.exp_name"))
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name = 'mnist-classifier'")
    assert len(versions) == 3
    champion = client.get_model_version_by_alias("mnist-classifier", "champion")
    assert float(champion.tags["val_accuracy"]) == max(float(v.tags["val_accuracy"]) for v in versions)

    # Another seed in the workspace (trained and logged), then back to the commit: git restores
    # params, dvc.lock and reports, `dvc checkout` the model from DVC's cache; nothing is trained,
    # and that result is already in the store.
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["seed"] = 9
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    other_seed = run_in(["dvc", "repro"], clone)
    assert "epoch 1/1" in other_seed.stdout and len(mlflow_runs(uri, "FINISHED")) == 4
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=clone, check=True)
    assert run_in(["dvc", "checkout"], clone).returncode == 0
    restored = run_in(["dvc", "repro"], clone)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert "epoch 1/1" not in restored.stdout, restored.stdout  # restored, not trained
    assert "already in" in restored.stdout, restored.stdout
    assert len(mlflow_runs(uri, "FINISHED")) == 4

    # A new store gets it once, marked as not timed (nothing was trained here for it).
    other = f"sqlite:///{clone}/other.db"
    for _ in range(2):
        assert run_in(["dvc", "repro"], clone, MLFLOW_TRACKING_URI=other).returncode == 0
    [new] = mlflow_runs(other, "FINISHED")
    assert "restored by DVC" in new.data.tags["pipeline.timing"]


def test_a_queue_on_a_fresh_store_makes_one_run_each(clone):
    """Two queued experiments publishing at once to a store that does not exist yet: MLflow creates its
    schema with the first client, inside the store's lock (two at once failed one of them)."""
    uri = f"sqlite:///{clone}/fresh.db"
    assert not (clone / "fresh.db").exists()
    status = queue_seeds(clone, (4, 5), MLFLOW_TRACKING_URI="sqlite:///fresh.db")
    assert "Failed" not in status and status.count("Success") >= 2, status  # the module's earlier tasks too
    assert len(mlflow_runs(uri, "FINISHED")) == 2
