"""The trained network as an image classifier: raw pixels in, class probabilities out.

Applies the normalization the pipeline trained with (minmax or the fitted
z-score constants, from ``serving.json``) and a softmax when the network
outputs logits, so callers never need to know either. Used by ``predict``
directly and by the served MLflow model (``mlflow_model.py``).

Answers through onnxruntime when the model has a sound ONNX form (the train
stage makes and checks it: ``stages.lib.portable``), else through Keras.

Self-contained on purpose (NumPy and ``cores.py``; onnxruntime or Keras when a
model is loaded): the logged MLflow model carries a copy of this file and
imports it without the rest of the project.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

try:  # the copy logged with the model (code_paths puts it on sys.path) ...
    from cores import usable as usable_cores
except ImportError:  # ... or, inside the project, the project's
    from stages.serving.cores import usable as usable_cores

IMAGE_SHAPE = (28, 28)  # MNIST's; a model's own is in its serving.json
DIGITS = [str(d) for d in range(10)]
# Names under which the served model carries the Keras file, its serving.json and its ONNX form.
KERAS_ARTIFACT = "keras_model"
CONFIG_ARTIFACT = "serving_config"
ONNX_ARTIFACT = "onnx_model"
# The ONNX graph's input (normalized images) and output (what the Keras network outputs).
ONNX_INPUT = "pixels"
ONNX_OUTPUT = "outputs"
RUNTIME_ENV = "MODEL_RUNTIME"  # which form answers: auto (ONNX when sound, else Keras), onnx, keras
RUNTIMES = ("auto", "onnx", "keras")
THREADS_ENV = "MODEL_THREADS"  # onnxruntime's threads per process (make serve: one per worker, a worker per core)


class BadInput(ValueError):
    """A batch the classifier cannot answer; the message says what is wrong."""


class ModelUnavailable(RuntimeError):
    """The model cannot answer in this environment or with the runtime asked for; the message says why."""


_IMPORT_LOCK = threading.Lock()  # standard error is the process's: one redirection at a time


def import_keras() -> Any:
    """Keras, and TensorFlow under it, without the native start-up lines TensorFlow writes to stderr before its
    own logging is set up ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on"),
    which ``TF_CPP_MIN_LOG_LEVEL`` cannot silence.

    Standard error goes to a temporary file during the import and is written out after all if the import
    fails, so a failure keeps its messages; an ``ImportError`` raises as usual. Left alone under ``python -X
    importtime`` or ``PYTHONPROFILEIMPORTTIME`` (the import times are what was asked for), when Keras is
    already imported, and when the process has no standard error to redirect.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own logging: warnings and errors only
    import_times = "importtime" in sys._xoptions or os.environ.get("PYTHONPROFILEIMPORTTIME")
    if import_times or "keras" in sys.modules or sys.stderr is None:
        import keras  # noqa: PLC0415

        return keras
    with _IMPORT_LOCK, tempfile.TemporaryFile() as held:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable file descriptor 2
            import keras  # noqa: PLC0415

            return keras
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: PLC0415
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return keras


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
    if not np.isfinite(x).all():  # JSON's null arrives as NaN
        raise BadInput("pixel values must be numbers in [0, 255], got NaN or infinity (a null or missing value?)")
    if x.min() < 0 or x.max() > 255:
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


def telemetry_off(env: Any) -> Any:
    """``env`` (``os.environ``, or a process's environment to be) with onnxruntime's usage events off unless it
    says otherwise: onnxruntime (1.29 on) sends them to Microsoft unless told not to. Needed in every process that
    may open a session, before it does (a version registered earlier opens one through its own logged copy of
    this file)."""
    env.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return env


def onnx_session(source: bytes | str | Path) -> Any:
    """An onnxruntime session on ONNX bytes or a file, on ``$MODEL_THREADS`` threads, else on the cores this
    process may use (``cores.usable``) rather than onnxruntime's count of the machine's cores."""
    telemetry_off(os.environ)
    import onnxruntime as ort  # noqa: PLC0415 - only when an ONNX form is loaded

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get(THREADS_ENV) or 0) or usable_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), options, ["CPUExecutionProvider"])


def onnx_problem(onnx_path: str | Path | None, config: dict[str, Any]) -> str | None:
    """Why the ONNX form at ``onnx_path`` cannot be used for this model (None: it can): none was made, the file
    is missing, or its bytes are not those the train stage recorded (``serving.json``'s ``onnx.sha256``)."""
    recorded = config.get("onnx")
    if not recorded:
        return config.get("onnx_refused") or "the model has no ONNX form"
    if onnx_path is None or not Path(onnx_path).is_file():
        return f"its ONNX form ({recorded['file']}) is missing"
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    if digest != recorded["sha256"]:
        name = Path(onnx_path).name
        return f"its ONNX form ({name}) is damaged: sha256 {digest[:12]}..., recorded {recorded['sha256'][:12]}..."
    return None


