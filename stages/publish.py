"""DVC stage ``publish``: the current result in MLflow, once; its model registered and judged.

Runs on every ``dvc repro`` / ``dvc exp run`` (``always_changed``) because
DVC cannot see the MLflow store. The result's identity (``stages.lib.identity``:
the served model, the data, the params that take effect) decides: when a
FINISHED run already holds it in the store ``MLFLOW_TRACKING_URI`` (or the
default) points at, and its model is registered, it says so and stops, without
importing MLflow. Otherwise it claims the result, logs one complete run
(params, per-epoch history, metrics, the prepared data as run inputs,
reports, the served model), and only once that run is FINISHED registers the
model (a new version of ``<data set>-classifier``, ``mnist-classifier`` for MNIST, or the existing version of the
same served model) and applies the ``champion`` rule (``stages.lib.registry``).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

from stages import finish
from stages.lib import claims, identity, redact, registry, runtime, stopping, store, tracking
from stages.lib.data import dataset, read_stats
from stages.lib.files import dir_digest, sha256_file
from stages.lib.paths import (
    EVALUATE_DIR,
    HISTORY_PATH,
    METRICS_PATH,
    MODEL_PATH,
    ONNX_PATH,
    PREPARED_DIR,
    RAW_DIR,
    SERVING_CONFIG_PATH,
)
from stages.params import pipeline, schema
from stages.params.pipeline import SECTIONS
from stages.serving.classifier import (
    CONFIG_ARTIFACT,
    IMAGE_SHAPE,
    KERAS_ARTIFACT,
    ONNX_ARTIFACT,
    onnx_problem,
    output_columns,
)

# Key params copied onto each registered model version, next to its scores
# (only those that take effect: model.cnn.filters for a CNN only).
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
SERVING_CODE = [identity.SERVING_CODE, *identity.SERVING_LIBRARY]


class DamagedModel(ValueError):
    """A pipeline output does not match what the train stage recorded about it."""


def model_files(config_path: Path = SERVING_CONFIG_PATH) -> dict[str, Path]:
    """What the served model carries (artifact name -> file): the Keras file, ``serving.json``, and the ONNX form
    when the train stage made one, after checking it is the file it recorded (``DamagedModel`` otherwise)."""
    files = {KERAS_ARTIFACT: MODEL_PATH, CONFIG_ARTIFACT: config_path}
    config = json.loads(Path(config_path).read_text())
    if config.get("onnx"):
        problem = onnx_problem(ONNX_PATH, config)
        if problem:
            raise DamagedModel(f"{problem}: restore the train stage's outputs (dvc checkout data/model)")
        files[ONNX_ARTIFACT] = ONNX_PATH
    return files


def run_name(git: dict[str, str], environ: dict[str, str] | None = None) -> str:
    """The experiment's name under ``dvc exp run``; otherwise ``workspace@<commit>`` (``-dirty`` when the
    checkout has changes a commit does not hold)."""
    environ = os.environ if environ is None else environ
    if environ.get("DVC_EXP_NAME"):
        return environ["DVC_EXP_NAME"]
    commit = git.get("mlflow.source.git.commit", "")
    if not commit:
        return "workspace"
    return f"workspace@{commit[:7]}" + ("-dirty" if git.get(tracking.DIRTY_TAG) == "true" else "")


def keys(cfg: dict[str, Any], data_digest: str) -> tuple[str, str]:
    """(model key, result key) of the current outputs."""
    model_key = identity.model_key(model_files(), SERVING_CODE, identity.pip_requirements())
    return model_key, identity.result_key(model_key, data_digest, identity.effective(cfg, SECTIONS))


def names(cfg: dict[str, Any]) -> tuple[str, str]:
    """(MLflow experiment, registered model) of the data set ``fetch.name``: one registry line per data set."""
    name = cfg["fetch"]["name"]
    return name, registry.model_name(name)


def datasets(stats: dict[str, Any], fetched: dict[str, Any] | None) -> list[Any]:
    """The prepared splits as MLflow run inputs: name, digest (= the run's ``data.digest`` tag), source, context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag  # noqa: PLC0415

    digest = stats["sha256"][:DATA_DIGEST_LEN]
    source = {"uri": fetched["origin"]} if fetched else {"uri": RAW_DIR.as_posix(), "note": "restored by DVC"}
    inputs = []
    for split, context in [("train", "training"), ("val", "validation"), ("test", "test")]:
        shape = stats["shapes"][f"x_{split}"]
        profile = {"num_rows": shape[0], "image_shape": shape[1:], "class_counts": stats["class_counts"][split]}
        entry = Dataset(
            name=f"{dataset(stats)['name']}-{split}",
            digest=digest,
            source_type="http" if source["uri"].startswith("http") else "code",
            source=json.dumps(source),
            schema=json.dumps(
                {"images": f"float32 {shape}", "labels": "int64", "normalization": stats["normalization"]}
            ),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(entry, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def signature(config: dict[str, Any]) -> Any:
    """Raw pixels in ((N, H, W) or (N, H, W, 3), 0-255); per image the class (MNIST: ``digit``; otherwise
    ``label`` and its ``class`` name) and the probabilities out (``serving.json`` says which)."""
    import numpy as np  # noqa: PLC0415
    from mlflow.models import ModelSignature  # noqa: PLC0415
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec  # noqa: PLC0415

    columns = {"digit": "long", "label": "long", "class": "string"}
    outputs = [ColSpec(columns[name], name) for name in output_columns(config) if name != "probabilities"]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *config.get("image_shape", IMAGE_SHAPE)))]),
        outputs=Schema([*outputs, ColSpec(Array("double"), "probabilities")]),
    )


