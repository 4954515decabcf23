"""The ``preprocess`` section: the shape every image is brought to, the splits, the input scaling."""

from __future__ import annotations

import math
from typing import Any

from stages.params.schema import ParamsError, Schema, Spec, boolean, choice, integer, number

NAME = "preprocess"
# MNIST's training set: the split below takes its validation images from it.
TRAIN_IMAGES = 60_000
CLASSES = 10
MAX_SIDE = 1024


def image_size() -> Spec:
    """[height, width] in pixels."""

    def check(v: Any) -> list[int]:
        if not isinstance(v, list) or len(v) != 2:
            raise ValueError
        if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_SIDE for x in v):
            raise ValueError
        return [int(x) for x in v]

    return Spec(f"[height, width], two integers from 1 to {MAX_SIDE}", check)


def channels() -> Spec:
    def check(v: Any) -> int:
        if v not in (1, 3) or isinstance(v, bool):
            raise ValueError
        return int(v)

    return Spec("1 (gray) or 3 (RGB)", check)


SCHEMA: Schema = {
    "val_fraction": number(0, 1, low_open=True, high_open=True),
    "test_fraction": number(0, 1, low_open=True, high_open=True),
    "seed": integer(0),
    "normalize": choice("minmax", "zscore"),
    "image_size": image_size(),
    "channels": channels(),
    "style": choice("digits", "plain"),
    "skip_unreadable": boolean(),
}


def split_sizes(n: int, fraction: float) -> tuple[int, int]:
    """(kept, split off) sizes scikit-learn's ``train_test_split`` makes of ``n`` images."""
    val = math.ceil(fraction * n)
    return n - val, val


def check_split(n: int, val_fraction: float, classes: int = CLASSES, key: str = "val_fraction") -> None:
    """A stratified split needs at least one image of every class on each side."""
    train, val = split_sizes(n, val_fraction)
    if min(train, val) < classes:
        low, high = classes / n, 1 - classes / n
        other = "validation" if key == "val_fraction" else "test"
        hint = f"use a value in [{low:.6f}, {high:.6f}]" if low < high else "the data set is too small"
        raise ParamsError(
            f"params: preprocess.{key} {val_fraction} splits {n} images into {train} train / {val} {other}: "
            f"a stratified split needs at least {classes} on each side ({hint})"
        )


def check(cfg: dict[str, Any]) -> None:
    check_split(TRAIN_IMAGES, cfg["val_fraction"])


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(cfg)
