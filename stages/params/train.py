"""The ``train`` section: optimizer, schedule, epochs, batches, seed, augmentation."""

from __future__ import annotations

from typing import Any

from stages.params.schema import Schema, boolean, choice, either, integer, number

NAME = "train"
AUGMENT_KEYS = ("shift", "rotation", "zoom", "augment_kernel")

SCHEMA: Schema = {
    "labels": choice("sparse", "onehot"),
    "optimizer": choice("adam", "adamw"),
    "learning_rate": number(0, low_open=True),
    "weight_decay": number(0),
    "schedule": choice("constant", "cosine", "onecycle"),
    "warmup": number(0, 1),
    "label_smoothing": number(0, 1),
    "epochs": integer(1),
    "batch_size": integer(1),
    "seed": integer(0),
    "early_stopping_patience": integer(0),
    "augment": boolean(),
    "shift": number(0, 14),
    "rotation": number(0, 180, high_open=False),
    "zoom": number(0, 1),
    "augment_kernel": choice("gather", "fused"),
    "threads": either(choice("auto"), integer(1)),
}


def check(cfg: dict[str, Any]) -> None:
    pass


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys that shape training: ``weight_decay`` with adamw only, ``warmup`` with onecycle only,
    the augmentation knobs with ``augment: true`` only."""
    unused = set()
    if cfg["optimizer"] != "adamw":
        unused.add("weight_decay")
    if cfg["schedule"] != "onecycle":
        unused.add("warmup")
    if not cfg["augment"]:
        unused.update(AUGMENT_KEYS)
    return {k: v for k, v in cfg.items() if k not in unused}
