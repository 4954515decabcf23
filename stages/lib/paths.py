"""Every path of the project, in one place.

Paths are relative to the repository root, where DVC runs each stage. Raw
data is immutable input; everything else under ``data/`` and ``reports/`` is
derived by the pipeline (``dvc.yaml`` declares which stage writes what).
"""

from __future__ import annotations

from pathlib import Path

# This checkout, for the commands a person runs from any directory (mnist-predict, make serve, the demo): they
# read its model, params and store. The stages use the relative paths below (DVC runs them at the root).
PROJECT = Path(__file__).resolve().parents[2]

PARAMS_FILE = Path("params.yaml")

DATA_DIR = Path("data")
RAW_DIR = DATA_DIR / "raw"  # fetch: the four IDX files, verified
PREPARED_DIR = DATA_DIR / "prepared"  # preprocess: normalized arrays
STATS_PATH = PREPARED_DIR / "stats.json"  # preprocess: normalization constants, class counts, hash
MODEL_DIR = DATA_DIR / "model"
MODEL_PATH = MODEL_DIR / "model.keras"  # train
SERVING_CONFIG_PATH = MODEL_DIR / "serving.json"  # train: input normalization, output kind, classes, ONNX sha256
ONNX_PATH = MODEL_DIR / "model.onnx"  # train: the portable form, when the converter and its check allow

REPORTS_DIR = Path("reports")
HISTORY_PATH = REPORTS_DIR / "train" / "history.csv"  # train: one row per epoch
METRICS_PATH = REPORTS_DIR / "metrics.json"  # evaluate
EVALUATE_DIR = REPORTS_DIR / "evaluate"  # evaluate: tables and figures
PR_REPORT_DIR = REPORTS_DIR / "pr"  # make report: the pull-request report (not a pipeline output)

# Facts about a run that must not enter DVC's hashes (wall-clock times):
# git-ignored, read by the stage that logs the run to MLflow.
RUNTIME_DIR = Path(".runtime")

# The default MLflow store, at the root of the DVC repository (see store.store).
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
SERVER_DIR = Path(".server")  # make server: state, logs, the throw-away PostgreSQL cluster, artifacts
