"""What a result is: the served model (weights, serving config, its code, its pinned requirements), the data
and the params that take effect.

Two keys, both sha256 hex digests:

- ``model_key``: the served model exactly as MLflow stores it: the Keras file,
  ``serving.json``, the serving code (``stages/serving/*.py``) and the pinned
  requirements. One registered version per model key: the same bytes and code
  are never two versions.
- ``result_key``: the model key plus the prepared data's digest and the params
  that take effect (each section's ``effective``: defaults resolved, keys that
  cannot change the model left out, e.g. ``fetch.*``, ``evaluate.*``,
  ``model.cnn.*`` for a dense network). One MLflow run per result key.

Metrics and reports are not part of either: they follow from the model and the
data (a different CPU may round them differently in the last digits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from stages.lib.files import sha256_file
from stages.params.schema import flatten

SERVING_DIR = Path(__file__).resolve().parents[1] / "serving"
SERVING_CODE = SERVING_DIR / "mlflow_model.py"  # logged as the model's code ("models from code")
CLASSIFIER_CODE = SERVING_DIR / "classifier.py"  # logged beside it (code_paths) ...
SERVING_LIBRARY = [CLASSIFIER_CODE, SERVING_DIR / "cores.py"]  # ... with what it imports
# What the served model imports, pinned to this environment's versions.
SERVED_PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "onnxruntime")


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model, given rather than inferred (inference loads the model)."""
    pins = []
    for name in SERVED_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    if any(p.startswith("tensorflow-cpu==") for p in pins):
        pins = [p for p in pins if not p.startswith("tensorflow==")]
    return pins


def _digest(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def model_key(model_files: Mapping[str, Path], code: Iterable[Path], requirements: list[str]) -> str:
    """The served model's identity: ``model_files`` (name -> path), the serving ``code`` and ``requirements``."""
    parts = [f"{name}={sha256_file(path)}" for name, path in sorted(model_files.items())]
    parts += [f"code:{Path(path).name}={sha256_file(path)}" for path in sorted(code, key=lambda p: Path(p).name)]
    parts += [f"requires:{pin}" for pin in sorted(requirements)]
    return _digest(parts)


def result_key(model: str, data_digest: str, effective_params: Mapping[str, Any]) -> str:
    """A result's identity: its model key, the data it was trained and evaluated on, the params that took effect."""
    return _digest([f"model={model}", f"data={data_digest}", json.dumps(effective_params, sort_keys=True, default=str)])


def effective(cfg: Mapping[str, Mapping[str, Any]], sections: Iterable[Any]) -> dict[str, Any]:
    """The params of ``cfg`` (cleaned, by section) that take effect, flattened (``train.epochs``: 10)."""
    return flatten({s.NAME: s.effective(cfg[s.NAME]) for s in sections})
