"""A tiny end-to-end train + evaluate + MLflow run on a few hundred synthetic images."""

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import evaluate, train
from stages.lib.data import load_split
from stages.preprocess import prepare
from tests.conftest import imported_modules, imported_on_use, make_synthetic

pytestmark = pytest.mark.slow

nn = imported_on_use("stages.lib.model")

TRAIN = {
    "labels": "sparse",
    "optimizer": "adam",
    "learning_rate": 0.005,
    "weight_decay": 0.0001,
    "schedule": "constant",
    "warmup": 0.3,
    "label_smoothing": 0.0,
    "epochs": 3,
    "batch_size": 16,
    "seed": 7,
    "early_stopping_patience": 0,
    "augment": False,
    "shift": 2,
    "rotation": 10,
    "zoom": 0.1,
    "augment_kernel": "gather",
}
CNN = {"kind": "cnn", "cnn": {"filters": [4, 8], "kernel_size": 3, "batch_norm": True, "pooling": "max", "convs": 1}}
EVAL = {"batch_size": 128, "top_confusions": 5, "gallery_size": 6, "sample_size": 8}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    raw = make_synthetic(n_train_per_class=40, n_test_per_class=10, seed=3).write(root / "raw")
    prepare(raw, root / "prepared", 0.2, seed=0, method="minmax")
    return root / "prepared"


def train_once(prepared, model_cfg=None, train_cfg=None, val=None):
    model_cfg = {"hidden_units": [32], "activation": "relu", "dropout": 0.0, "output": "softmax", **(model_cfg or {})}
    cfg = {**TRAIN, **(train_cfg or {})}
    nn.configure(cfg["seed"])
    model = nn.build(**model_cfg)
    lines = []
    history = train.fit(
        model,
        load_split(prepared, "train"),
        val or load_split(prepared, "val"),
        cfg,
        model_cfg["output"],
        log=lines.append,
        jit_compile=model_cfg.get("kind", "dense") == "dense" and not model_cfg["dropout"],
    )
    return model, history, lines


def test_learns_the_synthetic_digits_and_logs_one_line_per_epoch(prepared):
    model, history, lines = train_once(prepared)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["val_accuracy"] > 0.9
    assert history[-1]["loss"] < history[0]["loss"]
    assert len(lines) == 3 and all(line.startswith(f"epoch {i}/3 - ") for i, line in enumerate(lines, 1))
    assert all("\r" not in line for line in lines)


@pytest.mark.parametrize(
    "model_cfg, train_cfg",
    [
        ({"output": "linear"}, {"labels": "onehot"}),
        ({"activation": "sigmoid", "dropout": 0.3, "hidden_units": [32, 16]}, {}),
    ],
)
def test_variants_train(prepared, model_cfg, train_cfg):
    _, history, _ = train_once(prepared, model_cfg, train_cfg)
    assert all(math.isfinite(row["loss"]) for row in history)
    assert history[-1]["val_accuracy"] > 0.5


@pytest.mark.parametrize(
    "model_cfg, train_cfg",
    [
        (CNN, {}),
        ({**CNN, "cnn": {"filters": [4], "kernel_size": 5, "batch_norm": False, "pooling": "average"}}, {}),
        ({**CNN, "dropout": 0.2, "hidden_units": [16]}, {"augment": True, "schedule": "onecycle", "epochs": 10}),
        ({**CNN, "cnn": {**CNN["cnn"], "pool_first": True}}, {}),
        ({**CNN, "cnn": {**CNN["cnn"], "pooling": ["max", "stride"]}}, {}),
        ({**CNN, "cnn": {**CNN["cnn"], "convs": [2, 1], "pool_first": True}}, {}),
        ({**CNN, "dropout": 0.2}, {"augment": True, "augment_kernel": "fused"}),
        ({}, {"augment": True}),
        ({}, {"augment": True, "augment_kernel": "fused"}),
        ({}, {"schedule": "cosine"}),
        ({}, {"schedule": "onecycle", "warmup": 0.5}),
        ({}, {"optimizer": "adamw", "weight_decay": 0.01}),
        ({}, {"label_smoothing": 0.1}),
        ({"output": "linear"}, {"labels": "onehot", "label_smoothing": 0.1}),
    ],
    ids=[
        "cnn",
        "cnn-avgpool-nobn",
        "cnn-augment-onecycle",
        "cnn-pool-first",
        "cnn-stride",
        "cnn-two-convs",
        "cnn-augment-fused",
        "augment",
        "augment-fused-xla-off",
        "cosine",
        "onecycle",
        "adamw",
        "smooth",
        "smooth-1hot",
    ],
)
def test_new_param_paths_train(prepared, model_cfg, train_cfg):
    model, history, _ = train_once(prepared, model_cfg, {"epochs": 4, **train_cfg})
    assert all(math.isfinite(row["loss"]) for row in history)
    assert history[-1]["val_accuracy"] > 0.5, history
    assert model.name == f"mnist_{model_cfg.get('kind', 'dense')}"


