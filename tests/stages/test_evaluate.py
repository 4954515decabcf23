"""The evaluate stage's own checks that need no model (its reports and metrics with a trained one:
tests/stages/test_train_evaluate.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from stages import evaluate


def test_evaluate_before_the_model_exists_is_one_line(tmp_path, monkeypatch, capsys):
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert evaluate.main() == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "evaluate: error: data/model/serving.json is missing: run the pipeline first (dvc repro)"
    assert not (tmp_path / "reports").exists()
