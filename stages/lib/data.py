"""Reading back the arrays the preprocess stage prepared (never unpickling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stages.lib.paths import PREPARED_DIR, STATS_PATH

SPLITS = ("train", "val", "test")


def load_split(prepared_dir: Path = PREPARED_DIR, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The cached (images, labels) arrays of one split."""
    prepared_dir = Path(prepared_dir)
    x = np.load(prepared_dir / f"x_{split}.npy", allow_pickle=False)
    y = np.load(prepared_dir / f"y_{split}.npy", allow_pickle=False)
    return x, y


def read_stats(path: Path = STATS_PATH) -> dict[str, Any]:
    """``stats.json``: normalization constants, class counts, shapes and the arrays' hash."""
    return json.loads(Path(path).read_text())


MNIST = {"name": "mnist", "kind": "mnist", "classes": [str(d) for d in range(10)], "style": "digits"}


def dataset(stats: dict[str, Any]) -> dict[str, Any]:
    """The data set the prepared arrays hold: name, kind, class names, style (``stats.json``; arrays prepared
    before data sets had names are MNIST's)."""
    return stats.get("dataset") or dict(MNIST)


def network_shape(stats: dict[str, Any]) -> dict[str, Any]:
    """What ``model.build`` takes from the prepared data: one image's shape, the number of classes, the name."""
    facts = dataset(stats)
    return {
        "input_shape": tuple(stats["shapes"]["x_train"][1:]),
        "classes": len(facts["classes"]),
        "name": facts["name"],
    }


def is_digits(classes: list[str]) -> bool:
    """Whether the classes are MNIST's ten digits, named "0" to "9" (reports then say "digit")."""
    return classes == MNIST["classes"]
