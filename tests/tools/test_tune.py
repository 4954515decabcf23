"""Hyper-parameter studies (stages.tools.tune), fast: the space file's validation, trial params as params.yaml
overrides and `dvc exp run -S` values, and a study's bookkeeping on the journal storage (no training)."""

from __future__ import annotations

import copy
import datetime
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.params import schema as params
from stages.serving import cores
from stages.tools.tune import TuneError, cli, figures, liveness, space, storage, worker

ROOT = Path(__file__).resolve().parents[2]
BASE = params.read_raw(ROOT / "params.yaml")


def raw_space(search, fixed=None, **extra):
    fixed = {"model.kind": "dense", "model.dropout": 0.0} if fixed is None else fixed
    return {"fixed": fixed, "search": search, **extra}


def test_the_committed_spaces_are_valid():
    spaces = yaml.safe_load((ROOT / "tune.yaml").read_text())["spaces"]
    assert "dense" in spaces
    for name in spaces:
        checked = space.load_space(name, BASE, ROOT / "tune.yaml")
        assert checked.search and checked.pruner["n_warmup_steps"] >= 1


@pytest.mark.parametrize(
    "raw, message",
    [
        (raw_space({"train.learning_rat": {"log": [0.001, 0.01]}}), "spaces.s: train.learning_rat is not a params key"),
        (raw_space({"train.batch_size": {"choice": [32, 0]}}), "train.batch_size must be an integer >= 1, got 0"),
        (raw_space({"train.schedule": {"choice": ["constant", "step"]}}), "train.schedule must be one of constant"),
        (raw_space({"preprocess.seed": {"int": [1, 3]}}), "preprocess.seed is not tunable (only model.* and train.*"),
        (
            raw_space({"model.dropout": {"float": [0.0, 0.5]}}, fixed={}),
            "trials would need different TensorFlow backends",
        ),
        (
            raw_space({"model.kind": {"choice": ["dense", "cnn"]}}, fixed={"model.dropout": 0.0}),
            "different TensorFlow backends",
        ),
        (raw_space({"train.learning_rate": {"log": [0, 0.1]}}), "train.learning_rate must be a number in (0, inf)"),
        (raw_space({"train.learning_rate": {"float": [0.1, 0.01]}}), "low must be below high"),
        (raw_space({"train.epochs": {"int": [1.5, 3]}}), "int bounds must be integers"),
        (raw_space({"train.epochs": {"uniform": [1, 3]}}), "spaces.s.search.train.epochs must be one of {log:"),
        (raw_space({"train.epochs": {"choice": []}}), "choice needs a non-empty list"),
        (raw_space({"train.epochs": {"choice": [3, 3]}}), "choice lists a value twice"),
        (raw_space({"model.kind": {"choice": ["dense"]}}), "model.kind is both fixed and searched"),
        (raw_space({}), "spaces.s.search is empty"),
        (raw_space({"train.epochs": {"int": [1, 3]}}, pruner={"patience": 2}), "unknown setting 'patience'"),
        ({"serch": {}}, "unknown entry 'serch'"),
        (raw_space({"train.threads": {"choice": [1, 2]}}), "train.threads cannot vary between trials"),
    ],
)
def test_a_space_that_breaks_the_schema_is_one_line_naming_the_key(raw, message):
    with pytest.raises(TuneError) as info:
        space.validate_space("s", raw, BASE)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_cnn_too_deep_for_the_data_sets_images_is_refused_before_any_trial():
    small = copy.deepcopy(BASE)
    small["preprocess"]["image_size"] = [8, 8]  # halved 3 times at most
    deep = raw_space({"model.cnn.filters": {"choice": [[8, 8], [4, 4, 4, 4]]}}, fixed={"model.kind": "cnn"})
    with pytest.raises(TuneError, match=r"model.cnn.filters=\[4, 4, 4, 4\] gives invalid params .*8x8 images"):
        space.validate_space("s", deep, small)
    space.validate_space("s", deep, BASE)  # MNIST's 28x28 takes 4 blocks


def test_trial_params_are_a_valid_params_yaml_override():
    import optuna

    checked = space.load_space("dense", BASE, ROOT / "tune.yaml")
    study = optuna.create_study(direction="maximize")
    for _ in range(20):
        trial = study.ask()
        overrides = space.suggest(trial, checked)
        config = space.trial_config(BASE, overrides)
        assert set(overrides) == {*checked.fixed, *checked.search}
        flat = params.flatten(config)
        assert all(flat[key] == value for key, value in overrides.items())
        assert isinstance(flat["model.hidden_units"], list)  # a list choice travels as text and comes back
        study.tell(trial, 0.5)