def log_model(run_id: str, input_example: Any) -> Any:
    """The served model (``mlflow_model.py``, ``classifier.py``, the Keras file, its normalization) into the run."""
    import mlflow.pyfunc  # noqa: PLC0415
    from mlflow.models import Model  # noqa: PLC0415

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
        python_model=str(identity.SERVING_CODE),  # models from code: nothing pickled
        code_paths=[str(path) for path in identity.SERVING_LIBRARY],
        artifacts={name: str(path) for name, path in model_files().items()},
        signature=signature(json.loads(SERVING_CONFIG_PATH.read_text())),
        input_example=input_example,
        pip_requirements=identity.pip_requirements(),
    )


def publish(
    uri: str, artifact_location: str | None, cfg: dict[str, Any], model_key: str, key: str, started: float, log=print
) -> str:
    """Claim the result (waiting while another live publisher holds it), log it, register and judge its model;
    return the closing lines."""
    tracking.quiet_mlflow()
    import mlflow  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415

    with tracking.store_lock(uri):
        mlflow.set_tracking_uri(uri)  # models:/ URIs resolve through it
        client = MlflowClient(uri)  # inside the lock: the first client of a new SQLite store creates its schema
        experiment, model = names(cfg)
        experiment_id = tracking.ensure_experiment(client, artifact_location, experiment)
        mended = tracking.mend_stale_runs(client, experiment_id)
        if mended:
            log(
                f"publish: marked {len(mended)} stale run(s) FAILED (their publishing process has gone): "
                + ", ".join(mended)
            )
        claims.sweep_dead(client, model)
        claim = claims.acquire(
            client,
            model,
            "result",
            key,
            done=lambda: done(uri, key, experiment),
            on_wait=lambda holder: log(f"publish: waiting for {holder.describe()}, which is publishing this result"),
        )
        if claim is None:
            found = tracking.find_run(uri, key, experiment=experiment)
            return (
                f"publish: run {found.run_id} ({found.run_name}) holds this result already "
                f"(another publish got there first); nothing logged"
            )
        with claim.holding():
            return publish_claimed(client, claim, uri, experiment_id, cfg, model_key, key, started, log)


def done(uri: str, key: str, experiment: str) -> bool:
    """Whether a FINISHED run holds the result, its model registered and judged."""
    found = tracking.find_run(uri, key, experiment=experiment)
    return found is not None and found.registered


def take_over(client: Any, holder: claims.Holder, experiment_id: str) -> str:
    """Fail the RUNNING runs of a publisher whose claim went stale; the line that says so."""
    token = holder.tags.get(claims.TOKEN_TAG, "")
    failed = tracking.fail_attempt(client, experiment_id, token, [holder.run_id] if holder.run_id else [])
    marked = f"; marked its run {', '.join(failed)} FAILED" if failed else ""
    return f"publish: took over from {holder.describe()}, whose heartbeat had stopped{marked}"


