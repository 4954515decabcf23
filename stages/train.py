"""DVC stage ``train``: fit the network (dense or CNN) on the train split, watching validation.

The test split is never read here. The model is written in Keras' native
format only when training finished with a finite loss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stages import KERAS_EXTRAS, finish, leave_out
from stages.lib import data, runtime, store
from stages.lib.data import load_split, read_stats
from stages.lib.files import atomic_path, sha256_file, staged_dir, write_json
from stages.lib.paths import (
    HISTORY_PATH,
    MODEL_DIR,
    MODEL_PATH,
    ONNX_PATH,
    PREPARED_DIR,
    SERVING_CONFIG_PATH,
    STATS_PATH,
)
from stages.lib.training import (
    HISTORY_COLUMNS,
    BatchTooLarge,
    TrainingDiverged,
    backend_settings,
    background_value,
    fit,
    steps_per_epoch,
)
from stages.params import model as model_params
from stages.params import preprocess as preprocess_params
from stages.params import schema
from stages.params import train as train_params


def write_serving_config(
    output: str,
    onnx: dict[str, str] | None = None,
    refused: str | None = None,
    *,
    stats_path: Path = STATS_PATH,
    path: Path = SERVING_CONFIG_PATH,
) -> None:
    """What a client of the model needs besides its weights: the input scaling, the output kind, the data set's
    name, its class names, the shape of one image (raw pixels), how a new image is brought into that form, and
    the ONNX form (its file and sha256), or why there is none."""
    stats = read_stats(stats_path)
    dataset = data.dataset(stats)
    config = {
        "normalization": stats["normalization"],
        "output": output,
        "dataset": dataset["name"],
        "classes": dataset["classes"],
        "image_shape": stats["shapes"]["x_train"][1:],
        "style": dataset["style"],
        "onnx": onnx,
    }
    if refused:
        config["onnx_refused"] = refused
    write_json(path, config)


def make_portable(model, x_check, output: str, path: Path = ONNX_PATH) -> tuple[dict[str, str] | None, str | None]:
    """The model's checked ONNX form at ``path`` ({"file", "sha256"}), or (None, why there is none) with one
    line saying so: the model is then served through Keras alone."""
    from stages.lib import portable  # noqa: PLC0415 - onnx, only once a model is trained

    try:
        digest = portable.export(model, path, x_check, output)
    except portable.Refused as exc:
        print(f"train: no ONNX form: {exc}; the model is served through Keras alone")
        return None, f"the model has no ONNX form ({exc})"
    return {"file": path.name, "sha256": digest}, None


def write_history(history: list[dict[str, float]], path: Path = HISTORY_PATH) -> None:
    import pandas as pd  # noqa: PLC0415

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    stage_started = time.time()
    try:
        cfg = schema.load(model_params, train_params, preprocess_params)
        uri, _ = store.store()
        store.preflight(uri)  # before minutes of training, not after
    except (schema.ParamsError, store.TrackingError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2

    try:
        model_params.check_image(cfg["model"], *cfg["preprocess"]["image_size"])  # before TensorFlow, not after
        stats = read_stats(STATS_PATH)
        train, val = load_split(PREPARED_DIR, "train"), load_split(PREPARED_DIR, "val")
        steps_per_epoch(len(train[0]), cfg["train"]["batch_size"])
    except schema.ParamsError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"train: error: {exc.filename} is missing: run the preprocess stage first", file=sys.stderr)
        return 2
    except BatchTooLarge as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    backend = backend_settings(cfg["model"], cfg["train"]["threads"])
    from stages.lib import model as nn  # noqa: PLC0415 - TensorFlow, after the cheap checks

    nn.configure(cfg["train"]["seed"], threads=backend["threads"])
    model = nn.build(**cfg["model"], **data.network_shape(stats))
    started = time.monotonic()
    try:
        history = fit(
            model,
            train,
            val,
            cfg["train"],
            cfg["model"]["output"],
            background=background_value(),
            jit_compile=backend["jit_compile"],
        )
    except (TrainingDiverged, BatchTooLarge) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    output = cfg["model"]["output"]
    with staged_dir(MODEL_DIR) as staging:  # the model's files appear together, or not at all
        nn.save_model(model, staging / MODEL_PATH.name)
        onnx, refused = make_portable(model, val[0], output, staging / ONNX_PATH.name)
        write_serving_config(output, onnx, refused, path=staging / SERVING_CONFIG_PATH.name)
    write_history(history)
    runtime.remember("train", sha256_file(MODEL_PATH), started=stage_started, ended=time.time(), train_seconds=seconds)
    print(
        f"train: {len(history)} epochs in {seconds:.1f}s ({seconds / len(history):.2f}s/epoch, "
        f"{backend['threads']} thread{'s' if backend['threads'] > 1 else ''}); "
        f"val_accuracy {history[-1]['val_accuracy']:.4f}; model -> {MODEL_PATH}"
    )
    return 0


if __name__ == "__main__":
    leave_out(*KERAS_EXTRAS)  # unused here
    finish(main())
