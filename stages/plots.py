"""Figures for the reports: confusion-matrix heatmap and image galleries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from stages.files import atomic_path


def _save(fig: plt.Figure, path: Path) -> None:
    # No "Software" text chunk (it names the matplotlib version): the same figure, the same bytes.
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def confusion_heatmap(matrix: np.ndarray, path: Path, title: str = "Confusion matrix (test set)") -> None:
    """Counts per (actual, predicted) digit, labelled, diagonal included."""
    fig, ax = plt.subplots(figsize=(8, 6.5))
    sns.heatmap(
        matrix,
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar=True,
        square=True,
        ax=ax,
        xticklabels=range(matrix.shape[1]),
        yticklabels=range(matrix.shape[0]),
        annot_kws={"fontsize": 8},
    )
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    ax.set_title(title)
    _save(fig, path)


def image_grid(
    images: np.ndarray,
    captions: list[str],
    path: Path,
    title: str,
    highlight: list[bool] | None = None,
    columns: int = 8,
) -> None:
    """A grid of 28x28 images with a caption under each (red when highlighted)."""
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * 1.3, rows * 1.6 + 0.4), squeeze=False, layout="constrained"
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r")
            red = highlight is not None and highlight[i]
            ax.set_title(captions[i], fontsize=8, color="tab:red" if red else "black")
    fig.suptitle(title)
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