def publish_claimed(
    client: Any,
    claim: claims.Claim,
    uri: str,
    experiment_id: str,
    cfg: dict[str, Any],
    model_key: str,
    key: str,
    started: float,
    log=print,
) -> str:
    """Log (unless a FINISHED run holds it already), register and judge the claimed result."""
    import mlflow  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    from mlflow.utils import mlflow_tags  # noqa: PLC0415

    if claim.took_over is not None:
        log(take_over(client, claim.took_over, experiment_id))
    shown = redact.uri(uri)
    stats = read_stats()
    model_sha = sha256_file(MODEL_PATH)
    trained, evaluated = runtime.recall("train", model_sha), runtime.recall("evaluate", model_sha)
    metrics = json.loads(METRICS_PATH.read_text())
    if trained:
        metrics["train_seconds"] = round(trained["train_seconds"], 3)
    flat = redact.params(schema.flatten(cfg))  # a URL param may carry a token: never logged verbatim
    effective = identity.effective(cfg, SECTIONS)
    data_digest = stats["sha256"][:DATA_DIGEST_LEN]
    git = tracking.git_facts()
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:  # the experiment's own commit holds the workspace as it ran: not dirty
        git.pop(tracking.DIRTY_TAG, None)
    tags = {
        **git,
        mlflow_tags.MLFLOW_SOURCE_NAME: "dvc exp run" if exp_name else "dvc repro",
        mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL",
        mlflow_tags.MLFLOW_USER: getpass.getuser(),
        tracking.RESULT_TAG: key,
        registry.MODEL_KEY_TAG: model_key,
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
    version_tags = {k: str(effective[k]) for k in VERSION_PARAMS if k in effective}
    version_tags.update(
        {
            "val_accuracy": str(metrics["val_accuracy"]),
            "test_accuracy": str(metrics["test_accuracy"]),
            "git.commit": git.get(mlflow_tags.MLFLOW_GIT_COMMIT, "unknown"),
            "data.digest": data_digest,
        }
    )
    if git.get(tracking.DIRTY_TAG):
        version_tags[tracking.DIRTY_TAG] = "true"
    onnx = json.loads(SERVING_CONFIG_PATH.read_text()).get("onnx")
    if onnx:  # a tie with a version that has no ONNX form goes to this one (registry.decide)
        version_tags[registry.ONNX_TAG] = onnx["sha256"]
    logged: dict[str, Any] = {}

    def rest(run_id: str) -> None:
        client.log_inputs(run_id, datasets=datasets(stats, runtime.recall("fetch", dir_digest(RAW_DIR))))
        for path, where in ((METRICS_PATH, "reports"), (HISTORY_PATH, "reports/train")):
            stopping.stop_if_signalled()
            client.log_artifact(run_id, str(path), where)
        stopping.stop_if_signalled()
        client.log_artifacts(run_id, str(EVALUATE_DIR), "reports/evaluate")
        stopping.stop_if_signalled()
        logged["model"] = log_model(run_id, raw_test_pixels(2))
        if claim.lost():  # fenced: whoever took over logs the result; this run must not finish too
            raise RuntimeError("another publish took this result over (this one had stopped beating)")

    experiment, model = names(cfg)
    found = tracking.find_run(uri, key, experiment=experiment)  # logged meanwhile (registered or not)
    if found is not None and found.registered:
        return f"publish: this result was logged to {shown} meanwhile, as run {found.run_id}; nothing to log"
    if found is None:
        # MLflow files the logged model under the *active* experiment (else 'Default', in ./mlruns).
        mlflow.set_experiment(experiment_id=experiment_id)
        history = pd.read_csv(HISTORY_PATH).to_dict(orient="records")
        run_id = tracking.log_run(
            client,
            experiment_id,
            run_name=run_name(git),
            tags=tags,
            params=flat,
            history=history,
            metrics=metrics,
            start_ms=start_ms,
            end_ms=end_ms,
            attempt=claim.token,
            log_rest=rest,
            created=lambda run_id: claim.tag(claims.RUN_TAG, run_id),
        )
        model_uri, model_id = logged["model"].model_uri, logged["model"].model_id
        head = f"publish: logged run {run_id} to {shown}"
    else:  # logged and FINISHED, but its publisher stopped before registering or judging it
        run_id = found.run_id
        stopping.concerning(run_id, "FINISHED")
        model_id = client.get_run(run_id).outputs.model_outputs[0].model_id
        model_uri = f"models:/{model_id}"
        head = f"publish: run {run_id} holds this result but its model was not registered and judged"
    version, new = registry.register(client, model_uri, model_id, run_id, model_key, version_tags, model)
    decision = registry.update_champion(client, version, model=model)
    stopping.stop_if_signalled()
    client.set_tag(run_id, tracking.REGISTERED_TAG, f"{model}/{version}")
    what = (
        f"registered {model} version {version}"
        if new
        else (f"the same served model is already {model} version {version}: no new version")
    )
    compared = decision.previous if decision.champion == version else decision.champion
    return f"{head}; {what}\nregistry: {decision.message}{data_change(client, model, compared, data_digest)}"


def data_change(client: Any, model: str, version: int | None, digest: str) -> str:
    """``; on other data than version N (digest a… -> b…)`` when the version this result was judged against was
    trained on data of another digest under the same data set name, else nothing."""
    if version is None:
        return ""
    other = client.get_model_version(model, str(version)).tags.get("data.digest")
    if not other or other == digest:
        return ""
    return f"; on other data than version {version} (data digest {other[:12]}... -> {digest[:12]}...)"


def judge(uri: str, model: str) -> str:
    """Apply the champion rule to what the registry holds (nothing new logged); the registry's line."""
    tracking.quiet_mlflow()
    from mlflow import MlflowClient  # noqa: PLC0415

    with tracking.store_lock(uri):
        decision = registry.update_champion(MlflowClient(uri), None, model=model)
    return f"registry: {decision.message}"


def raw_test_pixels(n: int) -> Any:
    """The first ``n`` test images as raw 0-255 pixels (the prepared ones, normalization undone): the served
    model's input example."""
    import numpy as np  # noqa: PLC0415

    norm = read_stats()["normalization"]
    prepared = np.load(PREPARED_DIR / "x_test.npy", mmap_mode="r", allow_pickle=False)[:n]
    return np.clip(np.round(prepared * norm["scale"] + norm["offset"]), 0, 255).astype("float32")


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    started = time.time()
    try:
        cfg = pipeline.load()
        uri, artifact_location = store.store()
        store.preflight(uri)
        model_key, key = keys(cfg, read_stats()["sha256"][:DATA_DIGEST_LEN])
        experiment, model = names(cfg)
        found = tracking.find_run(uri, key, experiment=experiment)
    except (schema.ParamsError, store.TrackingError, DamagedModel) as exc:
        print(f"publish: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"publish: error: {exc.filename} is missing: run the pipeline first (dvc repro)", file=sys.stderr)
        return 2
    shown = redact.uri(uri)
    try:
        with stopping.deferred_signals() as block:
            if found and found.registered:
                summary = f"publish: this result is already in {shown} as run {found.run_id} ({found.run_name}); "
                summary += "nothing to log"
                if registry.needs_judging(uri, model=model):  # a version nobody judged, a lost alias, a deleted one
                    summary += "\n" + judge(uri, model)
            else:
                summary = publish(uri, artifact_location, cfg, model_key, key, started)
    except stopping.Terminated as stop:
        print(f"publish: error: stopped by {stop.signal_name}{stopped(stop)}", file=sys.stderr)
        return 143 if stop.signal_name == "SIGTERM" else 130
    except claims.ClaimTimeout as exc:
        print(
            f"publish: error: another publish is logging this result: {exc}; nothing logged here, "
            "run it again once that one is done",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # the store failed mid-way: one line, not a traceback; the run is marked FAILED
        print(f"publish: error: logging to {shown} failed: {redact.first_line(exc)}", file=sys.stderr)
        return 1
    timed = not (found and found.registered) or "\n" in summary  # the fast path's line has no time
    print(summary + (f" ({time.time() - started:.1f}s)" if timed else ""))
    if block.signal:  # came after the last step that could stop: nothing was cut short
        print(f"publish: {block.signal} came once all was done; nothing was cut short", file=sys.stderr)
    return 0


def stopped(stop: stopping.Terminated) -> str:
    """The rest of the line that says what a stop left behind."""
    mended = (
        "the next publish on this host marks it FAILED, as does any publish of this result once its claim "
        "has gone stale"
    )
    if stop.state == "FINISHED":
        return f" after run {stop.run_id} finished; the next publish completes its registration"
    if stop.state == "FAILED":
        return f"; run {stop.run_id} was marked FAILED (nothing registered)"
    if stop.forced:
        what = f"run {stop.run_id}" if stop.run_id else "a run, if one was being made,"
        return f" at once (a second signal); {what} may be left RUNNING: {mended}"
    if stop.run_id is None:
        return "; nothing logged"
    return f"; run {stop.run_id} is left RUNNING (the store did not take FAILED): {mended}"


if __name__ == "__main__":
    finish(main())