@pytest.mark.parametrize("value", [1e-05, 0.0013227937104418406, 0.5, 1.0, 3, [256, 128], True, "onecycle"])
def test_exp_run_values_read_back_as_the_same_params(value):
    # DVC writes the -S value into params.yaml; the stages read it with PyYAML (YAML 1.1: '1e-05' is a string).
    text = space.cli_value(value)
    assert yaml.safe_load(f"x: {text}")["x"] == value and type(yaml.safe_load(f"x: {text}")["x"]) is type(value)


def test_exp_run_command_has_exactly_the_trial_overrides():
    command = space.exp_run_command("demo", {"train.learning_rate": 2e-05, "model.hidden_units": [256, 128]})
    assert command == [
        "dvc", "exp", "run", "-n", "tune-demo",
        "-S", "train.learning_rate=0.00002", "-S", "model.hidden_units=[256,128]",
    ]  # fmt: skip


def test_a_worker_s_threads_follow_train_threads_and_the_cores_it_shares(monkeypatch):
    monkeypatch.setattr(cores, "usable", lambda: 4)
    assert worker.threads_for(1, 4) == 4 and worker.threads_for(2, 4) == 2 and worker.threads_for(8, 4) == 1
    assert worker.threads_for(1, 1) == 1  # a dense network without dropout: one thread, however many cores
    assert worker.threads_for(2, 4, wanted=3) == 3  # a number in params.yaml (or the space's fixed) pins it
    assert worker.threads_for(2, 4, wanted=3, given=5) == 5  # --threads wins


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A directory that looks like the repository to the study: params.yaml, tune.yaml, stats.json."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "tune.yaml", tmp_path / "tune.yaml")
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "stats.json").write_text(json.dumps({"sha256": "abc"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNE_STORAGE", raising=False)
    return tmp_path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_study_on_the_journal_file(repo):
    import optuna

    base = storage.base_params()
    dense = space.load_space("dense", base)
    journal = storage.open_storage(None)
    assert (repo / ".tune" / "optuna.journal").exists()
    study = storage.create_or_continue(journal, "demo", dense, 3, base)
    storage.check_worker(study, base)

    # Another process sees the same study, through the file.
    other = storage.load_study(storage.open_storage(None), "demo")
    assert other.user_attrs["n_trials"] == 3 and isinstance(other.pruner, optuna.pruners.MedianPruner)

    # Bad input: one line each, nothing changed.
    with pytest.raises(TuneError, match="no study 'nope' in this storage"):
        storage.load_study(journal, "nope")
    cnn = space.load_space("cnn", base)
    with pytest.raises(TuneError, match="study 'demo' exists with another space"):
        storage.create_or_continue(journal, "demo", cnn, 3, base)
    assert storage.load_study(journal, "demo").user_attrs["space"]["name"] == "dense"
    (repo / "data" / "prepared" / "stats.json").write_text(json.dumps({"sha256": "other"}))
    with pytest.raises(TuneError, match="data/prepared differs"):
        storage.check_worker(study, base)
    (repo / "data" / "prepared" / "stats.json").write_text(json.dumps({"sha256": "abc"}))

    # A trial whose worker (on this machine) is gone ends FAIL, is queued again once, and does not count twice.
    trial = study.ask()
    overrides = space.suggest(trial, dense)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead_pid()})
    alive = study.ask()
    alive.set_user_attr("worker", liveness.worker_id())
    failed = []
    with storage.study_lock(None, "demo"):
        assert liveness.fail_dead_trials(study, lambda s, t: failed.append(liveness.retry(s, t))) == [0]
    assert failed == [True]
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING]
    assert len(liveness.counted(study.get_trials())) == 2 and storage.pending(study)
    again = study.ask()  # the queued copy comes first, with the same params
    assert again.number == 2 and space.suggest(again, dense) == overrides
    study.tell(alive, 0.9)
    study.tell(again, 0.8)
    assert storage.pending(study)  # 2 of 3 counted
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    assert not storage.pending(study)
    facts = figures.summary(study)
    assert (facts["trials_complete"], facts["trials_pruned"], facts["trials_failed"]) == (2, 1, 0)
    assert facts["best_val_accuracy"] == 0.9 and facts["best_trial"] == 1
    assert facts["epochs_run"] == 0 and "trials_per_hour" not in facts  # no wall time given
    # A later call that ran nothing (the study had its trials): no speed figures, rather than zeros that would
    # replace the last call's on the parent run.
    later = figures.summary(study, since=datetime.datetime.now() + datetime.timedelta(hours=1), wall_seconds=0.5,
                            workers=1)  # fmt: skip
    assert later == {k: facts[k] for k in ("trials_complete", "trials_pruned", "trials_failed", "best_val_accuracy",
                                           "best_trial")}  # fmt: skip


