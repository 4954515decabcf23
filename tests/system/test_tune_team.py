"""Studies shared through PostgreSQL with the real things (slow): two worker processes on one study, a worker
killed with SIGKILL mid-trial, and `tune best` reproducing the best trial through `dvc exp run`.

A clone of this repository with the tiny pipeline on synthetic digits (`tiny`: 2,500 training images, of which
preprocess keeps 250 for validation, and 500 test images; `dvc repro`), a throw-away PostgreSQL cluster as
TUNE_STORAGE, the clone's own SQLite MLflow store; trials of 2 epochs on 8-16 hidden units, and of 25-30 epochs
where a worker is killed mid-trial: what is shown here is what Optuna, PostgreSQL, MLflow and DVC do, whatever
the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.lib import cluster
from stages.tools import server
from tests.conftest import commit_all, postgres_workdir, run_in, tiny_clone, user_environment

pytestmark = pytest.mark.slow

# Tiny trials; hopeless ones on purpose (a learning rate of 1e-7) so that the median pruner has something to
# stop after epoch 1: test_two_workers_share_a_study_in_postgresql queues one after two good ones.
SPACES = {
    "spaces": {
        "tiny": {
            "fixed": {"model.kind": "dense", "model.dropout": 0.0, "train.epochs": 2},
            "search": {
                "train.learning_rate": {"choice": [1e-7, 0.003]},
                "model.hidden_units": {"choice": [[8], [16]]},
                "train.batch_size": {"choice": [128, 256]},
            },
            "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
            "sampler": {"n_startup_trials": 4},
        },
        "slow": {  # 3-4 s per trial (0.13 s an epoch): time to kill a worker in the middle of one
            "fixed": {"model.kind": "dense", "model.dropout": 0.0, "train.batch_size": 8},
            "search": {"train.learning_rate": {"log": [0.0005, 0.005]}, "train.epochs": {"int": [25, 30]}},
            "pruner": {"n_startup_trials": 10, "n_warmup_steps": 0},
        },
    }
}
# The trial and `dvc exp run` train the same params with the same seed on the same code path (XLA, one
# thread); metrics.json rounds to 4 decimals.
TOLERANCE = 5e-5 + 1e-9


@pytest.fixture(scope="module")
def workdir():
    with postgres_workdir("mnist-tune-") as path:
        yield path


@pytest.fixture(scope="module")
def storage(workdir):
    pg = cluster.Postgres(workdir / "postgres", server.free_port(), password=secrets.token_hex(16))
    pg.init()
    try:
        yield pg.uri
    finally:
        pg.stop()
    assert not pg.running()


@pytest.fixture(scope="module")
def clone(workdir):
    path = tiny_clone(workdir / "clone", synthetic=True, per_class=(250, 50))
    (path / "tune.yaml").write_text(yaml.safe_dump(SPACES, sort_keys=False))
    result = run_in(["dvc", "repro"], path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    commit_all(path, "tiny pipeline and tiny spaces")
    return path


def tune(clone: Path, storage: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_in([sys.executable, "-m", "stages.tools.tune", *args], clone, timeout=timeout, TUNE_STORAGE=storage)


def study_trials(storage: str, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials()


def child_runs(clone: Path, study: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny-tune")
    return client.search_runs([experiment.experiment_id], f"tags.`tune.study` = '{study}'", max_results=1000)


def queue_first_trials(clone: Path, storage: str, study: str, space: str, trials: int, *draws: dict) -> None:
    """Create ``study`` as ``tune run`` would and queue its first trials (Optuna's enqueue_trial): the
    sampler draws the rest. A trial that only some draws would give then happens on every run."""
    from stages.tools.tune import space as tune_space
    from stages.tools.tune import storage as tune_storage

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(clone)  # the study records the clone's params and data, as its workers check them
        base = tune_storage.base_params()
        created = tune_storage.create_or_continue(storage, study, tune_space.load_space(space, base), trials, base)
    for draw in draws:
        created.enqueue_trial({key: tune_space.encode_choice(value) for key, value in draw.items()})


def test_two_workers_share_a_study_in_postgresql(clone, storage):
    import optuna

    # Two good trials, then a hopeless one: it reports its first epoch once a good one has finished (each
    # worker finishes a trial before asking for the next), so the median pruner always has one to stop.
    good = {"train.learning_rate": 0.003, "model.hidden_units": [16], "train.batch_size": 128}
    queue_first_trials(clone, storage, "pair", "tiny", 8, good, good, {**good, "train.learning_rate": 1e-7})
    result = tune(clone, storage, "run", "--study", "pair", "--trials", "8", "--workers", "2", "--space", "tiny")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = study_trials(storage, "pair")
    assert len(trials) == 8 and all(t.state.is_finished() for t in trials)
    workers = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(workers) == 2  # both workers ran trials
    lines = [line for line in result.stdout.splitlines() if re.search(r"\] trial \d+ (COMPLETE|PRUNED|FAIL)", line)]
    assert len(lines) == 8 and all(" val_accuracy " in line and " best " in line for line in lines)

    runs = child_runs(clone, "pair")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == 8  # every trial exactly once
    by_number = {int(r.data.tags["tune.trial"]): r for r in children}
    assert sorted(by_number) == list(range(8))
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for trial in trials:
        run = by_number[trial.number]
        assert run.data.tags["tune.state"] == trial.state.name and run.info.status == status[trial.state.name]
        assert run.data.params["train.learning_rate"] == str(trial.params["train.learning_rate"])
        assert trial.user_attrs["overrides"]["train.threads"] == 1 and run.data.params["train.threads"] == "1"
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert 2 in {t.number for t in pruned}, "the queued hopeless trial (lr 1e-7) should be pruned after epoch 1"
    assert all(by_number[t.number].data.metrics["epochs_run"] == 1 for t in pruned)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_pruned"] == len(pruned)
    assert parent.data.metrics["epochs_saved_by_pruning"] == len(pruned)
    import mlflow

    figures = {Path(f.path).name for f in mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db").list_artifacts(
        parent.info.run_id, "figures")}  # fmt: skip
    assert {"optimization_history.png", "param_importances.png", "best_trials.png"} <= figures


def test_best_trial_reproduces_through_dvc_exp_run(clone, storage):
    import mlflow

    trials = {t.number: t for t in study_trials(storage, "pair")}
    result = tune(clone, storage, "best", "--study", "pair")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dvc exp run -n tune-pair -S model.kind=dense" in result.stdout
    assert " -S train.threads=1" in result.stdout  # the trial's thread count (dense: one), passed on
    # Several trials reach a val_accuracy of 1.0 on these digits: the winner is the one `tune best` names (a tie
    # has no order in the study's storage), and it has the highest value.
    best = trials[int(re.search(r"tune-best: trial (\d+) of 'pair'", result.stdout).group(1))]
    assert best.value == max(t.value for t in trials.values() if t.value is not None)
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    assert abs(metrics["val_accuracy"] - best.value) <= TOLERANCE, (metrics, best.value)
    # Its val_loss tells the tied trials apart: the model `dvc exp run` trained is the winner's own (its loss
    # after its last epoch, as evaluate computes it; no early stopping).
    client = mlflow.MlflowClient(f"sqlite:///{clone}/mlflow.db")
    [trial_run] = [r for r in child_runs(clone, "pair") if r.data.tags.get("tune.trial") == str(best.number)]
    last = max(client.get_metric_history(trial_run.info.run_id, "val_loss"), key=lambda m: m.step).value
    assert abs(metrics["val_loss"] - last) <= 2e-6 + 1e-5 * last, (metrics, last)
    [run] = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "attributes.run_name = 'tune-pair'"
    )
    assert any(v.run_id == run.info.run_id for v in client.search_model_versions("name = 'tiny-classifier'"))
    tune_runs = child_runs(clone, "pair")
    assert not any(v.run_id in {r.info.run_id for r in tune_runs} for v in client.search_model_versions(""))
    again = tune(clone, storage, "best", "--study", "pair")  # the name is taken: what to do, not DVC's `-f`
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == (
        "tune-best: error: an experiment named tune-pair exists already (an earlier make tune-best): "
        "`dvc exp remove tune-pair` first"
    ), again.stderr


def test_a_worker_killed_mid_trial_leaves_no_trial_running(clone, storage):
    import optuna

    command = [sys.executable, "-m", "stages.tools.tune", "run", "--study", "kill", "--trials", "3", "--workers", "2"]
    env = user_environment(TUNE_STORAGE=storage)
    coordinator = subprocess.Popen(
        [*command, "--space", "slow"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.5)
            with_epochs = []
            with contextlib.suppress(KeyError):  # the study is not there yet
                # ten epochs or more still to go (over a second): the kill lands mid-trial, not after the trial
                # has ended, whatever the machine's load
                with_epochs = [
                    t
                    for t in study_trials(storage, "kill")
                    if t.state.name == "RUNNING"
                    and 0 < len(t.intermediate_values) <= t.user_attrs["epochs_planned"] - 10
                ]
            if with_epochs:
                victim = with_epochs[0]
        assert victim is not None, "no trial reached its first epoch"
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        out, _ = coordinator.communicate(timeout=600)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert coordinator.returncode == 0, out[-3000:]
    trials = study_trials(storage, "kill")
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    killed = trials[victim.number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    [again] = [t for t in trials if retried(t) == victim.number]
    assert again.state.is_finished() and again.params == killed.params
    assert len(trials) == 4 and sum(t.state.is_finished() and t is not killed for t in trials) == 3
    runs = {int(r.data.tags["tune.trial"]): r for r in child_runs(clone, "kill") if "tune.trial" in r.data.tags}
    assert sorted(runs) == list(range(4))  # one run per trial, the killed one included
    assert runs[victim.number].info.status == "FAILED" and runs[victim.number].data.tags["tune.state"] == "FAIL"
    assert runs[again.number].data.tags["tune.retry_of"] == str(victim.number)
