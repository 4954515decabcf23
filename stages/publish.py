"""DVC stage ``publish``: the current result in MLflow, once; its model registered and judged.

Runs on every ``dvc repro`` / ``dvc exp run`` (``always_changed``) because
DVC cannot see the MLflow store: when the current result (see
``tracking.result_key``) is already in the store ``MLFLOW_TRACKING_URI`` (or
the default) points at, it says so and stops, without importing MLflow.
Otherwise it logs one complete run (params, per-epoch history, metrics, the
prepared data as run inputs, reports, the served model), registers the model
as a new version of ``mnist-classifier`` and moves the ``champion`` alias when
the new version's validation accuracy is higher.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
import types
from importlib import metadata
from pathlib import Path
from typing import Any

from stages import finish, params, runtime, tracking
from stages.config import (
    EVALUATE_DIR,
    HISTORY_PATH,
    METRICS_PATH,
    MODEL_PATH,
    RAW_DIR,
    SERVING_CONFIG_PATH,
    STATS_PATH,
)
from stages.data import read_stats
from stages.files import dir_digest, sha256_file

SECTIONS = ("fetch", "preprocess", "model", "train", "evaluate")
# What a result is: these files' contents plus every param.
RESULT_FILES = [MODEL_PATH, SERVING_CONFIG_PATH, METRICS_PATH, HISTORY_PATH, STATS_PATH]
SERVING_CODE = Path(__file__).with_name("serving.py")
CLASSIFIER_CODE = Path(__file__).with_name("classifier.py")
# Key params copied onto each registered model version, next to its scores
# (model.cnn.filters only for a CNN).
VERSION_PARAMS = (
    "model.kind",
    "model.cnn.filters",
    "model.hidden_units",
    "model.activation",
    "model.dropout",
    "model.output",
    "train.epochs",
    "train.learning_rate",
    "train.batch_size",
    "train.seed",
    "train.schedule",
    "train.augment",
    "preprocess.normalize",
)
DATA_DIGEST_LEN = 32  # MLflow stores dataset digests in 36 characters (PostgreSQL enforces it)


def run_name(environ: dict[str, str] | None = None) -> str:
    """The experiment's name under ``dvc exp run``; otherwise ``workspace@<commit>``."""
    environ = os.environ if environ is None else environ
    if environ.get("DVC_EXP_NAME"):
        return environ["DVC_EXP_NAME"]
    commit = tracking.git_facts().get("mlflow.source.git.commit", "")
    return f"workspace@{commit[:7]}" if commit else "workspace"


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model, given rather than inferred (inference loads the model)."""
    pins = []
    for name in ["tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas"]:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    if any(p.startswith("tensorflow-cpu==") for p in pins):
        pins = [p for p in pins if not p.startswith("tensorflow==")]
    return pins


def datasets(stats: dict[str, Any], fetched: dict[str, Any] | None) -> list[Any]:
    """The prepared splits as MLflow run inputs: name, digest (= the run's ``data.digest`` tag), source, context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag  # noqa: PLC0415

    digest = stats["sha256"][:DATA_DIGEST_LEN]
    source = {"uri": fetched["origin"]} if fetched else {"uri": RAW_DIR.as_posix(), "note": "restored by DVC"}
    inputs = []
    for split, context in [("train", "training"), ("val", "validation"), ("test", "test")]:
        shape = stats["shapes"][f"x_{split}"]
        profile = {"num_rows": shape[0], "image_shape": shape[1:], "class_counts": stats["class_counts"][split]}
        dataset = Dataset(
            name=f"mnist-{split}",
            digest=digest,
            source_type="http" if source["uri"].startswith("http") else "code",
            source=json.dumps(source),
            schema=json.dumps(
                {"images": f"float32 {shape}", "labels": "int64", "normalization": stats["normalization"]}
            ),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def signature() -> Any:
    """Raw pixels in ((N, 28, 28), 0-255); per image the digit and the ten probabilities out."""
    import numpy as np  # noqa: PLC0415
    from mlflow.models import ModelSignature  # noqa: PLC0415
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec  # noqa: PLC0415

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28, 28))]),
        outputs=Schema([ColSpec("long", "digit"), ColSpec(Array("double"), "probabilities")]),
    )


def log_model(run_id: str, input_example: Any) -> Any:
    """The served model (``serving.py``, ``classifier.py``, the Keras file, its normalization) into the run."""
    import mlflow.pyfunc  # noqa: PLC0415
    from mlflow.models import Model  # noqa: PLC0415

    from stages.classifier import CONFIG_ARTIFACT, KERAS_ARTIFACT  # noqa: PLC0415

    # MLflow would check the input example by loading the logged model and
    # predicting: importing TensorFlow here (~6 s of this stage) to repeat what
    # the tests do for real (they serve the logged model over HTTP). Model.log
    # skips the check on validate_serving_input=False, a flag that it also
    # passes on to the flavor's save_model, which pyfunc's does not take.
    def save_model(validate_serving_input: bool = False, **kwargs: Any) -> None:
        mlflow.pyfunc.save_model(**kwargs)

    flavor = types.SimpleNamespace(__name__=mlflow.pyfunc.__name__, save_model=save_model)
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=flavor,
        validate_serving_input=False,
        run_id=run_id,
        python_model=str(SERVING_CODE),  # models from code: nothing pickled
        code_paths=[str(CLASSIFIER_CODE)],
        artifacts={KERAS_ARTIFACT: str(MODEL_PATH), CONFIG_ARTIFACT: str(SERVING_CONFIG_PATH)},
        signature=signature(),
        input_example=input_example,
        pip_requirements=pip_requirements(),
    )


