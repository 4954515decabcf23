"""The worker: a long-lived process that imports TensorFlow once and runs trials until its study has N.

``work`` loads the study, checks that this checkout starts from the study's
params and data, sets TensorFlow's threads and backend once, and then asks
Optuna for one trial after another (under ``storage.study_lock``, after
failing the trials of dead workers). ``run_trial`` trains a trial with the
train stage's own functions, reports every epoch's ``val_accuracy`` to the
median pruner and to MLflow, and tells both how it ended. SIGTERM or Ctrl-C
(``on_stop_signals``) stops it after the current epoch, with the trial
failed and queued again.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from stages.lib import redact, store
from stages.lib.paths import PREPARED_DIR
from stages.tools.tune import TuneError
from stages.tools.tune.liveness import Heartbeat, fail_dead_trials, retried_trial, retry, worker_id
from stages.tools.tune.runs import EpochLog, Runs
from stages.tools.tune.space import OBJECTIVE, Space, suggest, trial_config
from stages.tools.tune.storage import (
    base_params,
    check_worker,
    describe_storage,
    load_study,
    open_storage,
    pending,
    storage_url,
    study_lock,
)


class Stopped(Exception):
    """SIGTERM or Ctrl-C: stop after telling Optuna and MLflow about the current trial."""


EPOCH_LINE_S = 10.0  # a running trial's epoch line at most this often (and its line when it ends)
STOP = threading.Event()  # set by SIGTERM or Ctrl-C; checked between epochs and between trials


def _stop(signum: int, frame: Any) -> None:
    # A flag, not an exception: raised from a handler, an exception can land in a finalizer and be lost.
    STOP.set()


def on_stop_signals() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def threads_for(workers: int, backend_threads: int, wanted: int | str = "auto", given: int | None = None) -> int:
    """TensorFlow threads per worker: ``--threads`` when given, a number ``train.threads`` pins; else (``auto``)
    the backend's own, but no more than this process's cores (``cores.usable``) shared by K workers."""
    from stages.serving import cores  # noqa: PLC0415 - only here

    if given:
        return given
    if wanted != "auto":
        return int(wanted)
    return max(1, min(backend_threads, cores.usable() // max(workers, 1)))


class Every:
    """``log`` epoch lines at most once every ``seconds`` (other lines always): a trial of many epochs shows it is
    alive, one of short epochs does not flood ``make tune``'s output (K workers share it)."""

    def __init__(self, seconds: float, log: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.seconds, self.log, self.clock = seconds, log, clock
        self.last = clock()

    def __call__(self, line: str) -> None:
        if not line.startswith("epoch "):  # early stopping's line, say: always
            self.log(line)
        elif self.clock() - self.last >= self.seconds:
            self.log(line)
            self.last = self.clock()


def progress_line(trial: Any, study: Any, seconds: float, epochs: int) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    last = trial.intermediate_values.get(max(trial.intermediate_values)) if trial.intermediate_values else None
    if trial.value is None and last is not None:
        value = f"{last:.4f}@{max(trial.intermediate_values)}"
    try:
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "best -"
    return (
        f"trial {trial.number} {trial.state.name} val_accuracy {value} {seconds:.1f}s "
        f"({epochs} epochs) - {best} [{socket.gethostname()}:{os.getpid()}]"
    )


def work(study_name: str, workers: int = 1, threads: int | None = None, log: Callable[[str], None] = print) -> int:
    """Run trials of ``study_name`` until it has its N; the number of trials this worker ran."""
    url = storage_url()
    base = base_params()
    store.preflight(store.store()[0])
    runs: Runs | None = None

    def on_failed(study: Any, trial: Any) -> None:
        """A trial whose worker died: its child run FAILED, the trial queued again once."""
        again = retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run")
        if run_id and runs is not None:
            runs.end_trial(run_id, "FAIL", {}, "its worker stopped answering" + ("; retried" if again else ""))
        log(f"trial {trial.number} FAIL: its worker died" + (" (queued again)" if again else ""))

    storage = open_storage(url, on_stale=on_failed, create=False)
    study = load_study(storage, study_name)
    check_worker(study, base)
    space = study.user_attrs["space"]
    from stages.lib.data import load_split, network_shape, read_stats  # noqa: PLC0415
    from stages.lib.training import backend_settings, background_value  # noqa: PLC0415

    try:  # before MLflow and TensorFlow: a missing array is one line, as a missing stats.json is (check_worker)
        data = {split: load_split(PREPARED_DIR, split) for split in ("train", "val")}
    except FileNotFoundError as exc:
        raise TuneError(f"{exc.filename} is missing: run `dvc repro` (or `dvc pull`) first") from None
    runs = Runs()

    first = {k: next(iter(d.values()))[0] for k, d in space["search"].items()}
    config = trial_config(base, {**space["fixed"], **first})
    backend = backend_settings(config["model"], config["train"]["threads"])  # before TensorFlow
    n_threads = threads_for(workers, backend["threads"], config["train"]["threads"], threads)
    from stages.lib import model as nn  # noqa: PLC0415 - TensorFlow, once for every trial of this worker

    nn.configure(0, threads=n_threads)
    nn.tf.get_logger().setLevel("ERROR")  # each trial traces its own functions: TensorFlow's retracing warning
    stats = read_stats()
    shape = network_shape(stats)  # the prepared data's, as the train stage builds its network
    background = background_value()
    log(
        f"worker {socket.gethostname()}:{os.getpid()}: study '{study_name}', {n_threads} thread(s), "
        f"{'XLA' if backend['jit_compile'] else 'oneDNN graph'}; storage {describe_storage(url)}"
    )

    on_stop_signals()
    done = 0
    while True:
        if STOP.is_set():
            raise Stopped("stopped between trials")
        with study_lock(url, study_name):
            fail_dead_trials(study, on_failed)
            if not pending(study):
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": see Heartbeat
                trial = study.ask()
            trial.set_user_attr("worker", worker_id())
        run_trial(study, trial, space, base, data, background, backend["jit_compile"], n_threads, runs, log, shape)
        done += 1
    return done


def run_trial(
    study: Any,
    trial: Any,
    space: Mapping[str, Any],
    base: Mapping[str, Any],
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    background: float,
    jit_compile: bool,
    threads: int,
    runs: Runs,
    log: Callable[[str], None],
    shape: Mapping[str, Any] | None = None,
) -> Any:
    """Train one trial with the train stage's functions, report each epoch, tell Optuna and MLflow how it ended.

    Its overrides record the worker's thread count as ``train.threads``: results are byte-reproducible for a
    given CPU and thread count, so ``tune best`` passes it on to ``dvc exp run``. ``shape``: the prepared
    data's input shape, class count and name, as the train stage builds its network (``nn.build``)."""
    import keras  # noqa: PLC0415
    import optuna  # noqa: PLC0415

    from stages.lib import model as nn  # noqa: PLC0415
    from stages.lib.training import BatchTooLarge, TrainingDiverged, fit  # noqa: PLC0415

    started = time.monotonic()
    sp = Space(space["name"], space["fixed"], space["search"], space["pruner"], space["sampler"])
    overrides = {**suggest(trial, sp), "train.threads": threads}
    trial.set_user_attr("overrides", overrides)
    config = trial_config(base, overrides)
    retry_of = retried_trial(study, trial.number)
    run_id = runs.start_trial(study, trial.number, config, overrides, retry_of)
    trial.set_user_attr("mlflow_run", run_id)
    trial.set_user_attr("epochs_planned", config["train"]["epochs"])
    history: list[dict[str, float]] = []
    epochs = EpochLog(runs, run_id)

    def on_epoch(row: dict[str, float]) -> None:
        history.append(row)
        epochs.add(row)
        if STOP.is_set():
            raise Stopped(f"stopped after epoch {row['epoch']}")
        trial.report(row[OBJECTIVE], int(row["epoch"]))
        # After the last epoch there is nothing left to save: the trial is COMPLETE, whatever its value.
        if row["epoch"] < config["train"]["epochs"] and trial.should_prune():
            raise optuna.TrialPruned(f"epoch {row['epoch']}: val_accuracy {row[OBJECTIVE]:.4f} below the median")

    state, value, note = "FAIL", None, None
    with Heartbeat(study, trial):
        try:
            keras.backend.clear_session(free_memory=False)  # Keras' global state; the gc pass took 0.8 s a trial
            nn.configure(config["train"]["seed"])  # same seeds as the train stage: same weights
            model = nn.build(**config["model"], **(shape or {}))
            fit(
                model,
                data["train"],
                data["val"],
                config["train"],
                config["model"]["output"],
                log=Every(EPOCH_LINE_S, lambda line: log(f"trial {trial.number} {line}")),
                background=background,
                jit_compile=jit_compile,
                on_epoch=on_epoch,
            )
            state = "COMPLETE"
            value = final_val_accuracy(model, data["val"], config, history)
        except optuna.TrialPruned as exc:
            state, note = "PRUNED", str(exc)
        except (TrainingDiverged, BatchTooLarge) as exc:
            note = str(exc)
        except (Stopped, KeyboardInterrupt) as exc:
            note = str(exc) or "stopped (Ctrl-C)"
            frozen = _finish(study, trial, runs, run_id, "FAIL", None, history, started, note, epochs.take())
            again = retry(study, frozen)
            log(f"trial {trial.number} FAIL: worker stopped" + (" (queued again)" if again else ""))
            raise Stopped(note) from None
        except Exception as exc:  # a bug or a resource error: this trial FAILs, not retried; the worker stops
            note = redact.described(exc)  # no password from a store's URL
            _finish(study, trial, runs, run_id, "FAIL", None, history, started, note, epochs.take())
            raise
    frozen = _finish(study, trial, runs, run_id, state, value, history, started, note, epochs.take())
    log(progress_line(frozen, study, time.monotonic() - started, len(history)))
    return frozen


def final_val_accuracy(
    model: Any, val: tuple[np.ndarray, np.ndarray], config: Mapping[str, Any], history: list[dict[str, float]]
) -> float:
    """The objective: the trained model's accuracy on the validation split, as the evaluate stage computes it.

    Without early stopping that is the last epoch's (the same weights, the same function); with it, ``fit``
    restored the best epoch's weights, which are evaluated again.
    """
    if not config["train"]["early_stopping_patience"]:
        return history[-1][OBJECTIVE]
    from stages.lib import model as nn  # noqa: PLC0415

    labels, output, classes = config["train"]["labels"], config["model"]["output"], model.output_shape[-1]
    y = nn.encode_labels(val[1], labels, classes)
    _, accuracy, _ = nn.evaluate(model, val[0], y, nn.loss_function(labels, output, classes=classes))
    return accuracy


def _finish(
    study: Any,
    trial: Any,
    runs: Runs,
    run_id: str,
    state: str,
    value: float | None,
    history: list[dict[str, float]],
    started: float,
    note: str | None,
    rows: list[dict[str, float]],
) -> Any:
    import optuna  # noqa: PLC0415

    seconds = time.monotonic() - started
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("epochs_run", len(history))
    trial.set_user_attr("train_seconds", sum(r["seconds"] for r in history))
    metrics = {"trial_seconds": seconds, "epochs_run": len(history)}
    if value is not None:
        metrics[f"final_{OBJECTIVE}"] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if state == "COMPLETE":
            frozen = study.tell(trial, value)
        else:
            frozen = study.tell(trial, state=getattr(optuna.trial.TrialState, state))
    runs.end_trial(run_id, state, metrics, note, rows)
    return frozen
