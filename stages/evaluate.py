"""DVC stage ``evaluate``: test-set metrics, reports and figures.

The one place the test split is used. The model answers as it is served:
through its ONNX form when it has a sound one (no TensorFlow is imported),
else through Keras (``stages.serving.classifier``). Writes ``reports/metrics.json`` (DVC
metrics) and ``reports/evaluate/`` (per-class scores, confusions, predictions
for DVC's confusion plot, figures). The ``publish`` stage logs them to MLflow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages import finish
from stages.lib import runtime
from stages.lib.data import MNIST, dataset, is_digits, load_split, read_stats
from stages.lib.files import atomic_path, sha256_file, write_json
from stages.lib.paths import EVALUATE_DIR, METRICS_PATH, MODEL_PATH, ONNX_PATH, PREPARED_DIR, SERVING_CONFIG_PATH
from stages.params import evaluate as evaluate_params
from stages.params import model as model_params
from stages.params import schema
from stages.params import train as train_params
from stages.serving.classifier import Classifier, ModelUnavailable, softmax

KERAS_EPSILON = 1e-7  # keras.config.epsilon(): how far Keras keeps probabilities from 0 and 1 in its losses


def accuracy(y: np.ndarray, outputs: np.ndarray) -> float:
    """The share of images whose highest output is their label."""
    return float((outputs.argmax(axis=1) == y).mean())


def cross_entropy(y: np.ndarray, outputs: np.ndarray, output: str) -> float:
    """Mean cross-entropy of integer labels ``y`` under the network's ``outputs`` (probabilities, or logits for
    ``model.output: linear``), computed as Keras computes it: probabilities clipped to [1e-7, 1 - 1e-7] and
    renormalized. In float64, so it equals Keras's float32 figure at the 6 decimals written."""
    from scipy.special import logsumexp  # noqa: PLC0415

    out = outputs.astype(np.float64)
    logits = out if output == "linear" else np.log(np.clip(out, KERAS_EPSILON, 1 - KERAS_EPSILON))
    return float(np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), y]))


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str] = MNIST["classes"]):
    """Precision, recall, F1 and support per class, indexed by class name ("digit" for MNIST's)."""
    import pandas as pd  # noqa: PLC0415
    from sklearn.metrics import classification_report  # noqa: PLC0415

    labels = list(range(len(classes)))
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    rows = {name: report[str(i)] for i, name in enumerate(classes)}
    frame = pd.DataFrame.from_dict(rows, orient="index")[["precision", "recall", "f1-score", "support"]]
    frame.index.name = "digit" if is_digits(classes) else "class"
    frame["support"] = frame["support"].astype(int)
    return frame.rename(columns={"f1-score": "f1"})


def top_confusions(matrix: np.ndarray, k: int, classes: list[str] = MNIST["classes"]):
    """The ``k`` largest off-diagonal cells: (actual, predicted, count, share of that actual class); the
    classes by name (MNIST's digits stay numbers)."""
    import pandas as pd  # noqa: PLC0415

    off = matrix.copy()
    np.fill_diagonal(off, 0)
    actual, predicted = np.unravel_index(np.argsort(off, axis=None, kind="stable")[::-1][:k], off.shape)
    frame = pd.DataFrame({"actual": actual, "predicted": predicted, "count": off[actual, predicted]})
    frame = frame[frame["count"] > 0].reset_index(drop=True)
    frame["share_of_actual"] = (frame["count"] / matrix.sum(axis=1)[frame["actual"]]).round(4)
    if not is_digits(classes):
        frame["actual"] = [classes[i] for i in frame["actual"]]
        frame["predicted"] = [classes[i] for i in frame["predicted"]]
    return frame


