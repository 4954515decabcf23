"""The ``preprocess`` section: the stratified validation split and the input scaling."""

from __future__ import annotations

import math
from typing import Any

from stages.params.schema import ParamsError, Schema, choice, integer, number

NAME = "preprocess"
# MNIST's training set: the split below takes its validation images from it.
TRAIN_IMAGES = 60_000
CLASSES = 10

SCHEMA: Schema = {
    "val_fraction": number(0, 1, low_open=True, high_open=True),
    "seed": integer(0),
    "normalize": choice("minmax", "zscore"),
}


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, validation) sizes scikit-learn's ``train_test_split`` makes of ``n`` images."""
    val = math.ceil(val_fraction * n)
    return n - val, val


def check_split(n: int, val_fraction: float) -> None:
    """A stratified split needs at least one image of every class on each side."""
    train, val = split_sizes(n, val_fraction)
    if min(train, val) < CLASSES:
        low, high = CLASSES / n, 1 - CLASSES / n
        raise ParamsError(
            f"params: preprocess.val_fraction {val_fraction} splits {n} images into {train} train / {val} validation: "
            f"a stratified split needs at least {CLASSES} on each side (use a value in [{low:.6f}, {high:.6f}])"
        )


def check(cfg: dict[str, Any]) -> None:
    check_split(TRAIN_IMAGES, cfg["val_fraction"])


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(cfg)
