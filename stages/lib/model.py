"""The networks, their loss and optimizer, the compiled training steps and evaluation (TensorFlow backend).

Importing this module imports TensorFlow (3-5 s here): stages validate their params
first and import it afterwards.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Tiny matrices: oneDNN's per-op set-up and a thread pool cost more than they
# save. Must be set before TensorFlow is imported (the train stage turns it on
# for the CNN and for dropout: see training.backend_settings).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from stages.lib.files import atomic_path
from stages.serving.classifier import import_keras

keras = import_keras()  # TensorFlow's start-up lines left out

import tensorflow as tf  # noqa: E402 - imported by Keras already, after the settings above

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)


def configure(seed: int, threads: int = 1) -> None:
    """Seeds, deterministic ops and a fixed number of threads: same params, same weights."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialized (e.g. a second call in one process)
        pass
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build(
    hidden_units: list[int],
    activation: str,
    dropout: float,
    output: str,
    kind: str = "dense",
    cnn: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] = IMAGE_SHAPE,
    classes: int = NUM_CLASSES,
    name: str = "mnist",
) -> keras.Model:
    """The ``model`` params' network.

    dense: Flatten -> [Dense(units, activation) -> Dropout]* -> Dense(classes, softmax | linear).
    cnn: one block per ``cnn["filters"]`` entry (Conv2D, "same" padding ->
    [BatchNormalization] -> activation -> 2x2 pooling), then the same head.
    With ``cnn["pool_first"]`` the pooling comes right after the convolution,
    so batch norm and the activation handle a quarter of the values (max
    pooling commutes with ReLU; batch norm's statistics are then the pooled
    values'). ``cnn["pooling"]`` (one value, or one per block) ``"stride"``
    halves the side with the convolution itself, moving 2 pixels at a time:
    no pooling layer, and a quarter of the convolution's multiply-adds.
    ``cnn["convs"]`` (one value, or one per block) stacks that many
    convolutions in a block, each with its batch norm and activation, the
    pooling after the last.
    """
    input_shape = tuple(input_shape)
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape, name="image")]
    if kind == "cnn":
        layers += _conv_blocks(activation, input_shape=input_shape, **cnn)
    layers.append(keras.layers.Flatten(name="flatten"))
    for i, units in enumerate(hidden_units, start=1):
        layers.append(keras.layers.Dense(units, activation=activation, name=f"hidden_{i}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(classes, activation="softmax" if output == "softmax" else None, name="output"))
    return keras.Sequential(layers, name=f"{name}_{kind}")


def _conv_blocks(
    activation: str,
    filters: list[int],
    kernel_size: int,
    batch_norm: bool,
    pooling: str | list[str],
    pool_first: bool = False,
    convs: int | list[int] = 1,
    input_shape: tuple[int, ...] = IMAGE_SHAPE,
) -> list[keras.layers.Layer]:
    poolings = pooling if isinstance(pooling, list) else [pooling] * len(filters)
    counts = convs if isinstance(convs, list) else [convs] * len(filters)
    pools = {"max": keras.layers.MaxPooling2D, "average": keras.layers.AveragePooling2D, "stride": None}
    # Gray images are (H, W), as MNIST's: the convolutions need a channel axis.
    layers: list[keras.layers.Layer] = (
        [keras.layers.Reshape((*input_shape, 1), name="channel")] if len(input_shape) == 2 else []
    )
    for i, (n, how, count) in enumerate(zip(filters, poolings, counts, strict=True), start=1):
        # A block of several convolutions (VGG's): each but the last keeps the side, with its own
        # [batch norm] and activation; the block's pooling (or stride) belongs to the last. The first
        # keeps the one-convolution block's names (conv_1, ...), the others are conv_1_2, conv_1_3, ...
        for j in range(1, count + 1):
            last, tag = j == count, f"{i}" if j == 1 else f"{i}_{j}"
            # A bias before batch normalization is cancelled by it: leave it out.
            conv = keras.layers.Conv2D(
                n,
                kernel_size,
                strides=2 if last and how == "stride" else 1,
                padding="same",
                use_bias=not batch_norm,
                name=f"conv_{tag}",
            )
            pool = pools[how] if last else None  # None: no pooling, or the stride-2 convolution halves the side
            layers.append(conv)
            if pool and pool_first:
                layers.append(pool(2, name=f"pool_{i}"))
            if batch_norm:
                layers.append(keras.layers.BatchNormalization(name=f"batch_norm_{tag}"))
            layers.append(keras.layers.Activation(activation, name=f"{activation}_{tag}"))
            if pool and not pool_first:
                layers.append(pool(2, name=f"pool_{i}"))
    return layers


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and Dense layers.

    What the network costs, whatever the machine: training one image costs
    about three times this (the forward pass, then the gradients of the
    inputs and of the weights), i.e. ~6 floating-point operations per
    multiply-add. Batch norm, activations, pooling and the optimizer are
    left out (a few per value, not per weight).
    """
    total = 0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, keras.layers.Conv2D):
            total += math.prod(out[1:]) * math.prod(layer.kernel_size) * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def loss_function(
    labels: str, output: str, label_smoothing: float = 0.0, classes: int = NUM_CLASSES
) -> Callable[[Any, Any], tf.Tensor]:
    """Cross-entropy matching the label encoding and whether the model outputs logits.

    With ``label_smoothing``, each target keeps ``1 - label_smoothing`` and
    every class gets ``label_smoothing / classes`` (sparse labels are one-hot
    encoded for it first).
    """
    from_logits = output == "linear"
    if labels == "onehot" or label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=label_smoothing)
        if labels == "onehot":
            return loss
        return lambda y, out: loss(tf.one_hot(tf.cast(y, tf.int32), classes), out)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def optimizer(cfg: dict[str, Any], steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The ``train`` params' optimizer, its learning rate following ``train.schedule``."""
    rate = learning_rate(cfg["schedule"], cfg["learning_rate"], cfg["epochs"] * steps_per_epoch, cfg["warmup"])
    if cfg["optimizer"] == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=cfg["weight_decay"])
    return keras.optimizers.Adam(rate)


def learning_rate(
    schedule: str, peak: float, total_steps: int, warmup: float
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """constant: ``peak`` throughout. cosine: from ``peak`` down to 0 along a half
    cosine. onecycle: rising linearly from ``peak / 25`` to ``peak`` over the
    first ``warmup`` fraction of the steps, then down to ~0 along a half cosine
    (after Smith's one-cycle policy; Keras' ``CosineDecay`` with warm-up).
    """
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total_steps, alpha=0.0)
    warmup_steps = math.floor(warmup * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        peak / 25,
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=1e-4,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


def encode_labels(y: np.ndarray, labels: str, classes: int = NUM_CLASSES) -> np.ndarray:
    """Integer labels as the loss expects them: int32, or one-hot float32 over ``classes``."""
    if labels == "onehot":
        return np.eye(classes, dtype=np.float32)[y]
    return y.astype(np.int32)


def _correct(y: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
    truth = tf.argmax(y, axis=-1, output_type=tf.int32) if y.shape.rank == 2 else tf.cast(y, tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, axis=-1, output_type=tf.int32), truth), tf.float32))


