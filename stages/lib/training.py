"""The training loop the train stage and tuning trials share: fit a network per the ``train`` params.

``fit`` trains in compiled steps over in-memory arrays and returns one history
row per epoch; ``backend_settings`` decides, before TensorFlow is imported,
how a given network trains fastest here. The test split is never seen here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stages.lib.data import read_stats
from stages.lib.paths import STATS_PATH

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class BatchTooLarge(ValueError):
    """Not one whole batch fits in the training split."""


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Whole batches of ``batch_size`` in ``n`` images (at least one, or ``BatchTooLarge``)."""
    steps = n // batch_size
    if steps == 0:
        raise BatchTooLarge(f"{n} training images cannot fill one batch of {batch_size} (train.batch_size too large)")
    return steps


def epoch_order(n: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle ``range(n)`` into a (steps, batch) index array: one row per batch.

    The last partial batch is left out of this epoch (like ``drop_remainder``
    in ``tf.data``), so every step has the same compiled shape. A fresh shuffle
    each epoch means different images are left out (16 of 54,000 with the
    defaults).
    """
    steps = steps_per_epoch(n, batch_size)
    perm = rng.permutation(n).astype(np.int32)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def fit(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: dict[str, Any],
    output: str,
    log: Callable[[str], None] = print,
    background: float = 0.0,
    jit_compile: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` per the ``train`` params; return one history row per epoch.

    Rows hold ``HISTORY_COLUMNS`` plus the wall-clock ``seconds`` of the epoch
    (printed and benchmarked, but not written to the history file, which must
    be identical from run to run). ``loss`` is the loss being minimized (label
    smoothing included); ``val_loss`` is the plain cross-entropy, as evaluated.
    ``background`` is an empty pixel's normalized value (what augmentation
    moves in from outside the image). ``jit_compile``: see ``model.Steps`` (off with
    ``augment_kernel: fused``, which XLA cannot compile).
    ``on_epoch(row)``, if given, sees each epoch's row as soon as it is logged
    (a tuning trial reports it); an exception it raises stops training there.
    """
    from stages.lib import model as nn  # noqa: PLC0415 - it sets TensorFlow's options before importing it

    tf = nn.tf

    classes = model.output_shape[-1]
    loss_fn = nn.loss_function(cfg["labels"], output, cfg["label_smoothing"], classes)
    if cfg["augment"] and cfg["augment_kernel"] == "fused":
        jit_compile = False  # TensorFlow's resampling kernel runs in a graph only, not in an XLA program
    steps = nn.Steps(
        model,
        nn.optimizer(cfg, steps_per_epoch(len(train[0]), cfg["batch_size"])),
        loss_fn,
        augment=augmentation(cfg, background) if cfg["augment"] else None,
        jit_compile=jit_compile,
    )
    val_loss_fn = nn.loss_function(cfg["labels"], output, classes=classes)
    x = tf.constant(train[0])
    y = tf.constant(nn.encode_labels(train[1], cfg["labels"], classes))
    x_val, y_val = val[0], nn.encode_labels(val[1], cfg["labels"], classes)
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
        val_loss, val_accuracy, _ = nn.evaluate(model, x_val, y_val, val_loss_fn)
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
        if on_epoch is not None:
            on_epoch(row)

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


def augmentation(cfg: dict[str, Any], background: float = 0.0) -> Callable[[Any, Any], Any]:
    """``augment(batch, step)`` for the compiled loop: the ``train`` params' random
    shifts, rotations and zoom, drawn from ``train.seed`` and the step number."""
    from stages.lib import augment  # noqa: PLC0415 - TensorFlow

    tf = augment.tf
    seed = tf.constant(cfg["seed"], tf.int64)

    def apply(x: Any, step: Any) -> Any:
        return augment.random_affine(
            x,
            tf.stack([seed, step]),
            cfg["shift"],
            cfg["rotation"],
            cfg["zoom"],
            background=background,
            kernel=cfg["augment_kernel"],
        )

    return apply


def background_value(stats_path: Path = STATS_PATH) -> float:
    """What an empty (0) pixel becomes after the preprocess stage's normalization."""
    norm = read_stats(stats_path)["normalization"]
    return -norm["offset"] / norm["scale"]


def backend_settings(model_cfg: dict[str, Any], threads: int | str = "auto") -> dict[str, Any]:
    """How the ``model`` params' network trains fastest here (see docs/speed.md), with ``train.threads``.

    A dense network without dropout: one XLA program on one thread (its small
    products gain nothing from threads, so ``auto`` gives 1). A CNN, or dropout:
    a TensorFlow graph with oneDNN on every core this process may use
    (``stages.serving.cores``), because XLA's CPU convolutions and its random
    numbers for dropout are several times slower. A number pins the threads.
    Results are byte-reproducible for a given CPU and thread count. Call before
    TensorFlow is imported.
    """
    from stages.serving import cores  # noqa: PLC0415 - only here

    if model_cfg["kind"] == "cnn" or model_cfg["dropout"] > 0:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
        return {"threads": cores.usable() if threads == "auto" else int(threads), "jit_compile": False}
    return {"threads": 1 if threads == "auto" else int(threads), "jit_compile": True}
