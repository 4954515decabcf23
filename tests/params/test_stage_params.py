"""Bad params fail the TensorFlow stages in one line, before TensorFlow is imported."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECK = (
    "import sys; from stages import {stage} as s; rc = s.main(); "
    "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'TF_NOT_IMPORTED'); sys.exit(rc)"
)


def run_stage(stage, tmp_path, edit):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-c", CHECK.format(stage=stage)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "DVC_ROOT": str(tmp_path)},
        timeout=60,
    )


def set_value(section, key, value):
    def edit(params):
        target = params
        for part in section.split("."):
            target = target[part]
        target[key] = value

    return edit


def delete(section, key):
    def edit(params):
        del params[section][key]

    return edit


@pytest.mark.parametrize("stage", ["train", "evaluate"])
@pytest.mark.parametrize(
    "edit, message",
    [
        (set_value("train", "epochs", 0), "train.epochs must be an integer >= 1, got 0"),
        (set_value("model", "activation", "swish"), "model.activation must be one of relu, sigmoid, tanh"),
        (set_value("model", "dropout", 1.5), r"model.dropout must be a number in [0, 1)"),
        (set_value("model", "hidden_units", []), "model.hidden_units must be a list of 1+ items"),
        (set_value("train", "batch_size", 0), "train.batch_size must be an integer >= 1"),
        (delete("train", "learning_rate"), "train.learning_rate is missing"),
    ],
)
def test_bad_params_fail_before_tensorflow(stage, edit, message, tmp_path):
    result = run_stage(stage, tmp_path, edit)
    assert result.returncode == 2
    assert result.stdout.strip() == "TF_NOT_IMPORTED"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    "edit, message",
    [
        (set_value("model", "kind", "rnn"), "model.kind must be one of dense, cnn"),
        (set_value("model.cnn", "filters", 32), "model.cnn.filters must be a list"),
        (set_value("model.cnn", "kernel_size", 2.5), "model.cnn.kernel_size must be an integer >= 1"),
        (set_value("model.cnn", "batch_norm", "on"), "model.cnn.batch_norm must be true or false"),
        (set_value("model.cnn", "pooling", "global"), "model.cnn.pooling must be one of max, average, stride"),
        (set_value("train", "optimizer", "sgd"), "train.optimizer must be one of adam, adamw"),
        (set_value("train", "weight_decay", "1e-4"), "train.weight_decay must be a number"),
        (set_value("train", "schedule", "linear"), "train.schedule must be one of constant, cosine, onecycle"),
        (set_value("train", "warmup", 2), "train.warmup must be a number in [0, 1)"),
        (set_value("train", "label_smoothing", -0.1), "train.label_smoothing must be a number in [0, 1)"),
        (set_value("train", "augment", "true"), "train.augment must be true or false"),
        (set_value("train", "shift", 20), "train.shift must be a number in [0, 14)"),
        (set_value("train", "rotation", -5), "train.rotation must be a number in [0, 180]"),
        (set_value("train", "zoom", 1), "train.zoom must be a number in [0, 1)"),
    ],
)
def test_bad_new_train_params_fail_before_tensorflow(edit, message, tmp_path):
    result = run_stage("train", tmp_path, edit)
    assert result.returncode == 2
    assert result.stdout.strip() == "TF_NOT_IMPORTED"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_more_conv_blocks_than_the_image_can_pool_fail_before_tensorflow(tmp_path):
    def edit(params):
        params["model"]["kind"] = "cnn"
        params["model"]["cnn"]["filters"] = [8, 8, 8, 8, 8]

    result = run_stage("train", tmp_path, edit)
    assert result.returncode == 2 and result.stdout.strip() == "TF_NOT_IMPORTED"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.cnn.filters has 5 blocks" in lines[0] and "at most 4" in lines[0], result.stderr
    from stages.params import pipeline

    dense = yaml.safe_load((ROOT / "params.yaml").read_text())
    dense["model"].update(kind="dense")
    dense["model"]["cnn"]["filters"] = [8, 8, 8, 8, 8]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dense))
    assert pipeline.load(tmp_path / "params.yaml")["model"]["kind"] == "dense"  # builds no conv blocks: not checked


def test_credentials_in_the_tracking_uri_never_reach_the_output(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for uri in [f"http://alice:s3cret@127.0.0.1:{port}", "http://alice:s3cret@host:99999999"]:
        result = subprocess.run(
            [sys.executable, "-c", CHECK.format(stage="train")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": uri},
            timeout=60,
        )
        assert result.returncode == 2 and result.stdout.strip() == "TF_NOT_IMPORTED", result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "s3cret" not in result.stderr and "***@" in lines[0], result.stderr


def test_unreachable_tracking_server_fails_before_tensorflow(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(stage="train")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout.strip() == "TF_NOT_IMPORTED"
    assert f"MLflow server at http://127.0.0.1:{port} is unreachable" in result.stderr


def test_a_python_without_the_dependencies_says_which_environment_to_activate(tmp_path):
    # -S: no site-packages, like the system Python DVC finds when .venv is not activated.
    result = subprocess.run(
        [sys.executable, "-S", "-m", "stages.fetch"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stages: error: ") and "lacks the project's packages" in lines[0]
    assert "source .venv/bin/activate" in lines[0]


def test_augmenting_colour_images_passes_the_checks_before_tensorflow(tmp_path):
    def edit(params):
        params["preprocess"]["channels"] = 3
        params["train"]["augment"] = True

    result = run_stage("train", tmp_path, edit)
    assert result.returncode == 2 and result.stdout.strip() == "TF_NOT_IMPORTED"
    [line] = result.stderr.strip().splitlines()
    assert "stats.json is missing: run the preprocess stage first" in line


def test_a_missing_prepared_array_fails_train_in_one_line_before_tensorflow(tmp_path):
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "stats.json").write_text("{}")  # stats present, the arrays not (an interrupted copy, say)
    result = run_stage("train", tmp_path, lambda params: None)
    assert result.returncode == 2 and result.stdout.strip() == "TF_NOT_IMPORTED"
    [line] = result.stderr.strip().splitlines()
    assert line == "train: error: data/prepared/x_train.npy is missing: run the preprocess stage first"
