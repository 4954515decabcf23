"""The served model: raw pixels in, per image the class (MNIST: the digit) and the probabilities out.

An MLflow pyfunc model around ``classifier.Classifier``. A client sends a
batch of images in the model's shape (``serving.json``'s ``image_shape``;
MNIST: 28x28) with values in 0-255, as in the data set's files; the model
normalizes them as in training and answers, per image, the class (``digit``
for MNIST, ``label`` and ``class`` for other data) and one probability per
class. A bad request raises an error that MLflow's
scoring server turns into HTTP 400 with the message.

This file is logged as the model's code ("models from code": nothing is
pickled), with ``classifier.py`` and ``cores.py`` beside it, so a serving
process loads it with only NumPy, pandas, MLflow and onnxruntime (Keras for a
model without an ONNX form, or with ``MODEL_RUNTIME=keras``), without the rest
of the project.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

try:  # the copy logged with this model (log_model's code_paths puts it on sys.path) ...
    from classifier import CONFIG_ARTIFACT, KERAS_ARTIFACT, ONNX_ARTIFACT, BadInput, Classifier, check_pixels
except ImportError:  # ... or, inside the project, the project's
    from stages.serving.classifier import (
        CONFIG_ARTIFACT,
        KERAS_ARTIFACT,
        ONNX_ARTIFACT,
        BadInput,
        Classifier,
        check_pixels,
    )


class MnistClassifier(PythonModel):
    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.classifier = Classifier(
            artifacts[KERAS_ARTIFACT], artifacts[CONFIG_ARTIFACT], artifacts.get(ONNX_ARTIFACT)
        )

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        try:
            pixels = check_pixels(model_input, self.classifier.shape)
        except BadInput as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(self.classifier.answer(pixels))


set_model(MnistClassifier())
