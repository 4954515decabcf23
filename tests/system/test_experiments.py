"""The MLflow rule through real DVC commands on a clone (slow: 1-epoch trainings of a tiny network on a tiny
synthetic data set, ``tiny``: what is shown here is what DVC and the rule do, whatever the data).

One run per distinct result per store: a fresh store gets the result, the same
store twice gets nothing, queued experiments (`dvc queue start -j 2`) publishing
at once to a store that does not exist yet get one run each, outputs that DVC
restored from its cache are not logged again where they already are, and a
store without them gets them once. (DVC saves no run-cache for train and
evaluate: their history and reports are kept in git, out of DVC's cache;
outputs come back with git and `dvc checkout`, `dvc exp apply` or `dvc pull`.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import conftest
from tests.conftest import commit_all, make_synthetic, queue_seeds, run_in, tiny_clone

pytestmark = pytest.mark.slow
MODEL = "tiny-classifier"


def mlflow_runs(uri: str, status: str | None = None) -> list:
    return conftest.mlflow_runs(uri, status, experiment="tiny")


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone whose data set is four IDX files of 200 synthetic images in data/external/tiny (git-ignored, as a
    user's data would be), published as ``tiny``."""
    path = tiny_clone(tmp_path / "clone")
    make_synthetic(n_train_per_class=20, n_test_per_class=5).write(path / "data" / "external" / "tiny")
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["fetch"].update(dataset="idx", name="tiny", path="data/external/tiny")
    params["evaluate"].update(gallery_size=4, sample_size=4)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
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

    # A value train would refuse stops the experiment at fetch, before DVC removes train's outputs; DVC leaves
    # the value in params.yaml (git restore puts the committed one back).
    bad = run_in(["dvc", "exp", "run", "-S", "model.activation=gelu"], clone)
    assert bad.returncode != 0 and "fetch: error: params: model.activation must be one of" in bad.stderr, bad.stderr
    assert (clone / "data" / "model" / "model.keras").is_file() and (clone / "reports/train/history.csv").is_file()
    assert run_in(["git", "restore", "params.yaml"], clone).returncode == 0

    again = run_in(["dvc", "repro"], clone)
    assert again.returncode == 0 and "this result is already in" in again.stdout
    assert "epoch 1/1" not in again.stdout and len(mlflow_runs(uri, "FINISHED")) == 1

    # Two queued experiments publishing at once to a store that does not exist yet (a path relative to the
    # repository, which the experiments' copies resolve to this clone's): MLflow creates its schema with the
    # first client, inside the store's lock (two at once failed one of them).
    fresh = f"sqlite:///{clone}/fresh.db"
    assert not (clone / "fresh.db").exists()
    status = queue_seeds(clone, (2, 3), MLFLOW_TRACKING_URI="sqlite:///fresh.db")
    assert "Failed" not in status and status.count("Success") == 2, status
    runs = mlflow_runs(fresh, "FINISHED")
    assert len(runs) == 2 and len(mlflow_runs(uri, "FINISHED")) == 1
    names = {r.data.tags.get("dvc.exp_name") for r in runs}
    assert None not in names and len(names) == 2 and all(r.info.run_name in names for r in runs)
    client = mlflow.MlflowClient(fresh)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert float(champion.tags["val_accuracy"]) == max(float(v.tags["val_accuracy"]) for v in versions)

    # An experiment's outputs back in the workspace: `dvc exp apply` restores params and dvc.lock through git
    # and the model from DVC's cache; nothing is trained, and that result is already in the store it went to.
    applied = run_in(["dvc", "exp", "apply", sorted(names)[0]], clone)
    assert applied.returncode == 0, applied.stderr[-2000:]
    restored = run_in(["dvc", "repro"], clone, MLFLOW_TRACKING_URI=fresh)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert "epoch 1/1" not in restored.stdout, restored.stdout  # restored, not trained
    assert "already in" in restored.stdout, restored.stdout
    assert len(mlflow_runs(fresh, "FINISHED")) == 2

    # A store without that result gets it once, marked as not timed (nothing was trained here for it).
    for _ in range(2):
        assert run_in(["dvc", "repro"], clone).returncode == 0
    runs = mlflow_runs(uri, "FINISHED")
    assert len(runs) == 2
    [new] = [r for r in runs if r.info.run_id != run.info.run_id]
    assert "restored by DVC" in new.data.tags["pipeline.timing"]
