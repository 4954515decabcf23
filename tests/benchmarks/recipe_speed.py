"""The CNN recipes side by side: seconds, test accuracy, multiply-adds, and how long to 99.5 %.

    python tests/benchmarks/recipe_speed.py [--recipes cnn cnn-fast] [--seeds 1 2 3] [--target 0.995]
    python tests/benchmarks/recipe_speed.py --recipes cnn-fast --seeds 1 2 3 4 5 --probabilities DIR
    python tests/benchmarks/recipe_speed.py --recipes cnn --try 'k3=-S model.cnn.kernel_size=3 -S train.epochs=8'

Needs the prepared arrays (``make repro`` or ``dvc repro preprocess``).

Each recipe is the Makefile's (``make -n <recipe>`` gives its ``-S`` flags,
applied to ``params.yaml`` as ``dvc exp run`` would); ``--try NAME=FLAGS``
adds a recipe of ``-S`` flags on top of ``params.yaml`` (``model.kind=cnn``
and the like included), for exploring. Every training is the train stage's
own code and settings (``stages.lib.training.fit``, ``backend_settings``) in a
process of its own; for each seed the recipes take turns, so a slow spell of
this shared machine does not land on one recipe only. After every epoch the
benchmark (not the train stage) also measures the test accuracy, outside the
timed epoch, which answers "how long to ``--target``": the training seconds
up to the first epoch at or above it (null if none). Choose settings on the
validation accuracy (also reported), not on these.

Prints each epoch as it ends (stderr) and, at the end, one JSON line: per
recipe its flags, multiply-adds per image (forward) and training FLOPs per
image (~6 per multiply-add: see ``stages.lib.model.multiply_adds``), and per seed
the test and validation accuracy, training seconds (the sum of the epochs;
the stage's own figure adds data loading) and seconds to the target; their
means; and each recipe's training time relative to the first recipe's
(median of the per-seed ratios). Compare seconds only within one run.
With ``--probabilities DIR``, each training's test-set probabilities go to
``DIR/NAME-seedN.npy`` and the JSON line adds, per recipe, the test
accuracy of its seeds' networks averaged into one (an ensemble).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.recipes import recipe_settings  # noqa: E402


def recipe_params(flags: list[str], seed: int) -> dict:
    """``params.yaml`` with the ``key=value`` settings applied (values parsed as YAML, as DVC does), validated."""
    import yaml

    from stages.params import model, schema, train

    raw = schema.read_raw(ROOT / "params.yaml")
    for setting in [*flags, f"train.seed={seed}"]:
        key, value = setting.split("=", 1)
        *path, last = key.split(".")
        target = raw
        for part in path:
            target = target[part]
        if last not in target:
            raise SystemExit(f"recipe_speed: {key} is not a param")
        target[last] = yaml.safe_load(value)
    return schema.validate(raw, [model, train])


def train(flags: list[str], seed: int, probabilities: Path | None = None) -> dict:
    """One training as the train stage does it, with the test accuracy after each epoch; ``probabilities``:
    where to write the trained model's test-set probabilities (``.npy``)."""
    from stages.lib.training import backend_settings, fit

    cfg = recipe_params(flags, seed)
    backend = backend_settings(cfg["model"], cfg["train"]["threads"])  # before TensorFlow is imported
    from stages.lib import model as nn
    from stages.lib.data import load_split
    from stages.lib.paths import PREPARED_DIR, STATS_PATH
    from stages.lib.training import background_value

    nn.configure(seed, threads=backend["threads"])
    train_split, val, (x_test, y_test) = (load_split(ROOT / PREPARED_DIR, s) for s in ("train", "val", "test"))
    model = nn.build(**cfg["model"])
    loss_fn = nn.loss_function("sparse", cfg["model"]["output"])
    test_accuracy: list[float] = []

    def log(line: str) -> None:  # called after each epoch, outside its timing
        test_accuracy.append(nn.evaluate(model, x_test, y_test.astype("int32"), loss_fn)[1])
        print(f"  {line} - test_accuracy {test_accuracy[-1]:.4f}", file=sys.stderr, flush=True)

    history = fit(
        model,
        train_split,
        val,
        cfg["train"],
        cfg["model"]["output"],
        log=log,
        background=background_value(ROOT / STATS_PATH),
        jit_compile=backend["jit_compile"],
    )
    if probabilities:
        import numpy as np

        from stages.serving.classifier import softmax

        probabilities.parent.mkdir(parents=True, exist_ok=True)
        partial = probabilities.with_suffix(".partial.npy")
        outputs = model.predict(x_test, batch_size=1000, verbose=0)
        probs = softmax(outputs) if cfg["model"]["output"] == "linear" else outputs
        np.save(partial, probs.astype(np.float32), allow_pickle=False)
        partial.replace(probabilities)
    return {
        "epoch_seconds": [row["seconds"] for row in history],
        "val_accuracy": [row["val_accuracy"] for row in history],
        "test_accuracy": test_accuracy,
        "multiply_adds": nn.multiply_adds(model),
    }


