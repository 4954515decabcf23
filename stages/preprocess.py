"""DVC stage ``preprocess``: parse the IDX files, split, normalize, cache arrays.

The validation split is taken (stratified, seeded) from the training set; the
normalization constants are fitted on the training split only; the test set is
only transformed, never used to fit anything.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from stages import finish
from stages.lib import idx
from stages.lib.data import SPLITS
from stages.lib.files import staged_dir, write_json
from stages.lib.paths import PREPARED_DIR, RAW_DIR, STATS_PATH
from stages.params import preprocess as preprocess_params
from stages.params import schema


def split_train_val(
    images: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded split of the training set into train and validation."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - keep imports light

    preprocess_params.check_split(len(labels), val_fraction)  # one line, not scikit-learn's traceback
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=val_fraction, random_state=seed, stratify=labels, shuffle=True
    )
    return x_train, y_train, x_val, y_val


def fit_normalization(x_train: np.ndarray, method: str) -> dict[str, float]:
    """Constants of ``method``, fitted on the training images only."""
    if method == "minmax":
        return {"method": "minmax", "offset": 0.0, "scale": 255.0}
    if method == "zscore":
        pixels = x_train.astype(np.float64)
        return {"method": "zscore", "offset": float(pixels.mean()), "scale": float(pixels.std())}
    raise ValueError(f"unknown normalization {method!r}")


def normalize(images: np.ndarray, constants: dict[str, float]) -> np.ndarray:
    """``(x - offset) / scale`` as float32."""
    out = images.astype(np.float32)
    out -= np.float32(constants["offset"])
    out /= np.float32(constants["scale"])
    return out


def class_counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def prepare(raw_dir: Path, out_dir: Path, val_fraction: float, seed: int, method: str) -> dict:
    """Read the raw IDX files and write the normalized splits to ``out_dir`` atomically."""
    x_full, y_full = idx.read_pair(raw_dir / "train-images-idx3-ubyte", raw_dir / "train-labels-idx1-ubyte")
    x_test, y_test = idx.read_pair(raw_dir / "t10k-images-idx3-ubyte", raw_dir / "t10k-labels-idx1-ubyte")
    x_train, y_train, x_val, y_val = split_train_val(x_full, y_full, val_fraction, seed)
    constants = fit_normalization(x_train, method)

    arrays = {
        "x_train": normalize(x_train, constants),
        "y_train": y_train.astype(np.int64),
        "x_val": normalize(x_val, constants),
        "y_val": y_val.astype(np.int64),
        "x_test": normalize(x_test, constants),
        "y_test": y_test.astype(np.int64),
    }
    digest = hashlib.sha256()
    with staged_dir(out_dir) as staging:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array, allow_pickle=False)
            digest.update(name.encode() + array.tobytes())
        stats = {
            "normalization": constants,
            "class_counts": {s: class_counts(arrays[f"y_{s}"]) for s in SPLITS},
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
            "sha256": digest.hexdigest(),
        }
        write_json(staging / STATS_PATH.name, stats)
    return stats


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    try:
        cfg = schema.load(preprocess_params)["preprocess"]
    except schema.ParamsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        stats = prepare(RAW_DIR, PREPARED_DIR, cfg["val_fraction"], cfg["seed"], cfg["normalize"])
    except (idx.IdxError, FileNotFoundError, schema.ParamsError) as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 1
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in stats["shapes"].items() if k.startswith("x_"))
    print(f"preprocess: {cfg['normalize']} -> {PREPARED_DIR}: {shapes}")
    return 0


if __name__ == "__main__":
    finish(main())