def write_reports(
    x_test: np.ndarray,
    y_test: np.ndarray,
    probs: np.ndarray,
    metrics: dict[str, Any],
    cfg: dict[str, Any],
    report_dir: Path = EVALUATE_DIR,
    metrics_path: Path = METRICS_PATH,
    classes: list[str] = MNIST["classes"],
):
    """Every test-set report and figure, labelled with the class names; returns the most confused pairs
    (a DataFrame) for the log."""
    import pandas as pd  # noqa: PLC0415
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415

    from stages.lib import plots  # noqa: PLC0415

    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_test, y_pred, labels=list(range(len(classes))))
    table = per_class_table(y_test, y_pred, classes)
    pairs = top_confusions(matrix, cfg["top_confusions"], classes)
    name = classes.__getitem__ if not is_digits(classes) else str

    report_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(report_dir / "per_class.csv") as tmp:
        table.to_csv(tmp, float_format="%.6f")
    write_json(report_dir / "per_class.json", json.loads(table.round(6).to_json(orient="index")))
    with atomic_path(report_dir / "confusions.csv") as tmp:
        pairs.to_csv(tmp, index=False)
    with atomic_path(report_dir / "predictions.csv") as tmp:  # for `dvc plots` confusion template
        pd.DataFrame({"actual": [name(i) for i in y_test], "predicted": [name(i) for i in y_pred]}).to_csv(
            tmp, index=False
        )
    plots.confusion_heatmap(matrix, report_dir / "confusion_matrix.png", labels=classes)

    wrong = np.flatnonzero(y_pred != y_test)
    # Most confident mistakes first: the most instructive ones.
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][: cfg["gallery_size"]]
    plots.image_grid(
        x_test[wrong],
        [f"true {name(y_test[i])} / pred {name(y_pred[i])}\n{probs[i, y_pred[i]]:.0%}" for i in wrong],
        report_dir / "misclassified.png",
        title=f"Misclassified test images ({len(wrong)} most confident)",
        highlight=[True] * len(wrong),
    )
    sample = np.arange(min(cfg["sample_size"], len(x_test)))
    plots.image_grid(
        x_test[sample],
        [f"actual {name(y_test[i])}\npred {name(y_pred[i])}" for i in sample],
        report_dir / "samples.png",
        title="Sample test predictions",
        highlight=[bool(y_pred[i] != y_test[i]) for i in sample],
    )
    write_json(metrics_path, metrics)
    return pairs


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    stage_started = time.time()
    try:
        cfg = schema.load(model_params, train_params, evaluate_params)
    except schema.ParamsError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2

    started = time.monotonic()
    try:
        classifier = Classifier(MODEL_PATH, SERVING_CONFIG_PATH, ONNX_PATH)  # what is served: ONNX when sound
        (x_val, y_val), (x_test, y_test) = load_split(PREPARED_DIR, "val"), load_split(PREPARED_DIR, "test")
        classes = dataset(read_stats())["classes"]
    except FileNotFoundError as exc:
        print(f"evaluate: error: {exc.filename} is missing: run the pipeline first (dvc repro)", file=sys.stderr)
        return 2
    except ModelUnavailable as exc:  # MODEL_RUNTIME unknown, or asking for a form the model lacks
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    batch = cfg["evaluate"]["batch_size"]
    output = classifier.config["output"]  # the model's own (serving.json), as it is served
    val_outputs, test_outputs = classifier.outputs(x_val, batch), classifier.outputs(x_test, batch)
    metrics = {
        k: round(v, 6)
        for k, v in {
            "test_accuracy": accuracy(y_test, test_outputs),
            "test_loss": cross_entropy(y_test, test_outputs, output),
            "val_accuracy": accuracy(y_val, val_outputs),
            "val_loss": cross_entropy(y_val, val_outputs, output),
        }.items()
    }
    test_accuracy, test_loss = metrics["test_accuracy"], metrics["test_loss"]
    probs = softmax(test_outputs) if classifier.logits else test_outputs
    pairs = write_reports(x_test, y_test, probs, metrics, cfg["evaluate"], classes=classes)
    top = ", ".join(
        f"{a}->{p} ({c})" for a, p, c in pairs[["actual", "predicted", "count"]].head(3).itertuples(index=False)
    )
    print(
        f"evaluate: test_accuracy {test_accuracy:.4f}, test_loss {test_loss:.4f}; most confused: {top} "
        f"({time.monotonic() - started:.1f}s, {classifier.runtime})"
    )

    runtime.remember("evaluate", sha256_file(MODEL_PATH), started=stage_started, ended=time.time())
    return 0


if __name__ == "__main__":
    finish(main())
