"""The trained network as an image classifier: raw pixels in, class probabilities out.

Applies the normalization the pipeline trained with (minmax or the fitted
z-score constants, from ``serving.json``) and a softmax when the network
outputs logits, so callers never need to know either. Used by ``predict``
directly and by the served MLflow model (``mlflow_model.py``).

Self-contained on purpose (NumPy, and Keras when a model is loaded): the
logged MLflow model carries a copy of this file and imports it without the
rest of the project.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SHAPE = (28, 28)  # MNIST's; a model's own is in its serving.json
DIGITS = [str(d) for d in range(10)]
# Names under which the served model carries the Keras file and its serving.json.
KERAS_ARTIFACT = "keras_model"
CONFIG_ARTIFACT = "serving_config"


class BadInput(ValueError):
    """A batch the classifier cannot answer; the message says what is wrong."""


def check_pixels(batch: Any, shape: tuple[int, ...] | list[int] = IMAGE_SHAPE) -> np.ndarray:
    """A (N, *shape) float32 batch of raw pixels, or ``BadInput``.

    Accepts (N, *shape) or flat (N, H*W*C) arrays, lists or DataFrames of
    numbers in [0, 255]; ``shape`` is one image's: (H, W) gray, (H, W, 3) colour.
    """
    shape = tuple(shape)
    size = int(np.prod(shape))
    what = "x".join(str(d) for d in shape)
    if hasattr(batch, "to_numpy"):  # a pandas DataFrame
        batch = batch.to_numpy()
    try:
        x = np.asarray(batch, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadInput(f"pixels must be numbers (a batch of {what} images with values 0-255)") from None
    if x.ndim == 2 and x.shape[1] == size:
        x = x.reshape(-1, *shape)
    if x.ndim != 1 + len(shape) or x.shape[1:] != shape:
        dims = ", ".join(map(str, shape))
        raise BadInput(f"expected a batch of {what} images (shape (N, {dims}) or (N, {size})), got shape {x.shape}")
    if len(x) == 0:
        raise BadInput(f"the batch is empty: send at least one {what} image")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        raise BadInput(f"pixel values must be in [0, 255], got values in [{x.min()}, {x.max()}]")
    return x


def output_columns(config: dict[str, Any]) -> list[str]:
    """What the served model answers per image: MNIST's ``digit``, or another data set's ``label`` and ``class``
    name; then the ``probabilities``."""
    classes = config.get("classes", DIGITS)
    return ["digit", "probabilities"] if classes == DIGITS else ["label", "class", "probabilities"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Classifier:
    """Keras network + the normalization it was trained with."""

    def __init__(self, keras_path: str | Path, config_path: str | Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
        import keras  # noqa: PLC0415 - TensorFlow: only when a model is actually loaded

        config = json.loads(Path(config_path).read_text())
        self.config = config
        self.shape = tuple(config.get("image_shape", IMAGE_SHAPE))
        self.classes = config.get("classes", DIGITS)
        self.offset = np.float32(config["normalization"]["offset"])
        self.scale = np.float32(config["normalization"]["scale"])
        self.logits = config["output"] == "linear"
        self.network = keras.models.load_model(keras_path, safe_mode=True)

    def probabilities(self, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, classes) for a checked batch of raw pixels (N, *self.shape)."""
        x = (pixels - self.offset) / self.scale
        out = np.concatenate(
            [np.asarray(self.network(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        )
        return softmax(out) if self.logits else out

    def answer(self, pixels: np.ndarray) -> dict[str, Any]:
        """Per image, as the served model answers (``output_columns``): the class and the probabilities."""
        probs = self.probabilities(pixels)
        best = probs.argmax(axis=1).astype(np.int64)
        if output_columns(self.config)[0] == "digit":
            return {"digit": best, "probabilities": list(probs)}
        return {"label": best, "class": [self.classes[i] for i in best], "probabilities": list(probs)}
