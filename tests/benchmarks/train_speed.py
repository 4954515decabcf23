"""Training speed: the notebooks' way against the pipeline's, side by side in one run.

    python tests/benchmarks/train_speed.py [--epochs 10] [--rounds 2]

Needs the prepared arrays (``make repro`` or ``dvc repro preprocess``). Each
method trains the same network (Flatten -> Dense 128 ReLU -> Dense 10 softmax,
Adam 1e-3, batch 32) for the same epochs on the same training split, checks the
validation split after every epoch (the same work per epoch on both sides), and
is tested on the test split. Each method runs in its own process (TensorFlow's
threading is per process). The methods take turns for ``--rounds`` rounds, so
that a slow spell of this shared machine does not land on one side only. Epoch
times are medians over all rounds: the first epoch of each process includes
tracing and compiling. Totals and test accuracies are from the last round.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SEED = 42


def baseline(epochs: int) -> dict:
    """As in the notebooks: Keras ``fit`` on float64 ``x / 255.0``, default settings."""
    import keras
    import numpy as np

    from stages.config import PREPARED_DIR
    from stages.data import load_split

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        load_split(ROOT / PREPARED_DIR, s) for s in ("train", "val", "test")
    )
    # Back to the notebooks' input: uint8 pixels divided by 255.0 (float64).
    x_train, x_val, x_test = (np.rint(x * 255).astype(np.uint8) / 255.0 for x in (x_train, x_val, x_test))
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.monotonic() - self.started)

    model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_data=(x_val, y_val), callbacks=[Timer()])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"epoch_seconds": seconds, "test_accuracy": float(accuracy)}


def pipeline(epochs: int) -> dict:
    """The train stage's own code with the default params."""
    from stages import model as nn
    from stages.config import PREPARED_DIR
    from stages.data import load_split
    from stages.train import fit

    nn.configure(SEED)
    train, val, (x_test, y_test) = (load_split(ROOT / PREPARED_DIR, s) for s in ("train", "val", "test"))
    model = nn.build([128], "relu", 0.0, "softmax")
    cfg = {
        "labels": "sparse",
        "learning_rate": 1e-3,
        "epochs": epochs,
        "batch_size": 32,
        "seed": SEED,
        "early_stopping_patience": 0,
    }
    history = fit(model, train, val, cfg, "softmax", log=lambda line: print(line, file=sys.stderr))
    _, accuracy, _ = nn.evaluate(model, x_test, y_test.astype("int32"), nn.loss_function("sparse", "softmax"))
    return {"epoch_seconds": [row["seconds"] for row in history], "test_accuracy": accuracy}


def run_worker(method: str, epochs: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--epochs", str(epochs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="turns each method takes (default 2)")
    parser.add_argument("--worker", choices=["baseline", "pipeline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # Keras' progress bar
            result = (baseline if args.worker == "baseline" else pipeline)(args.epochs)
        print(json.dumps(result))
        return
    if not (ROOT / "data/prepared/x_train.npy").exists():
        sys.exit("no prepared data: run `make repro` (or `dvc repro preprocess`) first")
    runs: dict[str, list[dict]] = {"baseline": [], "pipeline": []}
    for _ in range(args.rounds):
        for method, results in runs.items():
            results.append(run_worker(method, args.epochs))
    base_s, fast_s = (statistics.median(s for r in runs[m] for s in r["epoch_seconds"]) for m in runs)
    base, fast = runs["baseline"][-1], runs["pipeline"][-1]
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "rounds": args.rounds,
                "baseline_epoch_s": round(base_s, 3),
                "pipeline_epoch_s": round(fast_s, 3),
                "speedup": round(base_s / fast_s, 2),
                "baseline_total_s": round(sum(base["epoch_seconds"]), 2),
                "pipeline_total_s": round(sum(fast["epoch_seconds"]), 2),
                "baseline_test_accuracy": round(base["test_accuracy"], 4),
                "pipeline_test_accuracy": round(fast["test_accuracy"], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