def run_worker(flags: list[str], seed: int, probabilities: Path | None = None) -> dict:
    extra = ["--probabilities-file", str(probabilities)] if probabilities else []
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(flags), "--seeds", str(seed), *extra],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def seconds_to(target: float, run: dict) -> float | None:
    """Training seconds up to the first epoch whose test accuracy reaches ``target``."""
    elapsed = 0.0
    for seconds, accuracy in zip(run["epoch_seconds"], run["test_accuracy"], strict=True):
        elapsed += seconds
        if accuracy >= target:
            return round(elapsed, 1)
    return None


def summary(flags: list[str], runs: list[dict], target: float) -> dict:
    totals = [sum(r["epoch_seconds"]) for r in runs]
    return {
        "flags": " ".join(f"-S {shlex.quote(f)}" for f in flags),
        "epochs": len(runs[0]["epoch_seconds"]),
        "multiply_adds_per_image": runs[0]["multiply_adds"],
        "training_flops_per_image": 6 * runs[0]["multiply_adds"],
        "test_accuracy": [round(r["test_accuracy"][-1], 4) for r in runs],
        "mean_test_accuracy": round(statistics.mean(r["test_accuracy"][-1] for r in runs), 5),
        "val_accuracy": [round(r["val_accuracy"][-1], 4) for r in runs],
        "mean_val_accuracy": round(statistics.mean(r["val_accuracy"][-1] for r in runs), 5),
        "train_seconds": [round(t, 1) for t in totals],
        "median_epoch_s": round(statistics.median(s for r in runs for s in r["epoch_seconds"]), 2),
        f"seconds_to_{target}": [seconds_to(target, r) for r in runs],
    }


def ensemble(directory: Path, name: str, seeds: list[int]) -> dict:
    """The test accuracy of the seeds' networks combined (their probabilities averaged), as one model would
    answer: what an ensemble of this recipe would buy, for the training time of all its seeds."""
    import numpy as np

    from stages.lib.data import load_split
    from stages.lib.paths import PREPARED_DIR

    _, y_test = load_split(ROOT / PREPARED_DIR, "test")
    probs = [np.load(directory / f"{name}-seed{seed}.npy", allow_pickle=False) for seed in seeds]
    return {
        "networks": len(probs),
        "test_accuracy": round(float(np.mean(np.mean(probs, axis=0).argmax(axis=1) == y_test)), 4),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=["cnn", "cnn-fast"], help="Makefile recipes (default both)")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME=FLAGS", help="more recipes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--target", type=float, default=0.995, help="test accuracy to time (default 0.995)")
    parser.add_argument(
        "--probabilities",
        type=Path,
        metavar="DIR",
        help="write each training's test-set probabilities to DIR/NAME-seedN.npy (to try ensembles)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--probabilities-file", type=Path, help=argparse.SUPPRESS)  # a worker's own file
    args = parser.parse_args()
    if args.worker:
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):  # only the result on stdout
            result = train(json.loads(args.worker), args.seeds[0], args.probabilities_file)
        print(json.dumps(result))
        return
    if not (ROOT / "data/prepared/x_train.npy").exists():
        sys.exit("no prepared data: run `make repro` (or `dvc repro preprocess`) first")
    recipes = {name: recipe_settings(name) for name in args.recipes}
    for spec in args.tries:
        name, _, flags = spec.partition("=")
        recipes[name] = [a for a in shlex.split(flags) if a != "-S"]
    for flags in recipes.values():
        recipe_params(flags, 0)  # a bad flag fails now, not after an hour
    runs: dict[str, list[dict]] = {name: [] for name in recipes}
    for seed in args.seeds:
        for name, flags in recipes.items():
            print(f"{name}, seed {seed}:", file=sys.stderr, flush=True)
            probs = args.probabilities / f"{name}-seed{seed}.npy" if args.probabilities else None
            runs[name].append(run_worker(flags, seed, probs))
    first = next(iter(runs))
    out = {
        "cpu": cpu_model(),
        "seeds": args.seeds,
        "target": args.target,
        "recipes": {name: summary(recipes[name], r, args.target) for name, r in runs.items()},
        "time_vs_" + first: {
            name: round(
                statistics.median(
                    sum(a["epoch_seconds"]) / sum(b["epoch_seconds"]) for a, b in zip(r, runs[first], strict=True)
                ),
                3,
            )
            for name, r in runs.items()
        },
    }
    if args.probabilities:
        out["ensembles"] = {name: ensemble(args.probabilities, name, args.seeds) for name in runs}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