def publish(uri: str, artifact_location: str | None, cfg: dict[str, Any], key: str, started: float) -> str:
    """Log the result as one run, register its model, update ``champion``; return the one-line summary."""
    # A server that fails mid-way: a clear error in seconds, not MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.utils import mlflow_tags  # noqa: PLC0415

    from stages import registry  # noqa: PLC0415

    mlflow.set_tracking_uri(uri)  # the registry resolves models:/ URIs through it
    client = MlflowClient(uri)
    stats = read_stats()
    model_sha = sha256_file(MODEL_PATH)
    trained, evaluated = runtime.recall("train", model_sha), runtime.recall("evaluate", model_sha)
    metrics = json.loads(METRICS_PATH.read_text())
    if trained:
        metrics["train_seconds"] = round(trained["train_seconds"], 3)
    flat = params.flatten(cfg)
    data_digest = stats["sha256"][:DATA_DIGEST_LEN]
    git = tracking.git_facts()
    exp_name = os.environ.get("DVC_EXP_NAME")
    tags = {
        **git,
        mlflow_tags.MLFLOW_SOURCE_NAME: "dvc exp run" if exp_name else "dvc repro",
        mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL",
        mlflow_tags.MLFLOW_USER: getpass.getuser(),
        tracking.RESULT_TAG: key,
        "data.digest": data_digest,
    }
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    if not (trained and evaluated):
        tags["pipeline.timing"] = "outputs restored by DVC: times are of this logging, not of training"
    start_ms = int(1000 * (trained["started"] if trained else started))
    end_ms = int(1000 * evaluated["ended"]) if (trained and evaluated) else None
    x_example = raw_test_pixels(2)
    outcome: dict[str, Any] = {}

    def rest(run_id: str) -> None:
        client.log_inputs(run_id, datasets=datasets(stats, runtime.recall("fetch", dir_digest(RAW_DIR))))
        client.log_artifact(run_id, str(METRICS_PATH), "reports")
        client.log_artifact(run_id, str(HISTORY_PATH), "reports/train")
        client.log_artifacts(run_id, str(EVALUATE_DIR), "reports/evaluate")
        info = log_model(run_id, x_example)
        version_tags = {k: str(flat[k]) for k in VERSION_PARAMS if k in flat}
        if flat.get("model.kind") != "cnn":
            version_tags.pop("model.cnn.filters", None)  # says nothing about a dense network
        version_tags.update(
            {
                "val_accuracy": str(metrics["val_accuracy"]),
                "test_accuracy": str(metrics["test_accuracy"]),
                "git.commit": git.get(mlflow_tags.MLFLOW_GIT_COMMIT, "unknown"),
                "data.digest": data_digest,
            }
        )
        outcome["version"] = registry.register(info.model_uri, version_tags)
        outcome["decision"] = registry.update_champion(client, outcome["version"])

    with tracking.store_lock(uri):
        found = tracking.find_run(uri, key)  # another process may have logged it meanwhile
        if found:
            return f"publish: this result is already in {uri} as run {found[1]} ({found[0]}); nothing logged"
        experiment_id = tracking.ensure_experiment(client, artifact_location)
        # MLflow files the logged model under the *active* experiment (else 'Default', in ./mlruns).
        mlflow.set_experiment(experiment_id=experiment_id)
        history = pd.read_csv(HISTORY_PATH).to_dict(orient="records")
        run_id = tracking.log_run(
            client,
            experiment_id,
            run_name=run_name(),
            tags=tags,
            params=flat,
            history=history,
            metrics=metrics,
            start_ms=start_ms,
            end_ms=end_ms,
            log_rest=rest,
        )
    return (
        f"publish: logged run {run_id} to {uri}; registered {registry.MODEL_NAME} version "
        f"{outcome['version']}\nregistry: {outcome['decision'].message}"
    )


def raw_test_pixels(n: int) -> Any:
    """The first ``n`` test images as raw 0-255 pixels: the served model's input example."""
    from stages import idx  # noqa: PLC0415

    images = idx.read(RAW_DIR / "t10k-images-idx3-ubyte")
    return images[:n].astype("float32")


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    started = time.time()
    try:
        cfg = params.load(*SECTIONS)
        uri, artifact_location = tracking.store()
        tracking.preflight(uri)
        key = tracking.result_key(RESULT_FILES, params.flatten(cfg))
        found = tracking.find_run(uri, key)
    except (params.ParamsError, tracking.TrackingError) as exc:
        print(f"publish: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"publish: error: {exc.filename} is missing: run the pipeline first (dvc repro)", file=sys.stderr)
        return 2
    if found:
        print(f"publish: this result is already in {uri} as run {found[1]} ({found[0]}); nothing to log")
        return 0
    try:
        summary = publish(uri, artifact_location, cfg, key, started)
    except Exception as exc:  # the store failed mid-way: one line, not a traceback; the run is marked FAILED
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"publish: error: logging to {uri} failed: {reason}", file=sys.stderr)
        return 1
    print(summary + f" ({time.time() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    finish(main())