# Optimizer steps per compiled call. Each call loops over its steps inside one
# XLA program, reusing the same buffers every step; the calls are chained in
# graph mode. See docs/speed.md.
STEPS_PER_CALL = 32


class Steps:
    """Compiled training over in-memory float32 tensors.

    ``train_steps`` is one compiled program: a while loop of optimizer steps
    over a stack of batches, returning the summed loss and the number correct.
    With ``jit_compile`` (a dense network without dropout) XLA compiles it
    into one program; without (a CNN, or dropout), it is a TensorFlow graph
    running on oneDNN, because XLA's CPU convolutions and its random numbers
    for dropout are several times slower here (see docs/speed.md).
    ``train_epoch`` feeds it an epoch's batches, ``steps_per_call`` at a time,
    from a graph-mode loop, so Python is entered once per epoch.
    Augmentation, when given, happens inside the compiled program.
    (Evaluation is a plain forward pass, never augmented: see ``evaluate``.)
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        loss_fn: Callable[[Any, Any], tf.Tensor],
        steps_per_call: int = STEPS_PER_CALL,
        augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
        jit_compile: bool = True,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.steps_per_call = steps_per_call
        self.augment = augment
        optimizer.build(model.trainable_variables)
        # No AutoGraph (0.5 s of tracing): the loops are tf.while_loop already, and
        # Python control flow on a tensor would be an error at trace time, not a silent change.
        self.train_steps = tf.function(self._train_steps, jit_compile=jit_compile, autograph=False)
        self.train_epoch = tf.function(self._train_epoch, autograph=False)

    def _train_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One optimizer step on one batch; its summed loss and number correct.

        ``augment(x, step)`` transforms the batch first, drawing from the
        optimizer's step number: fresh every step, the same on every run.
        """
        if self.augment is not None:
            x = self.augment(x, tf.convert_to_tensor(self.optimizer.iterations))
        with tf.GradientTape() as tape:
            out = self.model(x, training=True)
            loss = self.loss_fn(y, out)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss * tf.cast(tf.shape(x)[0], tf.float32), _correct(y, out)

    def _train_steps(self, x: tf.Tensor, y: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Steps on the batches ``x[0]``, ..., ``x[n - 1]`` (x: steps x batch x image shape)."""

        def body(i, loss_sum, correct):
            loss, right = self._train_step(x[i], y[i])
            return i + 1, loss_sum + loss, correct + right

        start = (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        _, loss_sum, correct = tf.while_loop(lambda i, *_: i < n, body, start)
        return loss_sum, correct

    def _train_epoch(self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One step on ``x[order[s]]`` for each row ``s`` of ``order`` (steps x batch indices)."""
        k = self.steps_per_call
        steps = tf.shape(order)[0]
        calls = (steps + k - 1) // k
        # Whole calls keep one compiled shape; the padding rows of the last call
        # are gathered but never trained on (it runs only the remaining steps).
        chunks = tf.reshape(tf.pad(order, [[0, calls * k - steps], [0, 0]]), [calls, k, order.shape[1]])

        def body(c, loss_sum, correct):
            rows = chunks[c]
            loss, right = self.train_steps(tf.gather(x, rows), tf.gather(y, rows), tf.minimum(k, steps - c * k))
            return c + 1, loss_sum + loss, correct + right

        start = (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        _, loss_sum, correct = tf.while_loop(lambda c, *_: c < calls, body, start)
        return loss_sum, correct


def evaluate(
    model: keras.Model, x: np.ndarray, y: np.ndarray, loss_fn: Callable[[Any, Any], Any], batch_size: int = 2048
) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and the model's outputs on (x, y); y as the loss expects it."""
    outputs = np.concatenate(
        [model(x[i : i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)]
    )
    loss = float(loss_fn(y, outputs))
    truth = y.argmax(axis=-1) if y.ndim == 2 else y
    accuracy = float((outputs.argmax(axis=-1) == truth).mean())
    return loss, accuracy, outputs


def load_model(path: Path) -> keras.Model:
    """A model saved by ``save_model`` (Keras' native format; no pickled code)."""
    return keras.models.load_model(path, safe_mode=True)


def save_model(model: keras.Model, path: Path) -> None:
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
