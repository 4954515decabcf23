"""Serve the registry's champion over HTTP on 127.0.0.1 (``make serve``), sized to the cores it may use.

    python -m stages.tools.serve [--port 5001] [--workers auto|N] [--runtime auto|onnx|keras] [--model URI]

Runs MLflow's own scoring server (``mlflow models serve --env-manager
local``) on the champion of the data set ``params.yaml`` names
(``models:/mnist-classifier@champion``), or ``--model``. By default it starts
one worker process per usable core (``stages/serving/cores.py``: the CPU
affinity within the cgroup's quota), at most eight, and gives each worker's onnxruntime
an equal share of those cores (``MODEL_THREADS``), so that the workers do
not compete for them; a ``MODEL_THREADS`` already set is kept (through Keras,
each worker's TensorFlow sizes its own thread pools). The store is
``MLFLOW_TRACKING_URI``, else this repository's ``mlflow.db``. The server listens
on loopback only: it has no login.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from stages.lib import processes, redact, store, tracking
from stages.lib.paths import PARAMS_FILE, PROJECT
from stages.serving import cores
from stages.serving.classifier import RUNTIME_ENV, RUNTIMES, THREADS_ENV, telemetry_off

HOST = "127.0.0.1"
# Each worker holds its own copy of the model and its runtime (about 175 MB for an ONNX form, more through
# Keras): on a large machine, more than this many is a choice to make, not a default.
MAX_AUTO_WORKERS = 8


def plan(workers: str, usable: int) -> tuple[int, int]:
    """(worker processes, onnxruntime threads in each) for ``workers`` (``auto``: one per usable core, at most
    ``MAX_AUTO_WORKERS``; or a positive number) on ``usable`` cores."""
    if workers == "auto":
        count = min(usable, MAX_AUTO_WORKERS)
    else:
        try:
            count = int(workers)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"WORKERS={workers}: expected auto or a whole number of at least 1")
    return count, max(1, usable // count)


def command(model: str, port: int, workers: int) -> list[str]:
    """``mlflow models serve`` of this environment (beside its Python), on loopback."""
    return [
        processes.program("mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
        "-h", HOST, "-p", str(port), "-w", str(workers),
    ]  # fmt: skip


def environment(runtime: str, threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the runtime asked for, the threads per worker (unless set), the default store,
    MLflow's output quiet (its model download's progress bar off a terminal)."""
    env = dict(os.environ if base is None else base)
    tracking.quiet_output(env)
    # mlflow models serve starts `uvicorn` through the shell: this environment's, not whichever PATH finds.
    env["PATH"] = os.pathsep.join(filter(None, [str(processes.bin_dir()), env.get("PATH")]))
    env[RUNTIME_ENV] = runtime
    env[THREADS_ENV] = env.get(THREADS_ENV) or str(threads)
    env["MLFLOW_TRACKING_URI"] = store.read_store(PROJECT, env)
    env.update(tracking.NO_PICKLES)  # its workers load the model too
    return telemetry_off(env)  # for every version's logged code, whatever it sets itself


def loadable(model: str, env: dict[str, str]) -> tuple[str, str]:
    """(the model to serve, what it is): ``model`` with a registry alias pinned to the version it names now,
    loaded here once, as each worker will load it (the same store, runtime and environment), into a temporary
    directory removed after. A model that cannot answer in this environment (a Keras-only version, or the Keras
    runtime forced, where Keras is not installed) fails in one line now rather than in every worker, which
    uvicorn would restart for ever. The server keeps that version until it is restarted, wherever the alias
    moves meanwhile."""
    os.environ.update(env)  # this process becomes the server: its environment is the server's
    from stages.lib.registry import describe  # noqa: PLC0415 - MLflow, only once the plan is sound

    pinned = tracking.pin(model, env["MLFLOW_TRACKING_URI"])
    with tempfile.TemporaryDirectory(prefix="serve-check-") as tmp:
        # Its workers warn of the TensorFlow and Keras it pins where they are not installed: once is enough.
        tracking.load_from_code(pinned, tmp, suppress_warnings=True)
    described = describe(pinned, env["MLFLOW_TRACKING_URI"])
    return pinned, (f"{redact.uri(model)}: {described.split(': ', 1)[1]}" if pinned != model else described)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5001, help="on 127.0.0.1 (default 5001)")
    parser.add_argument(
        "--workers",
        default="auto",
        help=f"worker processes: auto (one per usable core, at most {MAX_AUTO_WORKERS}) or N",
    )
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES, help="which form answers (default auto)")
    parser.add_argument("--model", help="a model URI (default: the champion of params.yaml's data set)")
    args = parser.parse_args(argv)
    from stages.lib.registry import champion_uri  # noqa: PLC0415

    try:
        workers, threads = plan(args.workers, cores.usable())
        if args.model is None:  # the project's params.yaml, wherever this is started (a ParamsError is a ValueError)
            args.model = champion_uri(PROJECT / PARAMS_FILE)
    except ValueError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    env = environment(args.runtime, threads)
    try:
        store.check_readable(args.model, env["MLFLOW_TRACKING_URI"])
    except store.TrackingError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    try:
        args.model, served = loadable(args.model, env)
    except Exception as exc:  # before any worker: uvicorn would restart a worker that cannot load it, forever
        print(f"serve: error: cannot load {redact.uri(args.model)}: {redact.first_line(exc)}", file=sys.stderr)
        return 1
    share = env[THREADS_ENV]
    each = "through Keras" if args.runtime == "keras" else f"{share} onnxruntime thread{'s' * (share != '1')} each"
    print(f"serve: {served} on http://{HOST}:{args.port}/invocations ({workers} worker{'s' * (workers != 1)}, "
          f"{each})", flush=True)  # fmt: skip
    run = command(args.model, args.port, workers)
    os.execvpe(run[0], run, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
