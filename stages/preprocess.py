"""DVC stage ``preprocess``: decode the raw data into one image shape, split, normalize, cache arrays.

The raw data is MNIST's IDX files, another IDX data set, or a folder of
images packed by ``fetch`` (``stages.lib.datasets``); every image is brought
to ``preprocess.image_size`` and ``channels`` (``stages.lib.decoding``; MNIST
at its own 28x28 gray is left as it is). A folder without its own test split
gets a stratified, seeded one. The validation split is taken (stratified,
seeded) from the training set; the normalization constants are fitted on the
training split only; the test set is only transformed, never used to fit
anything. ``stats.json`` records the data set (name, kind, class names, image
shape, style) for every later stage.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from stages import finish
from stages.lib import datasets, decoding, idx
from stages.lib.data import MNIST, SPLITS
from stages.lib.files import staged_dir, write_json
from stages.lib.images import ImageError
from stages.lib.paths import PREPARED_DIR, RAW_DIR, STATS_PATH
from stages.lib.progress import Progress
from stages.params import preprocess as preprocess_params
from stages.params import schema

# The largest data set trained here: float32 arrays of every split, about twice (the training loop's copy).
BYTES_PER_VALUE = 10
SKIPS_NAMED = 5  # unreadable files named, with their reasons, in the line that says they were skipped (all: stats.json)


def max_values(meminfo: Path = Path("/proc/meminfo")) -> int:
    """How many pixel values (N x H x W x C over all splits) this machine's memory trains."""
    try:
        total_kb = next(
            int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return 2_500_000_000  # a 24 GiB machine's figure
    return total_kb * 1024 // BYTES_PER_VALUE


def split_train_val(
    images: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    classes: int = preprocess_params.CLASSES,
    key: str = "val_fraction",
    names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded split of ``images`` into a kept part and a split-off part (validation, or test)."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - keep imports light

    preprocess_params.check_split(len(labels), val_fraction, classes, key)  # one line, not scikit-learn's traceback
    values, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        rare = values[counts.argmin()]
        name = names[rare] if names else str(rare)
        raise schema.ParamsError(
            f"params: preprocess.{key}: class {name} has {counts.min()} image(s); a stratified split needs at least "
            "2 of every class (add images of it, or remove its folder)"
        )
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=val_fraction, random_state=seed, stratify=labels, shuffle=True
    )
    return x_train, y_train, x_val, y_val


def load_raw(raw_dir: Path, cfg: dict, log=print) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(train images, labels, test images, labels) as uint8 in the configured shape, and the data set's facts."""
    shape = decoding.Shape(*cfg["image_size"], cfg["channels"])
    manifest = datasets.read_manifest(raw_dir)
    if manifest is None or manifest["kind"] == "idx":
        (x_full, y_full), (x_test, y_test) = (
            idx.read_pair(*(raw_dir / name for name in datasets.IDX_NAMES[split])) for split in ("train", "test")
        )
        x_full, x_test = decoding.resize_arrays(x_full, shape), decoding.resize_arrays(x_test, shape)
        name, kind, classes = (
            ("mnist", "mnist", MNIST["classes"]) if manifest is None else (manifest["name"], "idx", manifest["classes"])
        )
        return x_full, y_full, x_test, y_test, {"name": name, "kind": kind, "classes": classes, "skipped": []}
    files = manifest["files"]
    blob = datasets.packed_images(raw_dir, manifest)
    check_memory(len(files), shape)
    progress = Progress(f"preprocess: decoding {len(files)} images", len(files), unit="images")
    pixels, failed = decoding.decode_packed(
        blob, [(f["offset"], f["size"]) for f in files], shape, progress=progress.update
    )
    progress.close()
    if failed and not cfg["skip_unreadable"]:
        index, reason = min(failed.items())
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise ImageError(
            f"{files[index]['path']}: {reason}{more}; fix or remove it, or set preprocess.skip_unreadable: true"
        )
    keep = np.array([i not in failed for i in range(len(files))], dtype=bool)
    labels = np.array([f["label"] for f in files], dtype=np.uint8 if len(manifest["classes"]) <= 256 else np.int64)
    split = np.array([f.get("split") or "" for f in files])
    if failed:
        reasons = [f"{files[i]['path']}: {failed[i]}" for i in sorted(failed)]
        log(
            f"preprocess: skipped {len(failed)} unreadable file(s) (preprocess.skip_unreadable): "
            + datasets.first_few(reasons, SKIPS_NAMED, "; ")
        )
    pixels, labels, split = pixels[keep], labels[keep], split[keep]
    classes = len(manifest["classes"])
    if manifest["split"] == "given":
        train, test = split == "train", split == "test"
        x_full, y_full, x_test, y_test = pixels[train], labels[train], pixels[test], labels[test]
    else:
        x_full, y_full, x_test, y_test = split_train_val(
            pixels, labels, cfg["test_fraction"], cfg["seed"], classes, key="test_fraction", names=manifest["classes"]
        )
    skipped = sorted(files[i]["path"] for i in failed)
    return (
        x_full,
        y_full,
        x_test,
        y_test,
        {"name": manifest["name"], "kind": "folder", "classes": manifest["classes"], "skipped": skipped},
    )


def check_memory(n: int, shape: decoding.Shape, limit: int | None = None) -> None:
    values = n * shape.height * shape.width * shape.channels
    limit = max_values() if limit is None else limit
    if values > limit:
        raise schema.ParamsError(
            f"params: {n} images of {shape.height}x{shape.width}x{shape.channels} are {values:,} values, more than "
            f"this machine's memory trains ({limit:,}): use a smaller preprocess.image_size or fewer images"
        )


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


def prepare(
    raw_dir: Path,
    out_dir: Path,
    val_fraction: float,
    seed: int,
    method: str,
    *,
    image_size: tuple[int, int] | list[int] = (28, 28),
    channels: int = 1,
    style: str = "digits",
    test_fraction: float = 0.2,
    skip_unreadable: bool = False,
    log=print,
) -> dict:
    """Read the raw data and write the normalized splits to ``out_dir`` atomically (the ``preprocess`` params)."""
    cfg = {
        "val_fraction": val_fraction,
        "seed": seed,
        "normalize": method,
        "image_size": list(image_size),
        "channels": channels,
        "style": style,
        "test_fraction": test_fraction,
        "skip_unreadable": skip_unreadable,
    }
    x_full, y_full, x_test, y_test, dataset = load_raw(raw_dir, cfg, log)
    check_memory(len(x_full) + len(x_test), decoding.Shape(*cfg["image_size"], cfg["channels"]))
    classes = len(dataset["classes"])
    x_train, y_train, x_val, y_val = split_train_val(
        x_full, y_full, cfg["val_fraction"], cfg["seed"], classes, names=dataset["classes"]
    )
    constants = fit_normalization(x_train, cfg["normalize"])

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
            "dataset": {
                "name": dataset["name"],
                "kind": dataset["kind"],
                "classes": dataset["classes"],
                "image_shape": [*cfg["image_size"], cfg["channels"]],
                "style": cfg["style"],
                "skipped": dataset["skipped"],
            },
        }
        write_json(staging / STATS_PATH.name, stats)
    return stats


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    try:
        cfg = schema.load(preprocess_params)["preprocess"]
    except schema.ParamsError as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 2
    try:
        rest = {k: v for k, v in cfg.items() if k not in ("val_fraction", "seed", "normalize")}
        stats = prepare(RAW_DIR, PREPARED_DIR, cfg["val_fraction"], cfg["seed"], cfg["normalize"], **rest)
    except (
        idx.IdxError,
        FileNotFoundError,
        schema.ParamsError,
        ImageError,
        datasets.DatasetError,
        decoding.DecodingFailed,
    ) as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 1
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in stats["shapes"].items() if k.startswith("x_"))
    name, classes = stats["dataset"]["name"], len(stats["dataset"]["classes"])
    print(f"preprocess: {name} ({classes} classes), {cfg['normalize']} -> {PREPARED_DIR}: {shapes}")
    return 0


if __name__ == "__main__":
    finish(main())
