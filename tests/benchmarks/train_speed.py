"""Training speed: the usual Keras way against the pipeline's, side by side in one run.

    python tests/benchmarks/train_speed.py [--network dense|cnn] [--epochs N] [--rounds 2]

Needs the prepared arrays (``make repro`` or ``dvc repro preprocess``).

``dense`` (default, 10 epochs): the notebooks' network (Flatten -> Dense 128
ReLU -> Dense 10 softmax, Adam 1e-3, batch 32), trained as the notebooks do
(``model.fit`` on float64 ``x / 255.0``) against the train stage's loop.

``cnn`` (default 15 epochs): the README's CNN recipe (``make cnn``: two conv
blocks, dense head, dropout, random shifts/rotations/zoom, one-cycle schedule,
batch 128), trained as the Keras examples do (``model.fit`` with Keras'
``RandomTranslation``/``RandomRotation``/``RandomZoom`` layers in the model)
against the train stage's loop with its augmentation.

Each method trains the same network for the same epochs on the same training
split, checks the validation split after every epoch (the same work per
epoch on both sides), and is tested on the test split. Each method runs in
its own process (TensorFlow's threading is per process). The methods take
turns for ``--rounds`` rounds, so that a slow spell of this shared machine does
not land on one side only. Epoch times are medians over all rounds: the first
epoch of each process includes tracing and compiling. Totals and test
accuracies are from the last round. Prints one JSON line.
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
EPOCHS = {"dense": 10, "cnn": 15}
# The train params of each network (the rest as in params.yaml). For cnn: the
# Makefile's RECIPE_cnn.
TRAIN = {
    "dense": {"batch_size": 32, "learning_rate": 1e-3},
    "cnn": {"batch_size": 128, "learning_rate": 3e-3, "schedule": "onecycle", "augment": True},
}
CNN_DROPOUT = 0.25


def params(network: str, epochs: int) -> tuple[dict, dict]:
    """The ``model`` and ``train`` params the pipeline side trains with."""
    from stages.params import model, schema, train

    cfg = schema.load(model, train, path=ROOT / "params.yaml")
    model = {**cfg["model"], "kind": network, "hidden_units": [128], "activation": "relu", "output": "softmax"}
    model["dropout"] = CNN_DROPOUT if network == "cnn" else 0.0
    train = {**cfg["train"], "labels": "sparse", "optimizer": "adam", "schedule": "constant", "augment": False}
    train.update(TRAIN[network], epochs=epochs, seed=SEED, early_stopping_patience=0, label_smoothing=0.0)
    return model, train


def keras_timer(keras, seconds: list[float]):
    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.monotonic() - self.started)

    return Timer()


def baseline(network: str, epochs: int) -> dict:
    """The usual Keras way: ``model.fit`` with default settings (both cores, oneDNN)."""
    import keras
    import numpy as np

    from stages.lib.data import load_split
    from stages.lib.paths import PREPARED_DIR

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        load_split(ROOT / PREPARED_DIR, s) for s in ("train", "val", "test")
    )
    # Back to the examples' input: uint8 pixels divided by 255.0 (float64 as
    # in the notebooks; float32 with a channel axis as in Keras' CNN example).
    x_train, x_val, x_test = (np.rint(x * 255).astype(np.uint8) / 255.0 for x in (x_train, x_val, x_test))
    model_cfg, train_cfg = params(network, epochs)
    keras.utils.set_random_seed(SEED)
    if network == "dense":
        layers = [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu")]
        optimizer = "adam"
    else:
        x_train, x_val, x_test = (x[..., None].astype("float32") for x in (x_train, x_val, x_test))
        shift, cnn = train_cfg["shift"] / 28, model_cfg["cnn"]
        layers = [
            keras.Input((28, 28, 1)),
            keras.layers.RandomTranslation(shift, shift, fill_mode="constant"),
            keras.layers.RandomRotation(train_cfg["rotation"] / 360, fill_mode="constant"),
            keras.layers.RandomZoom(train_cfg["zoom"], fill_mode="constant"),
        ]
        for filters in cnn["filters"]:
            layers += [
                keras.layers.Conv2D(filters, cnn["kernel_size"], padding="same", use_bias=False),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.MaxPooling2D(2),
            ]
        head = [keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(CNN_DROPOUT)]
        layers += [keras.layers.Flatten(), *head]
        from stages.lib import model as nn

        steps = len(x_train) // train_cfg["batch_size"]
        optimizer = nn.optimizer(train_cfg, steps + 1)  # fit also trains the last partial batch
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds: list[float] = []
    model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=train_cfg["batch_size"],
        validation_data=(x_val, y_val),
        callbacks=[keras_timer(keras, seconds)],
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"epoch_seconds": seconds, "test_accuracy": float(accuracy)}


def pipeline(network: str, epochs: int) -> dict:
    """The train stage's own code and settings."""
    from stages.lib.training import backend_settings, fit

    model_cfg, train_cfg = params(network, epochs)
    backend = backend_settings(model_cfg, train_cfg["threads"])  # before TensorFlow is imported
    from stages.lib import model as nn
    from stages.lib.data import load_split
    from stages.lib.paths import PREPARED_DIR

    nn.configure(SEED, threads=backend["threads"])
    train, val, (x_test, y_test) = (load_split(ROOT / PREPARED_DIR, s) for s in ("train", "val", "test"))
    model = nn.build(**model_cfg)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    history = fit(model, train, val, train_cfg, "softmax", log=log, jit_compile=backend["jit_compile"])
    _, accuracy, _ = nn.evaluate(model, x_test, y_test.astype("int32"), nn.loss_function("sparse", "softmax"))
    return {"epoch_seconds": [row["seconds"] for row in history], "test_accuracy": accuracy}


def run_worker(method: str, network: str, epochs: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--network", network, "--epochs", str(epochs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=["dense", "cnn"], default="dense")
    parser.add_argument("--epochs", type=int, help="default: 10 for dense, 15 for cnn")
    parser.add_argument("--rounds", type=int, default=2, help="turns each method takes (default 2)")
    parser.add_argument("--worker", choices=["baseline", "pipeline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.epochs = args.epochs or EPOCHS[args.network]
    if args.worker:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # Keras' progress bar
            result = (baseline if args.worker == "baseline" else pipeline)(args.network, args.epochs)
        print(json.dumps(result))
        return
    if not (ROOT / "data/prepared/x_train.npy").exists():
        sys.exit("no prepared data: run `make repro` (or `dvc repro preprocess`) first")
    runs: dict[str, list[dict]] = {"baseline": [], "pipeline": []}
    for _ in range(args.rounds):
        for method, results in runs.items():
            results.append(run_worker(method, args.network, args.epochs))
    base_s, fast_s = (statistics.median(s for r in runs[m] for s in r["epoch_seconds"]) for m in runs)
    base, fast = runs["baseline"][-1], runs["pipeline"][-1]
    print(
        json.dumps(
            {
                "network": args.network,
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
