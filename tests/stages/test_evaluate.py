"""The evaluate stage's own checks that need no model (its reports and metrics with a trained one:
tests/stages/test_train_evaluate.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import evaluate
from tests.conftest import linear_onnx

ROOT = Path(__file__).resolve().parents[2]


def test_evaluate_before_the_model_exists_is_one_line(tmp_path, monkeypatch, capsys):
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert evaluate.main() == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "evaluate: error: data/model/serving.json is missing: run the pipeline first (dvc repro)"
    assert not (tmp_path / "reports").exists()


def test_the_loss_follows_the_models_own_output_kind_not_params_yaml(tmp_path, monkeypatch, capsys):
    """A network that outputs logits (its serving.json says so) is scored as one, even where params.yaml was
    since edited to ``model.output: softmax``: the metrics are the model's, as it is served."""
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (28 * 28, 10))
    model = tmp_path / "data" / "model"
    model.mkdir(parents=True)
    onnx = linear_onnx(weights, softmax=False)
    (model / "model.onnx").write_bytes(onnx)
    (model / "model.keras").write_bytes(b"a stand-in: the sound ONNX form answers, Keras is never loaded")
    serving = {
        "normalization": {"method": "minmax", "offset": 0.0, "scale": 255.0},
        "output": "linear",
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(onnx).hexdigest()},
    }
    (model / "serving.json").write_text(json.dumps(serving))
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir()
    split = {}
    for name, n in (("val", 30), ("test", 40)):
        split[name] = rng.uniform(0, 1, (n, 28, 28)).astype(np.float32), np.arange(n, dtype=np.uint8) % 10
        np.save(prepared / f"x_{name}.npy", split[name][0])
        np.save(prepared / f"y_{name}.npy", split[name][1])
    (prepared / "stats.json").write_text(json.dumps({"shapes": {"x_train": [60, 28, 28]}}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"].update(gallery_size=4, sample_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert params["model"]["output"] == "softmax"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODEL_RUNTIME", raising=False)
    assert evaluate.main() == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    for name in ("val", "test"):
        x, y = split[name]
        logits = x.reshape(len(x), -1).astype(np.float64) @ weights.astype(np.float32).astype(np.float64)
        log_probs = logits - logits.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        assert metrics[f"{name}_loss"] == pytest.approx(-log_probs[np.arange(len(y)), y].mean(), abs=2e-6)
        assert metrics[f"{name}_accuracy"] == round(float((logits.argmax(axis=1) == y).mean()), 6)
