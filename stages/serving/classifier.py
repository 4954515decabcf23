"""The trained network as an image classifier: raw MNIST pixels in, class probabilities out.

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

IMAGE_SHAPE = (28, 28)
# Names under which the served model carries the Keras file and its serving.json.
KERAS_ARTIFACT = "keras_model"
CONFIG_ARTIFACT = "serving_config"


class BadInput(ValueError):
    """A batch the classifier cannot answer; the message says what is wrong."""


def check_pixels(batch: Any) -> np.ndarray:
    """A (N, 28, 28) float32 batch of raw pixels, or ``BadInput``.

    Accepts (N, 28, 28) or flat (N, 784) arrays, lists or DataFrames of
    numbers in [0, 255].
    """
    if hasattr(batch, "to_numpy"):  # a pandas DataFrame
        batch = batch.to_numpy()
    try:
        x = np.asarray(batch, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadInput("pixels must be numbers (a batch of 28x28 images with values 0-255)") from None
    if x.ndim == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        x = x.reshape(-1, *IMAGE_SHAPE)
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise BadInput(f"expected a batch of 28x28 images (shape (N, 28, 28) or (N, 784)), got shape {x.shape}")
    if len(x) == 0:
        raise BadInput("the batch is empty: send at least one 28x28 image")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        raise BadInput(f"pixel values must be in [0, 255], got values in [{x.min()}, {x.max()}]")
    return x


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Classifier:
    """Keras network + the normalization it was trained with."""

    def __init__(self, keras_path: str | Path, config_path: str | Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
        import keras  # noqa: PLC0415 - TensorFlow: only when a model is actually loaded

        config = json.loads(Path(config_path).read_text())
        self.offset = np.float32(config["normalization"]["offset"])
        self.scale = np.float32(config["normalization"]["scale"])
        self.logits = config["output"] == "linear"
        self.network = keras.models.load_model(keras_path, safe_mode=True)

    def probabilities(self, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, 10) for a checked batch of raw pixels (N, 28, 28)."""
        x = (pixels - self.offset) / self.scale
        out = np.concatenate(
            [np.asarray(self.network(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        )
        return softmax(out) if self.logits else out