class Classifier:
    """The trained network + the normalization it was trained with, answering through onnxruntime when the
    model has a sound ONNX form and ``runtime`` allows it (no TensorFlow is imported then), else through Keras.

    ``runtime``: ``auto`` (default; also ``$MODEL_RUNTIME``), ``onnx`` (the ONNX form or an error) or ``keras``.
    A model whose ONNX form is missing or damaged answers through Keras, with one line on stderr saying why;
    where Keras is not installed (the inference-only environment), ``ModelUnavailable`` says so instead.
    """

    def __init__(
        self,
        keras_path: str | Path,
        config_path: str | Path,
        onnx_path: str | Path | None = None,
        runtime: str | None = None,
    ) -> None:
        config = json.loads(Path(config_path).read_text())
        self.config = config
        self.shape = tuple(config.get("image_shape", IMAGE_SHAPE))
        self.classes = config.get("classes", DIGITS)
        self.offset = np.float32(config["normalization"]["offset"])
        self.scale = np.float32(config["normalization"]["scale"])
        self.logits = config["output"] == "linear"
        runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
        if runtime not in RUNTIMES:
            raise ModelUnavailable(f"{RUNTIME_ENV}={runtime}: expected one of {', '.join(RUNTIMES)}")
        self.session = self.network = None
        problem = onnx_problem(onnx_path, config) if runtime != "keras" else None
        if runtime != "keras" and problem is None:
            try:
                self.session = onnx_session(Path(onnx_path))
            except Exception as exc:  # an unreadable file is a reason to use Keras, never a wrong answer
                problem = f"onnxruntime cannot load its ONNX form: {type(exc).__name__}: {_first_line(exc)}"
        if self.session is not None:
            self.runtime = "onnxruntime"
            return
        if runtime == "onnx":
            raise ModelUnavailable(f"{problem} ({RUNTIME_ENV}=onnx asks for it)")
        try:
            keras = import_keras()  # TensorFlow: only when a model is answered through Keras
        except ImportError as exc:
            if importlib.util.find_spec("keras") is None:
                missing = "Keras is not installed here (an inference-only environment)"
            else:  # installed, but it (or TensorFlow under it) fails to import: say why
                missing = f"Keras cannot be imported here ({type(exc).__name__}: {_first_line(exc)})"
            if problem is None:  # the keras runtime was asked for
                usable = onnx_problem(onnx_path, config) is None
                raise ModelUnavailable(
                    "the keras runtime was asked for (--runtime keras, RUNTIME=keras or MODEL_RUNTIME=keras), and "
                    f"{missing}: "
                    + ("leave the runtime to auto (its ONNX form)" if usable else "this model has no usable ONNX form")
                    + ", or use the full environment (make install)"
                ) from None
            raise ModelUnavailable(
                f"{problem}, and {missing}: use a model trained with an ONNX form, "
                "or the full environment (make install)"
            ) from None
        if problem and config.get("onnx"):  # it was meant to have one: say why it is not used
            print(f"classifier: {problem}; answering through Keras", file=sys.stderr)
        self.network = keras.models.load_model(keras_path, safe_mode=True)
        self.runtime = "keras"

    def outputs(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The network's outputs (probabilities, or logits) for normalized images (N, *self.shape)."""
        parts = []
        for i in range(0, len(x), batch_size):
            batch = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
            if self.session is not None:
                parts.append(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: batch})[0])
            else:
                parts.append(np.asarray(self.network(batch, training=False)))
        return np.concatenate(parts)

    def probabilities(self, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, classes) for a checked batch of raw pixels (N, *self.shape)."""
        out = self.outputs((pixels - self.offset) / self.scale, batch_size)
        return softmax(out) if self.logits else out

    def answer(self, pixels: np.ndarray) -> dict[str, Any]:
        """Per image, as the served model answers (``output_columns``): the class and the probabilities."""
        probs = self.probabilities(pixels)
        best = probs.argmax(axis=1).astype(np.int64)
        if output_columns(self.config)[0] == "digit":
            return {"digit": best, "probabilities": list(probs)}
        return {"label": best, "class": [self.classes[i] for i in best], "probabilities": list(probs)}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
