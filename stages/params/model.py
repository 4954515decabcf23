"""The ``model`` section: the network (dense, or conv blocks then the dense head)."""

from __future__ import annotations

from typing import Any

from stages.params.schema import ParamsError, Schema, boolean, choice, integer, list_of, number, one_or_list

NAME = "model"
IMAGE_SIDE = 28  # each conv block halves the side: 2x2 pooling rounds down, a stride-2 convolution up
POOLING = ("max", "average", "stride")

SCHEMA: Schema = {
    "kind": choice("dense", "cnn"),
    "hidden_units": list_of(integer(1)),
    "activation": choice("relu", "sigmoid", "tanh"),
    "dropout": number(0, 1),
    "output": choice("softmax", "linear"),
    "cnn": {
        "filters": list_of(integer(1)),
        "kernel_size": integer(1),
        "batch_norm": boolean(),
        "pooling": one_or_list(choice(*POOLING)),
        "pool_first": boolean(),
        "convs": one_or_list(integer(1)),
    },
}


def max_blocks(side: int = IMAGE_SIDE) -> int:
    """How many 2x2 poolings a ``side``-pixel square survives with at least one pixel left."""
    blocks = 0
    while side // 2 >= 1:
        side //= 2
        blocks += 1
    return blocks


def check(cfg: dict[str, Any]) -> None:
    if cfg["kind"] != "cnn":
        return
    blocks = len(cfg["cnn"]["filters"])
    for key, allowed in (("pooling", f"one of {', '.join(POOLING)}"), ("convs", "an integer >= 1")):
        value = cfg["cnn"][key]
        if isinstance(value, list) and len(value) != blocks:
            raise ParamsError(
                f"params: model.cnn.{key} lists {len(value)} entries for {blocks} blocks (model.cnn.filters): "
                f"give {allowed} for every block, or one per block"
            )


def check_image(cfg: dict[str, Any], height: int = IMAGE_SIDE, width: int = IMAGE_SIDE) -> None:
    """The conv blocks fit the images (``preprocess.image_size``): each halves the shorter side."""
    side = min(height, width)
    if cfg["kind"] == "cnn" and len(cfg["cnn"]["filters"]) > max_blocks(side):
        raise ParamsError(
            f"params: model.cnn.filters has {len(cfg['cnn']['filters'])} blocks, but {height}x{width} images "
            f"can be halved only {max_blocks(side)} times (use at most {max_blocks(side)} entries, "
            "or a larger preprocess.image_size)"
        )


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every key, except ``cnn`` for a dense network (it builds no conv blocks)."""
    return {k: v for k, v in cfg.items() if k != "cnn" or cfg["kind"] == "cnn"}
