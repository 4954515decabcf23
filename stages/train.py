"""DVC stage ``train``: fit the dense network on the train split, watching validation.

The test split is never read here. The model is written in Keras' native
format only when training finished with a finite loss.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stages import params, runtime, tracking
from stages.config import HISTORY_PATH, MODEL_PATH, PREPARED_DIR, SERVING_CONFIG_PATH, STATS_PATH
from stages.data import load_split, read_stats
from stages.files import atomic_path, sha256_file, write_json

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def epoch_order(n: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle ``range(n)`` into a (steps, batch) index array: one row per batch.

    The last partial batch is left out of this epoch (like ``drop_remainder``
    in ``tf.data``), so every step has the same compiled shape. A fresh shuffle
    each epoch means different images are left out (16 of 54,000 with the
    defaults).
    """
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"{n} training images cannot fill one batch of {batch_size} (train.batch_size too large)")
    perm = rng.permutation(n).astype(np.int32)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def fit(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: dict[str, Any],
    output: str,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train ``model`` per the ``train`` params; return one history row per epoch.

    Rows hold ``HISTORY_COLUMNS`` plus the wall-clock ``seconds`` of the epoch
    (printed and benchmarked, but not written to the history file, which must
    be identical from run to run).
    """
    from stages import model as nn  # noqa: PLC0415 - it sets TensorFlow's options before importing it

    keras, tf = nn.keras, nn.tf

    loss_fn = nn.loss_function(cfg["labels"], output)
    steps = nn.Steps(model, keras.optimizers.Adam(cfg["learning_rate"]), loss_fn)
    x = tf.constant(train[0])
    y = tf.constant(nn.encode_labels(train[1], cfg["labels"]))
    x_val, y_val = val[0], nn.encode_labels(val[1], cfg["labels"])
    rng = np.random.default_rng(cfg["seed"])
    patience = cfg["early_stopping_patience"]
    best_loss, best_weights, waited = math.inf, None, 0
    history: list[dict[str, float]] = []

    for epoch in range(1, cfg["epochs"] + 1):
        started = time.monotonic()
        order = epoch_order(len(train[0]), cfg["batch_size"], rng)
        loss_sum, correct = steps.train_epoch(x, y, tf.constant(order))
        seen = order.size
        train_loss, train_accuracy = float(loss_sum) / seen, float(correct) / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} in epoch {epoch}; "
                "lower train.learning_rate or check the input data (no model was written)"
            )
        val_loss, val_accuracy, _ = nn.evaluate(model, x_val, y_val, loss_fn)
        row = {
            "epoch": epoch,
            "loss": train_loss,
            "accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "seconds": time.monotonic() - started,
        }
        history.append(row)
        log(
            f"epoch {epoch}/{cfg['epochs']} - {row['seconds']:.2f}s - "
            + " - ".join(f"{k} {row[k]:.4f}" for k in HISTORY_COLUMNS[1:])
        )

        if patience:
            if val_loss < best_loss:
                best_loss, best_weights, waited = val_loss, model.get_weights(), 0
            else:
                waited += 1
                if waited >= patience:
                    log(
                        f"early stopping: val_loss has not improved for {patience} epochs; "
                        f"restoring the weights of epoch {epoch - patience}"
                    )
                    break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def write_serving_config(output: str, stats_path: Path = STATS_PATH, path: Path = SERVING_CONFIG_PATH) -> None:
    """What a client of the model needs besides its weights: the input scaling and the output kind."""
    write_json(path, {"normalization": read_stats(stats_path)["normalization"], "output": output})


def write_history(history: list[dict[str, float]], path: Path = HISTORY_PATH) -> None:
    import pandas as pd  # noqa: PLC0415

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    stage_started = time.time()
    try:
        cfg = params.load("model", "train")
        uri, _ = tracking.store()
        tracking.preflight(uri)  # before minutes of training, not after
    except (params.ParamsError, tracking.TrackingError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2

    from stages import model as nn  # noqa: PLC0415 - TensorFlow, after the cheap checks

    nn.configure(cfg["train"]["seed"])
    train, val = load_split(PREPARED_DIR, "train"), load_split(PREPARED_DIR, "val")
    model = nn.build(**cfg["model"])
    started = time.monotonic()
    try:
        history = fit(model, train, val, cfg["train"], cfg["model"]["output"])
    except TrainingDiverged as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    nn.save_model(model, MODEL_PATH)
    write_serving_config(cfg["model"]["output"])
    write_history(history)
    runtime.remember("train", sha256_file(MODEL_PATH), started=stage_started, ended=time.time(), train_seconds=seconds)
    print(
        f"train: {len(history)} epochs in {seconds:.1f}s ({seconds / len(history):.2f}s/epoch); "
        f"val_accuracy {history[-1]['val_accuracy']:.4f}; model -> {MODEL_PATH}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
