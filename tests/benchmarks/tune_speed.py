"""Study throughput: trials per hour with K = 1 and K = 2 workers on the same trials, and the share of the
workers' time spent outside training (start-up, compiling, MLflow, Optuna).

    python tests/benchmarks/tune_speed.py [--trials 6] [--workers 1 2] [--space dense] [--seed 0]

Run it at the root of a clone with the prepared arrays (``make repro``); it uses that clone's journal file
and MLflow store (studies named ``speed-k<K>-<time>``). Every K runs the same ``--trials`` param sets (drawn
once at random from the space, then queued into each study), with pruning off (it would make the work
depend on the order trials finish in), through ``stages.tools.tune.run``: what ``make tune`` does. Prints one JSON
line per K.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from stages.tools.tune.cli import run
from stages.tools.tune.figures import summary
from stages.tools.tune.space import SPACE_FILE, load_space, suggest
from stages.tools.tune.storage import base_params, create_or_continue, load_study, open_storage, storage_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--space", default="dense")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import optuna

    raw = yaml.safe_load(SPACE_FILE.read_text())["spaces"][args.space]
    raw["pruner"] = {"n_startup_trials": 10**6, "n_warmup_steps": 0}  # off
    space_file = Path(tempfile.mkdtemp()) / "tune.yaml"
    space_file.write_text(yaml.safe_dump({"spaces": {args.space: raw}}))
    base = base_params()
    space = load_space(args.space, base, space_file)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    draws = []
    for _ in range(args.trials):
        trial = sampler.ask()
        suggest(trial, space)
        draws.append(dict(trial.params))
        sampler.tell(trial, 0.0)

    for workers in args.workers:
        name = f"speed-k{workers}-{int(time.time())}"
        study = create_or_continue(open_storage(storage_url()), name, space, args.trials, base)
        for params in draws:
            study.enqueue_trial(params)
        run(name, args.trials, workers, args.space, space_file=space_file)
        facts = summary(load_study(open_storage(storage_url()), name))
        trials = [t for t in study.get_trials() if t.state.is_finished()]
        wall = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        train = sum(t.user_attrs["train_seconds"] for t in trials)
        print(
            json.dumps(
                {
                    "workers": workers,
                    "trials": len(trials),
                    "epochs": facts["epochs_run"],
                    "wall_seconds": round(wall.total_seconds(), 1),
                    "trials_per_hour": round(len(trials) * 3600 / wall.total_seconds(), 1),
                    "train_seconds": round(train, 1),
                    "share_outside_training": round(1 - train / (workers * wall.total_seconds()), 3),
                    "per_trial_outside_training_s": round(
                        sum(t.user_attrs["seconds"] - t.user_attrs["train_seconds"] for t in trials) / len(trials), 2
                    ),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