def test_cnn_with_augmentation_is_byte_reproducible(prepared, tmp_path):
    cfg = {"augment": True, "schedule": "onecycle", "epochs": 2}
    (a, history_a, _), (b, history_b, _) = (train_once(prepared, {**CNN, "dropout": 0.2}, cfg) for _ in range(2))
    nn.save_model(a, tmp_path / "a.keras")
    nn.save_model(b, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    assert [r["loss"] for r in history_a] == [r["loss"] for r in history_b]
    c, _, _ = train_once(prepared, {**CNN, "dropout": 0.2}, {**cfg, "seed": 8})
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0]), "another seed, other augmentations"
    fused = {**cfg, "augment_kernel": "fused"}
    (d, _, _), (e, _, _) = (train_once(prepared, {**CNN, "dropout": 0.2}, fused) for _ in range(2))
    nn.save_model(d, tmp_path / "d.keras")
    nn.save_model(e, tmp_path / "e.keras")
    assert (tmp_path / "d.keras").read_bytes() == (tmp_path / "e.keras").read_bytes(), "the fused kernel too"


def test_augmentation_that_changes_nothing_changes_no_weight(prepared):
    # The hook receives the batch's images only: labels and pairing stay as they were.
    plain, _, _ = train_once(prepared)
    identity, _, _ = train_once(prepared, train_cfg={"augment": True, "shift": 0, "rotation": 0, "zoom": 0})
    for got, want in zip(identity.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    moved, _, _ = train_once(prepared, train_cfg={"augment": True})
    assert not np.allclose(moved.get_weights()[0], plain.get_weights()[0])


def test_validation_is_never_augmented(prepared):
    # Heavy augmentation: if validation went through it, its loss would differ from a plain evaluation.
    cfg = {"augment": True, "shift": 6, "rotation": 90, "zoom": 0.5, "epochs": 2}
    model, history, _ = train_once(prepared, train_cfg=cfg)
    x_val, y_val = load_split(prepared, "val")
    val_loss, val_accuracy, _ = nn.evaluate(model, x_val, y_val.astype(np.int32), nn.loss_function("sparse", "softmax"))
    assert history[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert history[-1]["val_accuracy"] == val_accuracy


def test_same_params_same_weights_same_bytes(prepared, tmp_path):
    a, history_a, _ = train_once(prepared)
    b, history_b, _ = train_once(prepared)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    nn.save_model(a, tmp_path / "a.keras")
    time.sleep(1.1)  # a different save time must not matter either
    nn.save_model(b, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(history_a) == strip(history_b)


def test_early_stopping_restores_the_best_epoch(prepared):
    # Validation labels unrelated to the images: val_loss must rise as the model fits the training set.
    x_val, y_val = load_split(prepared, "val")
    y_val = np.random.default_rng(0).permutation(y_val)
    model, history, lines = train_once(
        prepared, train_cfg={"epochs": 30, "early_stopping_patience": 2}, val=(x_val, y_val)
    )
    assert len(history) < 30 and "early stopping" in lines[-1]
    best = min(history, key=lambda row: row["val_loss"])
    assert best is not history[-1]
    val_loss, _, _ = nn.evaluate(model, x_val, y_val.astype(np.int32), nn.loss_function("sparse", "softmax"))
    assert val_loss == pytest.approx(best["val_loss"], rel=1e-4)


def test_on_epoch_sees_each_row_as_logged_and_may_stop_training(prepared):
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(row):
        seen.append(dict(row))
        if row["epoch"] == 2:
            raise Stop

    nn.configure(TRAIN["seed"])
    model = nn.build([16], "relu", 0.0, "softmax")
    lines = []
    with pytest.raises(Stop):
        train.fit(
            model,
            load_split(prepared, "train"),
            load_split(prepared, "val"),
            TRAIN,
            "softmax",
            log=lines.append,
            on_epoch=on_epoch,
        )
    assert [row["epoch"] for row in seen] == [1, 2] and len(lines) == 2  # stopped after epoch 2 of 3
    assert set(seen[0]) == {*train.HISTORY_COLUMNS, "seconds"}


def test_nan_loss_stops_with_a_clear_error_and_no_model(prepared, tmp_path):
    x, y = load_split(prepared, "train")
    x = x.copy()
    x[0, 0, 0] = np.nan
    nn.configure(0)
    model = nn.build([8], "relu", 0.0, "softmax")
    with pytest.raises(train.TrainingDiverged, match="training loss became nan in epoch 1"):
        train.fit(model, (x, y), load_split(prepared, "val"), TRAIN, "softmax", log=lambda m: None)


def test_end_to_end_reports(prepared, tmp_path, monkeypatch):
    model, history, _ = train_once(prepared)
    monkeypatch.chdir(tmp_path)
    nn.save_model(model, tmp_path / "model.keras")
    train.write_history(history, tmp_path / "history.csv")
    written = pd.read_csv(tmp_path / "history.csv")
    assert list(written.columns) == train.HISTORY_COLUMNS and len(written) == 3

    import keras

    loaded = keras.models.load_model(tmp_path / "model.keras")
    x_test, y_test = load_split(prepared, "test")
    loss, accuracy, outputs = nn.evaluate(
        loaded, x_test, y_test.astype(np.int32), nn.loss_function("sparse", "softmax")
    )
    metrics = {
        "test_accuracy": round(accuracy, 6),
        "test_loss": round(loss, 6),
        "val_accuracy": round(history[-1]["val_accuracy"], 6),
    }
    reports = tmp_path / "reports"
    evaluate.write_reports(
        x_test,
        y_test,
        outputs,  # a softmax network's outputs are its probabilities
        metrics,
        EVAL,
        reports / "evaluate",
        reports / "metrics.json",
    )
    assert json.loads((reports / "metrics.json").read_text()) == metrics
    for name in [
        "per_class.csv",
        "per_class.json",
        "confusions.csv",
        "predictions.csv",
        "confusion_matrix.png",
        "misclassified.png",
        "samples.png",
    ]:
        assert (reports / "evaluate" / name).stat().st_size > 0, name


def run_train_stage(prepared, root, model=None, train=None, python_flags=()):
    """``python -m stages.train`` as DVC runs it (its own process: for a CNN, oneDNN and two threads)."""
    import sys

    import yaml

    from tests.conftest import run_in

    code = Path(__file__).resolve().parents[2]
    shutil.copytree(prepared, root / "data" / "prepared")
    params = yaml.safe_load((code / "params.yaml").read_text())
    params["model"].update(model or {})
    params["train"].update(train or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return run_in([sys.executable, *python_flags, "-m", "stages.train"], root, PYTHONPATH=str(code), DVC_ROOT=str(root))


def own_lines(stderr: str) -> str:
    """``stderr`` without the lines of ``-X importtime``."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time"))


@pytest.fixture(scope="module", params=[False, True], ids=["cnn", "cnn-pool-first"])
def cnn_stage_runs(request, prepared, tmp_path_factory):
    """The train stage run twice in processes of its own, as DVC runs it (for a CNN: oneDNN and two threads), on
    one CNN with augmentation, in each layer order (``pool_first``: cnn-fast's; the other: cnn's and cnn-best's):
    ``a`` plain, ``b`` under ``-X importtime`` (which lists the modules it imported). Shared by the tests that
    read them, as each such process takes about 4 s, mostly TensorFlow's import."""
    pool_first = request.param
    root = tmp_path_factory.mktemp("cnn-pool-first" if pool_first else "cnn")
    model = {"kind": "cnn", "hidden_units": [16], "dropout": 0.1, "cnn": {**CNN["cnn"], "pool_first": pool_first}}
    train_cfg = {"augment": True, "schedule": "onecycle", "epochs": 2, "batch_size": 16, "learning_rate": 0.005}
    runs = {
        "a": run_train_stage(prepared, root / "a", model, train_cfg),
        "b": run_train_stage(prepared, root / "b", model, train_cfg, python_flags=["-X", "importtime"]),
    }
    return root, runs, pool_first


def test_train_stage_smoke_cnn_with_augmentation_byte_reproducible(cnn_stage_runs):
    root, runs, pool_first = cnn_stage_runs
    files = []
    for run, result in runs.items():
        assert result.returncode == 0, own_lines(result.stderr)[-3000:]
        epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
        assert [line.split(" - ")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
        files.append((root / run / "data" / "model" / "model.keras").read_bytes())
    assert files[0] == files[1], "same params, same machine: the same model file"
    # Its own lines only: none of TensorFlow's native start-up chatter (absl, oneDNN), which the stage keeps out
    # unless import times are asked for (run b).
    assert "absl" not in runs["a"].stderr and "oneDNN custom operations" not in runs["a"].stderr, runs["a"].stderr
    loaded = nn.load_model(root / "a" / "data" / "model" / "model.keras")
    assert loaded.name == "mnist_cnn" and loaded.get_layer("conv_2").filters == 8
    assert loaded.get_layer("batch_norm_1").output.shape[1] == (14 if pool_first else 28)
    assert len(pd.read_csv(root / "a" / "reports" / "train" / "history.csv")) == 2


def test_train_stage_imports_neither_scikit_learn_nor_matplotlib(cnn_stage_runs):
    # Keras would import both with TensorFlow (1.3 s of its 4 s); the stage uses neither. Its imports are left
    # out when it starts (stages.leave_out), before it knows the network: a CNN's run stands for a dense one's.
    root, runs, _ = cnn_stage_runs
    result = runs["b"]
    assert result.returncode == 0, own_lines(result.stderr)[-2000:]
    imported = imported_modules(result.stderr)
    assert {"tensorflow", "keras", "pandas"} <= imported
    # (-X importtime lists blocked imports too, but not the modules the packages would load.)
    assert not {"sklearn.base", "sklearn.utils", "matplotlib.colors", "matplotlib.figure"} & imported
    assert (root / "b" / "data" / "model" / "model.keras").exists()


def test_train_stage_batch_larger_than_the_data_is_a_clear_error_before_tensorflow(prepared, tmp_path):
    result = run_train_stage(prepared, tmp_path, train={"schedule": "cosine", "batch_size": 100_000},
                             python_flags=["-X", "importtime"])  # fmt: skip
    assert result.returncode == 1
    assert own_lines(result.stderr).strip().splitlines() == [
        "train: error: 320 training images cannot fill one batch of 100000 (train.batch_size too large)"
    ]
    imported = imported_modules(result.stderr)
    assert "stages.lib.training" in imported and "tensorflow" not in imported  # before TensorFlow's seconds
    assert not (tmp_path / "data" / "model").exists()


def test_a_failure_after_training_leaves_the_last_model_whole(prepared, tmp_path, monkeypatch):
    """The model's files (model.keras, model.onnx, serving.json) are swapped in together: an error while they
    are written leaves the last model as it was, never a new model.keras beside an old serving.json."""
    import yaml

    shutil.copytree(prepared, tmp_path / "data" / "prepared")
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "data" / "model"
    model_dir.mkdir()
    for name in ("model.keras", "model.onnx", "serving.json"):
        (model_dir / name).write_text(f"the last model's {name}")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "write_serving_config", broken)
    with pytest.raises(OSError, match="No space left"):
        train.main()
    assert {p.name: p.read_text() for p in model_dir.iterdir()} == {
        name: f"the last model's {name}" for name in ("model.keras", "model.onnx", "serving.json")
    }
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model", "prepared"]  # no staging left
