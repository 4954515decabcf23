"""The model as clients use it: raw MNIST pixels in, the digit and ten probabilities out.

An MLflow pyfunc model. A client sends a batch of 28x28 images with values in
0-255, exactly as in the MNIST files (no normalization on the client's side);
the model applies the normalization the pipeline trained with (minmax or the
fitted z-score constants), runs the Keras network and returns, per image, the
predicted ``digit`` and the ten class ``probabilities`` (softmax applied when
the network outputs logits).

This file is logged as the model's code ("models from code": nothing is
pickled) and must stay self-contained: a serving process loads it with only
NumPy, pandas, Keras and MLflow installed, without the rest of the project.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# Artifact names under which the model's files are logged.
KERAS_ARTIFACT = "keras_model"
CONFIG_ARTIFACT = "serving_config"


class BadInput(MlflowException):
    """A request the model cannot answer; the scoring server turns it into HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def check_pixels(batch: Any) -> np.ndarray:
    """A (N, 28, 28) float32 batch of raw pixels, or ``BadInput`` saying what is wrong.

    Accepts (N, 28, 28) or flat (N, 784) arrays, lists or DataFrames of
    numbers in [0, 255].
    """
    if isinstance(batch, pd.DataFrame):
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


class MnistClassifier(PythonModel):
    """Keras network + the normalization it was trained with."""

    def load_context(self, context: Any) -> None:
        self.load(context.artifacts[KERAS_ARTIFACT], context.artifacts[CONFIG_ARTIFACT])

    def load(self, keras_path: str | Path, config_path: str | Path) -> MnistClassifier:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
        import keras  # noqa: PLC0415 - TensorFlow: only when a model is actually loaded

        config = json.loads(Path(config_path).read_text())
        self.offset = np.float32(config["normalization"]["offset"])
        self.scale = np.float32(config["normalization"]["scale"])
        self.logits = config["output"] == "linear"
        self.network = keras.models.load_model(keras_path, safe_mode=True)
        return self

    def probabilities(self, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities for a checked batch of raw pixels, (N, 10)."""
        x = (pixels - self.offset) / self.scale
        out = np.concatenate(
            [np.asarray(self.network(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        )
        return softmax(out) if self.logits else out

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        probs = self.probabilities(check_pixels(model_input))
        return pd.DataFrame({"digit": probs.argmax(axis=1).astype(np.int64), "probabilities": list(probs)})


set_model(MnistClassifier())