def test_bad_input_on_the_command_line_is_one_line_and_writes_nothing(repo, monkeypatch, capsys):
    before = sorted(repo.rglob("*"))
    assert cli.main(["run", "--study", "demo", "--trials", "0"]) == 2
    assert cli.main(["run", "--study", "demo", "--trials", "2", "--space", "nosuch"]) == 2
    assert cli.main(["worker", "--study", "demo"]) == 2
    monkeypatch.setenv("TUNE_STORAGE", "postgresql://bob:pw-s3cret@127.0.0.1:1/tune")
    assert cli.main(["run", "--study", "demo", "--trials", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "tune: error: TRIALS must be at least 1, got 0"
    assert err[1].startswith("tune: error: tune.yaml: no space 'nosuch' (spaces: dense")
    assert err[2].startswith("tune-worker: error: no study 'demo' in this storage")
    assert err[3].startswith("tune: error: storage postgresql://***@127.0.0.1:1/tune is unusable")
    assert len(err) == 4 and "s3cret" not in "".join(err)
    assert sorted(repo.rglob("*")) == before  # no journal for a study that is not there, no mlflow.db


def test_a_worker_or_tune_best_on_a_sqlite_storage_that_is_not_there_creates_nothing(repo, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_STORAGE", f"sqlite:///{repo}/optuna.db")
    assert cli.main(["worker", "--study", "demo"]) == 2
    assert cli.main(["best", "--study", "demo"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["tune-worker", "tune-best"], err
    assert all("no study 'demo' in this storage (none yet)" in line for line in err), err
    assert not (repo / "optuna.db").exists() and not (repo / ".tune").exists()
    (repo / "there.db").touch()
    for url, there in [
        (f"sqlite:///{repo}/there.db", True),
        (f"sqlite:///file:{repo}/there.db?mode=ro&uri=true", True),  # SQLite's own URI form
        (f"sqlite:///file:{repo}/optuna.db?uri=true", False),
        ("sqlite:///:memory:", True),
        ("postgresql://tune@127.0.0.1:1/tune", True),  # a server's: asked, not looked for
    ]:
        assert storage._sqlite_file_exists(url) is there, url
    with pytest.raises(TuneError, match=r"^storage sqlite:/x.db is unusable: Could not parse"):
        storage.open_storage("sqlite:/x.db", create=False)


def test_a_silent_worker_on_another_machine_is_found_by_the_heartbeat(repo, monkeypatch):
    import optuna

    monkeypatch.setattr(storage, "HEARTBEAT_S", 1)
    monkeypatch.setattr(storage, "GRACE_S", 1)
    stale = []
    url = f"sqlite:///{repo}/optuna.db"
    rdb = storage.open_storage(
        url, on_stale=lambda study, trial: stale.append((trial.number, liveness.retry(study, trial)))
    )
    base = storage.base_params()
    study = storage.create_or_continue(rdb, "far", space.load_space("dense", base), 2, base)
    trial = study.ask()
    trial.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    with liveness.Heartbeat(study, trial):
        time.sleep(1.5)  # beating: not stale
        with storage.study_lock(url, "far"):
            liveness.fail_dead_trials(study, lambda s, t: None)
        assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING and not stale
    time.sleep(2.5)  # silent for longer than the grace period
    with storage.study_lock(url, "far"):
        liveness.fail_dead_trials(study, lambda s, t: None)
    assert stale == [(0, True)]
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"]


@pytest.mark.slow  # a real MLflow store
def test_the_study_s_mlflow_client_prints_no_run_urls(tmp_path, monkeypatch):
    # Against a tracking server MLflow prints "View run <name> at: <url>" for every run it ends: two lines more per
    # trial in `make tune`'s one line per trial.
    from stages.tools.tune import runs

    for name in (
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
        "MLFLOW_LOGGING_LEVEL",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    ):
        monkeypatch.setenv(name, "")  # recorded as it was, so what Runs() sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs.Runs()
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True


def test_waiting_for_other_machines_trials_stops_on_a_signal(repo, monkeypatch):
    import threading

    base = storage.base_params()
    study = storage.create_or_continue(storage.open_storage(None), "far", space.load_space("dense", base), 2, base)
    trial = study.ask()
    trial.set_user_attr("worker", {"host": "another-machine", "pid": 1})  # running elsewhere: not found dead
    monkeypatch.setattr(worker, "on_stop_signals", lambda: None)  # this test's process keeps its own handlers
    monkeypatch.setattr(cli, "on_stop_signals", lambda: None)
    worker.STOP.clear()
    result = []
    waiting = threading.Thread(
        target=lambda: result.append(cli.wait_for_others(study, lambda s, t: None, None, poll_s=5.0)), daemon=True
    )
    waiting.start()
    time.sleep(0.3)
    worker.STOP.set()  # Ctrl-C while waiting
    waiting.join(timeout=2)
    worker.STOP.clear()
    assert not waiting.is_alive() and result == [True], "still waiting after Ctrl-C"
    assert study.get_trials()[0].state.name == "RUNNING"  # the other machine's trial is left to its worker


def test_an_error_in_make_tune_itself_leaves_the_study_run_failed_not_running(repo, monkeypatch):
    ended = []

    class FakeRuns:
        uri = "sqlite:///unused.db"

        def parent(self, study, space, trials):
            return "parent-run"

        def fail_study(self, run_id, status="FAILED"):
            ended.append((run_id, status))

    def broken(*args):
        raise RuntimeError("figures could not be drawn")

    monkeypatch.setattr(cli, "Runs", FakeRuns)
    monkeypatch.setattr(cli, "run_study", broken)
    monkeypatch.setattr(cli.store, "preflight", lambda uri: None)
    with pytest.raises(RuntimeError):
        cli.run("failing", 2, 1, "dense")
    assert ended == [("parent-run", "FAILED")]


def test_an_unexpected_error_is_one_line_without_the_password(monkeypatch, capsys):
    def store_gone(*args):  # what MLflow raises when the server goes away mid-study
        raise RuntimeError("API request to http://alice:s3cret@127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed\n...")

    monkeypatch.setattr(cli, "work", store_gone)
    assert cli.main(["worker", "--study", "far"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "tune-worker: error: RuntimeError: API request to http://***@127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed"
    )


def test_the_figures_replace_the_last_set_whole(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="figs", direction="maximize")
    for value in (0.91, 0.95, 0.93):
        trial = study.ask({"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.report(value - 0.01, 1)
        study.tell(trial, value)
    directory = tmp_path / "figures" / "figs"
    directory.mkdir(parents=True)
    (directory / "old_plot.png").write_bytes(b"an earlier study's")
    written = figures.draw_figures(study, directory)
    assert {"optimization_history.png", "trials.csv", "best_trials.png"} <= set(written)
    assert sorted(p.name for p in directory.iterdir()) == sorted(written)  # the stale file went with the old set
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_long_trial_shows_an_epoch_line_every_few_seconds_and_a_short_one_does_not_flood():
    now, lines = [0.0], []
    every = worker.Every(10.0, lines.append, clock=lambda: now[0])
    for epoch, t in enumerate((3.0, 9.0, 12.0, 15.0, 22.5, 40.0), start=1):
        now[0] = t
        every(f"epoch {epoch}/6")
    assert lines == ["epoch 3/6", "epoch 5/6", "epoch 6/6"]
    every("early stopping: val_loss has not improved for 2 epochs; restoring the weights of epoch 4")
    assert len(lines) == 4  # not an epoch line: always said


@pytest.mark.parametrize(
    ("line", "counts"),
    [
        ("trial 3 COMPLETE val_accuracy 0.9712 4.1s (3 epochs) - best 0.9712 (trial 3) [host:1]", True),
        ("trial 4 PRUNED val_accuracy 0.9001@2 2.0s (2 epochs) - best 0.9712 (trial 3) [host:1]", True),
        ("trial 5 FAIL: worker stopped (queued again)", False),
        ("trial 7 FAIL val_accuracy - 1.2s (1 epochs) - best 0.9712 (trial 3) [host:1]", True),  # diverged
        ("trial 6 epoch 4/15 - 12.31s - loss 0.1000 - accuracy 0.9700 - val_loss 0.1100", False),
    ],
)
def test_the_studys_bar_counts_ended_trials_only(line, counts):
    assert bool(cli.TRIAL_ENDED.match(line)) is counts


@pytest.mark.parametrize("study", ["x/../../../reports", "..", "a b", "-rf", "tune\n", "ü"])
def test_a_study_name_that_is_no_plain_name_is_one_line(study, capsys):
    # The name becomes a directory under .tune/figures, a DVC experiment's and an MLflow run's name.
    assert cli.main(["run", f"--study={study}", "--trials", "2"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"tune: error: STUDY={study!r}: expected letters, digits")


def test_a_worker_without_the_prepared_arrays_is_one_line_and_creates_nothing(repo, capsys):
    base = storage.base_params()
    storage.create_or_continue(storage.open_storage(None), "demo", space.load_space("dense", base), 2, base)
    before = sorted(repo.rglob("*"))  # stats.json is there, the arrays are not (a copy cut short, say)
    assert cli.main(["worker", "--study", "demo"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "tune-worker: error: data/prepared/x_train.npy is missing: run `dvc repro` (or `dvc pull`) first"
    assert sorted(repo.rglob("*")) == before  # no mlflow.db
