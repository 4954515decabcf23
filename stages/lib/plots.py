"""Figures for the reports: confusion-matrix heatmap and image galleries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from stages.lib.files import atomic_path


def _save(fig: plt.Figure, path: Path) -> None:
    # No "Software" text chunk (it names the matplotlib version): the same figure, the same bytes.
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def confusion_heatmap(
    matrix: np.ndarray, path: Path, title: str = "Confusion matrix (test set)", labels: list[str] | None = None
) -> None:
    """Counts per (actual, predicted) class, labelled with the class names (MNIST: the digits), diagonal included."""
    labels = list(labels) if labels is not None else [str(i) for i in range(matrix.shape[0])]
    side = max(8, 0.45 * len(labels) + 3)  # room for many classes' names
    fig, ax = plt.subplots(figsize=(side, side * 6.5 / 8))
    sns.heatmap(
        matrix,
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar=True,
        square=True,
        ax=ax,
        xticklabels=labels,
        yticklabels=labels,
        annot_kws={"fontsize": 8},
    )
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    ax.set_title(title)
    _save(fig, path)


# Pixels between images, and above each image for its caption (two lines at 8 points).
GAP, CAPTION = 8, 14
CAPTION_POINTS = 8
IMAGE_INCHES = 1.3  # an image and its gap, on the page


def tile(images: np.ndarray, columns: int, gap: int = GAP) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The images laid out in rows of ``columns`` on one canvas, and where each caption goes.

    Each image gets a cell: ``CAPTION`` pixels above it for its caption and
    ``gap / 2`` either side. The canvas around the images is white on the
    page, where the captions are written in black: a gray image's background
    (its minimum, drawn white by the reversed gray scale), a colour image's
    maximum. Caption anchors are (x, y) in canvas pixels, the bottom centre of
    the caption.
    """
    n, height, width = images.shape[:3]
    rows = max(1, -(-n // columns))
    cell_w, cell_h = width + gap, height + CAPTION
    fill = (images.max() if images.ndim == 4 else images.min()) if n else 0.0
    canvas = np.full((rows * cell_h, columns * cell_w, *images.shape[3:]), fill, np.float32)
    anchors = []
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        top, left = row * cell_h + CAPTION, column * cell_w + gap // 2
        canvas[top : top + height, left : left + width] = image
        anchors.append(((column + 0.5) * cell_w, top - 1))
    return canvas, anchors


def caption_gap(captions: list[str], width: int, inches_per_pixel: float) -> int:
    """Pixels between images ``width`` pixels wide: ``GAP``, or more when a caption's widest line (at
    ``CAPTION_POINTS``, as drawn) and half a ``GAP`` are wider than a cell (long class names)."""
    from matplotlib.textpath import TextPath  # noqa: PLC0415

    def line_width(line: str) -> float:  # its outline's points: a hair wider than the ink, 10x faster than get_extents
        x = TextPath((0, 0), line, size=CAPTION_POINTS).vertices[:, 0]
        return float(x.max() - x.min()) if x.size else 0.0

    widest = max((line_width(line) for c in captions for line in c.splitlines()), default=0.0)
    # The axes (matplotlib's default margins) get this share of the page, the image in it as much as fits.
    params = plt.rcParams
    share = min(
        params["figure.subplot.right"] - params["figure.subplot.left"],
        params["figure.subplot.top"] - params["figure.subplot.bottom"],
    )
    text = widest / 72 / (inches_per_pixel * share)  # points to canvas pixels
    # A cell at least as wide as the caption and half a GAP (MNIST's captions: GAP, their cells are wide enough).
    return max(GAP, int(np.ceil(text + GAP / 2 - width)))


def image_grid(
    images: np.ndarray,
    captions: list[str],
    path: Path,
    title: str,
    highlight: list[bool] | None = None,
    columns: int = 8,
) -> None:
    """A grid of images (gray or colour) with a caption above each (red when highlighted).

    One picture on one axes (``tile``), so one grey scale for all the images
    (from the darkest to the brightest pixel of any): a subplot per image
    would cost about 30 ms each to lay out and draw.
    """
    inches_per_pixel = IMAGE_INCHES / (images.shape[2] + GAP)  # an image about an inch wide
    canvas, anchors = tile(images, columns, caption_gap(captions, images.shape[2], inches_per_pixel))
    width, height = canvas.shape[1] * inches_per_pixel, canvas.shape[0] * inches_per_pixel + 0.4
    fig, ax = plt.subplots(figsize=(width, height))
    if canvas.ndim == 3:  # colour: shown as it is, its values stretched to [0, 1]
        low, high = float(canvas.min()), float(canvas.max())
        ax.imshow((canvas - low) / max(high - low, 1e-9), interpolation="nearest")
    else:
        ax.imshow(canvas, cmap="gray_r", interpolation="nearest")
    ax.set_axis_off()
    for i, ((x, y), text) in enumerate(zip(anchors, captions, strict=True)):
        red = highlight is not None and highlight[i]
        ax.text(x, y, text, ha="center", va="bottom", fontsize=CAPTION_POINTS, color="tab:red" if red else "black")
    ax.set_title(title)
    _save(fig, path)


def history_curves(histories: dict[str, Any], path: Path) -> None:
    """Loss and accuracy per epoch (training dashed, validation solid) of one or more revisions."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for (label, frame), color in zip(histories.items(), sns.color_palette(n_colors=len(histories)), strict=True):
        for ax, metric, name in [(axes[0], "loss", "Cross-entropy loss"), (axes[1], "accuracy", "Accuracy")]:
            ax.plot(frame["epoch"], frame[metric], "--", color=color, label=f"{label}: training")
            ax.plot(frame["epoch"], frame[f"val_{metric}"], "-", color=color, label=f"{label}: validation")
            ax.set_xlabel("Epoch")
            ax.set_ylabel(name)
    axes[1].legend(fontsize=8)
    fig.suptitle("Training history")
    _save(fig, path)
