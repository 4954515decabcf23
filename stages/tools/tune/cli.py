"""The commands of ``python -m stages.tools.tune``: ``run`` (make tune), ``worker`` (make tune-worker), ``best``.

``run`` validates the space, creates or continues the study and its MLflow
parent run, starts K worker processes (``python -m stages.tools.tune
worker``) and relays their lines, with a bar of finished trials on a
terminal; a worker that ended early is replaced once, and trials still
running on other machines are waited for. Then the summary and figures.
``best`` hands the best trial's overrides to ``dvc exp run``. Bad input is
one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stages.tools.tune
from stages.lib import redact, store
from stages.lib.paths import METRICS_PATH
from stages.params import schema
from stages.tools.tune import TuneError
from stages.tools.tune.figures import draw_figures, summary
from stages.tools.tune.liveness import counted, fail_dead_trials, retry
from stages.tools.tune.runs import Runs, experiment_name
from stages.tools.tune.space import SPACE_FILE, exp_run_command, load_space, trial_config
from stages.tools.tune.storage import (
    TUNE_DIR,
    base_params,
    create_or_continue,
    data_digest,
    describe_storage,
    load_study,
    open_storage,
    pending,
    storage_url,
    study_lock,
)
from stages.tools.tune.worker import STOP, Stopped, on_stop_signals, work

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a directory of figures, an experiment, a run
# A worker's line for a trial that counts towards the study's N (``liveness.counted``): complete, pruned, or failed
# for good (diverged); not a "FAIL:" line (its worker stopped or died: the trial is queued again), nor an epoch.
TRIAL_ENDED = re.compile(r"trial \d+ (COMPLETE|PRUNED|FAIL) val_accuracy ")


def start_workers(study_name: str, workers: int, threads: int | None) -> list[subprocess.Popen]:
    """K ``tune worker`` processes (the code ``make tune-worker`` runs), each in its own session so that
    a Ctrl-C reaches them once, from here."""
    command = [sys.executable, "-m", "stages.tools.tune", "worker", "--study", study_name, "--workers", str(workers)]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        for _ in range(workers)
    ]


class Relay:
    """Copy the workers' lines to our output; on a terminal, with a bar of finished trials under them."""

    def __init__(self, procs: list[subprocess.Popen], total: int, done: int, bar: bool = True) -> None:
        self.stream = sys.stdout
        self.bar = None
        if bar and self.stream.isatty():
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, initial=done, unit="trial", desc="study", file=self.stream)
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._copy, args=(p, i), daemon=True) for i, p in enumerate(procs, start=1)
        ]
        for thread in self.threads:
            thread.start()

    def _copy(self, proc: subprocess.Popen, index: int) -> None:
        for line in proc.stdout:
            with self.lock:
                text = f"[worker {index}] {line.rstrip()}"
                if self.bar is None:
                    print(text, file=self.stream, flush=True)
                    continue
                self.bar.write(text)
                if TRIAL_ENDED.match(line):
                    self.bar.update(1)

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=10)
        if self.bar is not None:
            self.bar.close()


def wait_for_workers(procs: list[subprocess.Popen]) -> bool:
    """Wait for the workers; on SIGTERM or Ctrl-C, stop them (each tells Optuna and MLflow). Whether stopped."""
    on_stop_signals()
    try:
        while any(p.poll() is None for p in procs):
            if STOP.is_set():
                raise Stopped
            time.sleep(0.5)
        return False
    except (Stopped, KeyboardInterrupt):
        print("tune: stopping the workers after their current epoch (each ends its trial in Optuna and MLflow)")
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
            if proc.poll() is None:  # its trial is found dead and queued again by the next process
                proc.kill()
                proc.wait()
        return True


