"""The whole of ``params.yaml``: every section, and the rules between sections.

``fetch``, the first stage, checks all of it before any work. DVC deletes a
stage's outputs just before it runs that stage, so a bad value for a later
stage (``dvc exp run -S model.activation=gelu``, a misspelt key) must stop the
pipeline at its start, or the previous model would already be gone when
``train`` found it. Each stage still checks its own sections when it runs
alone. ``publish`` records all of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.lib.paths import PARAMS_FILE
from stages.params import evaluate, fetch, model, preprocess, schema, train

SECTIONS = (fetch, preprocess, model, train, evaluate)


def load(path: Path = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Every section, validated, and the conv blocks checked against ``preprocess.image_size``."""
    cfg = schema.load(*SECTIONS, path=path)
    model.check_image(cfg["model"], *cfg["preprocess"]["image_size"])
    return cfg
