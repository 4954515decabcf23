"""The portable form of a trained network: ONNX, made where the network is trained, and checked there.

``export`` converts a Keras model with Keras 3's own ``model.export(format="onnx")``
(which calls tf2onnx), then makes the file depend only on the network: the
converter names tensors and nodes after TensorFlow's trace counters
(``Reshape_shape__19`` in one process, ``__38`` in the next) and stamps the
trace's name in the graph's doc string, so the same weights would give other
bytes on each run. Every name is replaced by its position, in graph order.

The file is trusted only after a check: onnxruntime's probabilities on the
given images (the validation split) equal Keras's within ``TOLERANCE``, with
the same top-1 class on every image. A network the converter refuses, or an
export that fails the check, raises ``Refused`` with a one-line reason and
writes nothing: the model is then served through Keras alone.

The ONNX graph takes the normalized images, as the Keras network does; the
served model (``stages.serving.classifier``) applies the normalization and,
for logits, the softmax, whichever form answers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.lib.files import atomic_path, sha256_file
from stages.lib.redact import described
from stages.serving.classifier import ONNX_INPUT, ONNX_OUTPUT, onnx_session, softmax

TOLERANCE = 1e-5  # largest allowed difference of one probability between onnxruntime and Keras
BATCH_DIM = "batch"


class Refused(RuntimeError):
    """The network has no trustworthy ONNX form; the message says why, in one line."""


def export(model: Any, path: Path, x_check: np.ndarray, output: str = "softmax", batch_size: int = 1024) -> str:
    """Write ``model``'s checked, deterministic ONNX form to ``path``; return its sha256, or raise ``Refused``
    (``path`` then does not exist: a stale file from an earlier model is removed). ``output``: the network's
    output kind (``model.output``: softmax, or linear for logits)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    data = canonical(convert(model, x_check[:1]))
    check(model, data, x_check, output, batch_size)
    with atomic_path(path, suffix=".onnx") as tmp:
        Path(tmp).write_bytes(data)
    return sha256_file(path)


def convert(model: Any, example: np.ndarray) -> Any:
    """The converter's ONNX model (an ``onnx.ModelProto``) of the Keras ``model``."""
    import onnx  # noqa: PLC0415 - only where a model is exported

    model(example, training=False)  # Keras exports only a model that has been called
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        target = os.path.join(tmp, "model.onnx")
        try:
            with _quiet():
                model.export(target, format="onnx", verbose=False)
            return onnx.load(target)
        except Exception as exc:  # whatever the converter cannot do is one line, and Keras serves alone
            raise Refused(f"the ONNX converter (tf2onnx) refused the network: {described(exc)}") from None


@contextlib.contextmanager
def _quiet():
    """Without tf2onnx's INFO log lines, its FutureWarning, and TensorFlow's tracing chatter on stdout."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's own use of np.object
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def canonical(proto: Any) -> bytes:
    """The ONNX model's bytes with every name given by position (``w0`` weights, ``t0`` tensors, ``n0_Conv``
    nodes), one input ``pixels`` and one output ``outputs`` with a ``batch`` dimension, and no doc strings."""
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise Refused(f"the ONNX graph has {len(graph.input)} inputs and {len(graph.output)} outputs, not 1 and 1")
    for node in graph.node:
        if any(attr.g.node or attr.graphs for attr in node.attribute):
            raise Refused(f"the ONNX graph has a subgraph (node {node.op_type}), which cannot be renamed safely")
    names = {graph.input[0].name: ONNX_INPUT, graph.output[0].name: ONNX_OUTPUT}
    # Weights by first use (the converter lists them in an order of its own that varies), then tensors.
    weights = {init.name for init in graph.initializer}
    for node in graph.node:
        for name in node.input:
            if name in weights and name not in names:
                names[name] = f"w{len(names) - 2}"
    unused = sorted((init for init in graph.initializer if init.name not in names), key=lambda i: i.SerializeToString())
    for init in unused:
        names[init.name] = f"w{len(names) - 2}"
    tensors = 0
    for node in graph.node:
        for out in node.output:
            if out and out not in names:
                names[out] = f"t{tensors}"
                tensors += 1
    for i, node in enumerate(graph.node):
        node.name = f"n{i}_{node.op_type}"
        node.doc_string = ""
        node.input[:] = [names.get(x, x) for x in node.input]
        node.output[:] = [names.get(x, x) for x in node.output]
    for init in graph.initializer:
        init.name = names[init.name]
    ordered = sorted(graph.initializer, key=lambda init: int(init.name[1:]))
    copies = [type(init)() for init in ordered]
    for copy, init in zip(copies, ordered, strict=True):
        copy.CopyFrom(init)
    del graph.initializer[:]
    graph.initializer.extend(copies)
    for value in (*graph.input, *graph.output):
        value.name = names[value.name]
        value.doc_string = ""
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    del graph.value_info[:]  # shapes the converter inferred, under the old names: onnxruntime infers its own
    graph.doc_string = ""
    graph.name = "network"
    proto.doc_string = ""
    return proto.SerializeToString(deterministic=True)


def check(model: Any, data: bytes, x: np.ndarray, output: str = "softmax", batch_size: int = 1024) -> None:
    """``Refused`` unless onnxruntime on ``data`` gives Keras's outputs on ``x`` within ``TOLERANCE`` (as
    probabilities) and the same top-1 class for every image."""
    worst, disagree = 0.0, 0
    with _onnxruntime_refusal():
        ort_session = onnx_session(data)
    for i in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        expected = as_probabilities(np.asarray(model(batch, training=False)), output)  # Keras' errors are its own
        with _onnxruntime_refusal():
            answer = ort_session.run([ONNX_OUTPUT], {ONNX_INPUT: batch})[0]
        got = as_probabilities(answer, output)
        worst = max(worst, float(np.abs(got - expected).max()))
        disagree += int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    if worst > TOLERANCE or disagree:
        raise Refused(
            f"the ONNX form differs from Keras on the {len(x)} check images: largest probability difference "
            f"{worst:.1e} (allowed {TOLERANCE:.0e}), top-1 class different on {disagree}"
        )


@contextlib.contextmanager
def _onnxruntime_refusal() -> Iterator[None]:
    """onnxruntime failing to load or run the graph (an op it lacks, a damaged file): ``Refused``, and Keras
    serves alone. Only onnxruntime's calls: an error of Keras or of this machine (memory) stays an error."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        raise Refused(f"onnxruntime cannot run the ONNX form: {described(exc)}") from None


def as_probabilities(outputs: np.ndarray, output: str) -> np.ndarray:
    """The network's outputs as float64 probabilities (a softmax of logits)."""
    outputs = outputs.astype(np.float64)
    return softmax(outputs) if output == "linear" else outputs
