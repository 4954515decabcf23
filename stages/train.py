"""DVC stage ``train``: fit the dense network on the train split, watching validation.

The test split is never read here. The model is written in Keras' native
format only when training finished with a finite loss.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stages import params, tracking
from stages.files import atomic_path
from stages.preprocess import PREPARED_DIR, load_split

MODEL_PATH = Path("data/model/model.keras")
HISTORY_PATH = Path("reports/train/history.csv")
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
    from stages import model as nn  # noqa: PLC0415 - first: it sets TensorFlow's options

    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

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
        row = {"epoch": epoch, "loss": train_loss, "accuracy": train_accuracy,
               "val_loss": val_loss, "val_accuracy": val_accuracy, "seconds": time.monotonic() - started}
        history.append(row)
        log(f"epoch {epoch}/{cfg['epochs']} - {row['seconds']:.2f}s - "
            + " - ".join(f"{k} {row[k]:.4f}" for k in HISTORY_COLUMNS[1:]))

        if patience:
            if val_loss < best_loss:
                best_loss, best_weights, waited = val_loss, model.get_weights(), 0
            else:
                waited += 1
                if waited >= patience:
                    log(f"early stopping: val_loss has not improved for {patience} epochs; "
                        f"restoring the weights of epoch {epoch - patience}")
                    break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def write_history(history: list[dict[str, float]], path: Path = HISTORY_PATH) -> None:
    import pandas as pd  # noqa: PLC0415

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def save_model(model: Any, path: Path = MODEL_PATH) -> None:
    """Save in Keras' native format, byte-reproducibly (see ``normalize_keras_archive``)."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        normalize_keras_archive(tmp)


def normalize_keras_archive(path: Path) -> None:
    """Make a ``.keras`` zip depend only on the model, so equal weights give equal bytes.

    Keras stamps ``metadata.json`` with ``date_saved``, the zip entries with the
    current time, and ``config.json`` with ``shared_object_id``s that are memory
    addresses (renumbered here in order of appearance, which keeps shared
    references shared). Without this, ``dvc.lock`` would change on every run.
    """
    import json  # noqa: PLC0415
    import re  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    ids: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        return f'"shared_object_id": {ids.setdefault(match.group(1), str(len(ids) + 1))}'

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = re.sub(r'"shared_object_id": (\d+)', renumber, data.decode()).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            archive.writestr(fixed, data)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
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
    save_model(model)
    write_history(history)
    print(f"train: {len(history)} epochs in {seconds:.1f}s ({seconds / len(history):.2f}s/epoch); "
          f"val_accuracy {history[-1]['val_accuracy']:.4f}; model -> {MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