def wait_for_others(study: Any, on_failed: Callable, url: str | None, poll_s: float = 5.0) -> bool:
    """Trials still running on other machines' workers: wait for them to end (or to be found dead). Whether
    stopped (SIGTERM or Ctrl-C) meanwhile: their workers go on with them."""
    import optuna  # noqa: PLC0415

    on_stop_signals()
    said = 0.0
    while True:
        with study_lock(url, study.study_name):
            fail_dead_trials(study, on_failed)
        active = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not active:
            return False
        if time.monotonic() - said > 30:
            print(f"tune: waiting for {len(active)} trial(s) on other workers: {[t.number for t in active]}")
            said = time.monotonic()
        if STOP.wait(poll_s):
            print("tune: stopped waiting; the other workers go on with their trials")
            return True


def run(
    study_name: str,
    trials: int,
    workers: int,
    space_name: str,
    threads: int | None = None,
    space_file: Path = SPACE_FILE,
) -> int:
    """``make tune``: validate, create or continue the study, run K workers, then figures and summary."""
    if trials < 1:
        raise TuneError(f"TRIALS must be at least 1, got {trials}")
    if workers < 1:
        raise TuneError(f"WORKERS must be at least 1, got {workers}")
    base = base_params()
    space = load_space(space_name, base, space_file)
    data_digest()
    url = storage_url()

    def on_failed(study: Any, trial: Any) -> None:
        again = retry(study, trial)
        if trial.user_attrs.get("mlflow_run"):
            runs.end_trial(trial.user_attrs["mlflow_run"], "FAIL", {}, "its worker stopped answering")
        print(f"tune: trial {trial.number} FAIL: its worker died" + (" (queued again)" if again else ""))

    storage = open_storage(url, on_stale=on_failed)
    store.preflight(store.store()[0])
    study = create_or_continue(storage, study_name, space, trials, base)
    runs = Runs()
    parent = runs.parent(study, space, trials)
    try:
        return run_study(study, runs, parent, trials, workers, space.name, url, on_failed, threads)
    except BaseException as exc:  # never left RUNNING: the next `make tune` of this study marks it RUNNING again
        runs.fail_study(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def run_study(
    study: Any,
    runs: Runs,
    parent: str,
    trials: int,
    workers: int,
    space_name: str,
    url: str | None,
    on_failed: Callable,
    threads: int | None,
) -> int:
    """``run``'s part after the parent run is RUNNING: the workers, the wait, the figures and the summary."""
    study_name = study.study_name
    existing = len(counted(study.get_trials(deepcopy=False)))
    print(
        f"tune: study '{study_name}' (space {space_name}) in {describe_storage(url)}: {existing} of {trials} "
        f"trials exist; {workers} worker(s); MLflow {redact.uri(runs.uri)} experiment {experiment_name()}, run {parent}"
    )

    since = datetime.datetime.now()  # Optuna's trial times are naive local times
    started = time.monotonic()
    procs = start_workers(study_name, workers, threads)
    relay = Relay(procs, trials, min(existing, trials))
    killed = wait_for_workers(procs)
    relay.close()
    if not killed:
        # A worker that died (SIGKILL, out of memory) left its trial RUNNING: fail it, and run what is left.
        with study_lock(url, study_name):
            fail_dead_trials(study, on_failed)
        if pending(study) and any(p.returncode != 0 for p in procs):
            print("tune: a worker ended early; one more worker runs what is left", file=sys.stderr)
            procs = start_workers(study_name, 1, threads)
            relay = Relay(procs, trials, 0, bar=False)  # the first bar stays
            killed = wait_for_workers(procs)
            relay.close()
    if not killed:
        killed = wait_for_others(study, on_failed, url)
    wall = time.monotonic() - started
    facts = summary(study, since, wall, workers)
    figures = TUNE_DIR / "figures" / study_name
    written = draw_figures(study, figures)
    runs.end_study(parent, facts, figures if written else None, killed)
    print("tune: " + ", ".join(f"{k} {_fmt(v)}" for k, v in facts.items()))
    if written:
        print(f"tune: figures ({', '.join(written)}) in {figures} and on MLflow run {parent}")
    if "best_trial" in facts and not killed:
        print(f"tune: promote the best trial with `make tune-best STUDY={study_name}`")
    return 130 if killed else 0


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def best(study_name: str, dry_run: bool = False) -> int:
    """``make tune-best``: the best trial's overrides through ``dvc exp run -n tune-<study>``."""
    study = load_study(open_storage(storage_url(), create=False), study_name)
    try:
        winner = study.best_trial
    except ValueError:
        raise TuneError(f"study '{study_name}' has no complete trial yet") from None
    overrides = winner.user_attrs["overrides"]
    trial_config(base_params(), overrides)  # still a valid override of today's params.yaml
    command = exp_run_command(study_name, overrides)
    print(f"tune-best: trial {winner.number} of '{study_name}', val_accuracy {winner.value:.4f}: {' '.join(command)}")
    if dry_run:
        return 0
    listed = subprocess.run(["dvc", "exp", "list", "--name-only"], capture_output=True, text=True)
    if f"tune-{study_name}" in listed.stdout.split():  # DVC would suggest `-f`, which make tune-best cannot pass
        raise TuneError(
            f"an experiment named tune-{study_name} exists already (an earlier make tune-best): "
            f"`dvc exp remove tune-{study_name}` first"
        )
    result = subprocess.run(command)
    if result.returncode != 0:
        return result.returncode
    metrics = json.loads(METRICS_PATH.read_text())
    print(
        f"tune-best: dvc exp run tune-{study_name}: val_accuracy {metrics['val_accuracy']:.4f} "
        f"(trial {winner.value:.4f}), test_accuracy {metrics['test_accuracy']:.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(
        prog="python -m stages.tools.tune", description=stages.tools.tune.__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="create or continue a study and run K workers on it (make tune)")
    run_p.add_argument("--study", required=True)
    run_p.add_argument("--trials", type=int, required=True, help="the study's number of trials (all workers)")
    run_p.add_argument("--workers", type=int, default=1)
    run_p.add_argument("--space", default="dense", help="a space of tune.yaml (default: dense)")
    run_p.add_argument("--threads", type=int, default=None, help="TensorFlow threads per worker (default: cores/K)")
    run_p.add_argument("--space-file", type=Path, default=SPACE_FILE, help="where the spaces are (default: tune.yaml)")
    worker_p = commands.add_parser("worker", help="join an existing study (make tune-worker)")
    worker_p.add_argument("--study", required=True)
    worker_p.add_argument("--workers", type=int, default=1, help="workers on this machine (sets threads)")
    worker_p.add_argument("--threads", type=int, default=None)
    best_p = commands.add_parser("best", help="the best trial as a DVC experiment (make tune-best)")
    best_p.add_argument("--study", required=True)
    best_p.add_argument("--dry-run", action="store_true", help="print the dvc exp run command only")
    args = parser.parse_args(argv)
    name = f"tune{'-' + args.command if args.command != 'run' else ''}"
    try:
        if not args.study.strip():
            raise TuneError("STUDY must not be empty")
        if not STUDY_NAME.fullmatch(args.study) or ".." in args.study:  # a path part, an experiment and run name
            raise TuneError(
                f"STUDY={args.study!r}: expected letters, digits, '.', '_' and '-' (up to 64, starting with a letter "
                "or digit)"
            )
        if args.command == "run":
            return run(args.study, args.trials, args.workers, args.space, args.threads, args.space_file)
        if args.command == "worker":
            try:
                ran = work(args.study, args.workers, args.threads)
            except (Stopped, KeyboardInterrupt):
                return 130
            print(f"worker: study '{args.study}' has its trials; this worker ran {ran}")
            return 0
        return best(args.study, args.dry_run)
    except (TuneError, schema.ParamsError, store.TrackingError) as exc:
        print(f"{name}: error: {redact.text(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # a store gone mid-study, a bug: one line, without the password a URL may hold
        print(f"{name}: error: {redact.described(exc)}", file=sys.stderr)
        return 1
