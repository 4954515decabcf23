"""The trained classifier on your own digit images: scans, photos, drawings.

    python -m stages.predict PATH [PATH ...] [--model URI] [--json] [--top K] [--save-inputs DIR]
    mnist-predict ...                      (the same, as a console script)

PATHs are image files, directories (their image files, sorted) or glob
patterns. Each image is brought into MNIST's form first (``mnist_style``):
MNIST digits are light on dark, size-normalized into a 20x20 box and centred
by their centre of mass in 28x28, and a model fed anything else guesses. The
model is the pipeline's ``data/model/model.keras`` with the normalization it
was trained with, or any MLflow model URI (``models:/mnist-classifier@champion``,
``runs:/<id>/model``). A file that cannot be read gets a one-line error, the
others are still predicted, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import KERAS_EXTRAS, finish, leave_out
from stages.config import MLFLOW_DB, MODEL_PATH, SERVING_CONFIG_PATH

PROJECT = Path(__file__).resolve().parents[1]  # the repository, wherever `mnist-predict` is run from

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BOX = 20  # MNIST: the digit's longer side, in pixels
SIDE = 28
CENTRE = (14.0, 14.0)  # where MNIST puts the centre of mass (row, column): measured on the training set
WORKING_SIZE = 160  # larger images are reduced to about this before the digit is found


class ImageError(ValueError):
    """This file cannot be turned into a digit; the message says why."""


# --- one image into MNIST's form ---------------------------------------------


def decode(path: Path) -> np.ndarray:
    """Grayscale pixels (float, 0 = black, 255 = white) of an image file, safely.

    EXIF orientation applied, transparency composited onto white, the first
    frame of an animation; 8/16-bit, palette and CMYK images alike. Images over
    Pillow's decompression-bomb limit are refused before they are decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)  # the first frame of an animation
                longer = max(image.size)
                if image.format == "JPEG" and longer > WORKING_SIZE:  # the decoder scales down, far faster
                    image.draft(
                        "L", (-(-image.width * WORKING_SIZE // longer), -(-image.height * WORKING_SIZE // longer))
                    )
                image.load()
                return from_image(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"image too large to decode safely (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None


def from_image(image) -> np.ndarray:
    """Grayscale pixels, as ``decode`` gives them, of an image already in memory (a drawing app's canvas).

    Transparency is composited onto white, so a pen on a transparent canvas is
    dark ink on white paper. Refused, like a file, over Pillow's pixel limit.
    """
    from PIL import Image  # noqa: PLC0415

    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise ImageError(f"image too large (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)")
    if image.width == 0 or image.height == 0:
        raise ImageError("empty image (0 pixels)")
    return shrink(_grayscale(image))


def shrink(gray: np.ndarray, limit: int = WORKING_SIZE) -> np.ndarray:
    """Average blocks of pixels so the longer side is at most about ``limit``: the digit ends up 20 px anyway."""
    factor = -(-max(gray.shape) // limit)
    if factor <= 1 or min(gray.shape) < factor:  # a sliver stays as it is
        return gray
    height, width = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    return gray[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def _grayscale(image) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale: scale to 0-255
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return np.clip(pixels * (255.0 / top), 0, 255)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float64)


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """A grayscale image as an MNIST digit: 28x28 float32, light ink on black, 0-255.

    1. polarity: inverted when the border (the background) is light;
    2. ink: background subtracted, contrast stretched, then a threshold at
       half the ink's brightness, keeping connected blobs that are not specks
       (noise, JPEG artefacts and faint shadows do not widen the box);
    3. the ink's bounding box resized (anti-aliased) so the longer side is 20;
    4. pasted into 28x28 and shifted so the centre of mass is at the centre.
    """
    from PIL import Image  # noqa: PLC0415
    from scipy import ndimage  # noqa: PLC0415

    gray = np.asarray(gray, dtype=np.float64)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:
        gray = 255.0 - gray
        border = 255.0 - border
    background = np.median(border)
    peak = np.percentile(gray, 99.9)
    if peak - background < 32:
        raise ImageError("no digit found (the image is blank or has almost no contrast)")
    ink = np.clip((gray - background) * (255.0 / (peak - background)), 0, 255)

    strong = ink > 127
    labels, count = ndimage.label(strong)
    sizes = ndimage.sum_labels(strong, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= max(0.05 * sizes.max(), 2)) + 1
    if len(keep) == 0:
        raise ImageError("no digit found")
    # The digit: the faint pixels too (anti-aliased edges), where they touch a kept stroke.
    faint, _ = ndimage.label(ink > 25)
    digit = np.isin(faint, np.unique(faint[np.isin(labels, keep)]))
    rows, cols = np.nonzero(digit)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    crop = np.where(ndimage.binary_dilation(digit)[box], ink[box], 0.0)  # with the faintest rim

    height, width = crop.shape
    if max(height, width) != BOX:
        scale = BOX / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
        crop = np.clip(np.asarray(resized, dtype=np.float64), 0, 255)
    small = crop

    canvas = np.zeros((SIDE, SIDE))
    r0, c0 = (SIDE - small.shape[0]) // 2, (SIDE - small.shape[1]) // 2
    canvas[r0 : r0 + small.shape[0], c0 : c0 + small.shape[1]] = small
    com = ndimage.center_of_mass(canvas)
    shift = (round(CENTRE[0] - com[0]), round(CENTRE[1] - com[1]))
    return ndimage.shift(canvas, shift, order=0, mode="constant", cval=0.0).astype(np.float32)


# --- which files ---------------------------------------------------------------


@dataclass
class Outcome:
    path: str
    pixels: np.ndarray | None = None
    error: str | None = None
    probabilities: np.ndarray | None = None


def expand(paths: list[str]) -> list[Outcome]:
    """Files, directories (their images, sorted) and glob patterns, in the order given."""
    found: list[Outcome] = []
    for given in paths:
        matches = sorted(glob.glob(given)) if glob.has_magic(given) else [given]
        if not matches:
            found.append(Outcome(given, error="no file matches this pattern"))
        for match in matches:
            path = Path(match)
            if path.is_dir():
                images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not images:
                    found.append(Outcome(match, error="directory has no image files"))
                found.extend(Outcome(str(p)) for p in images)
            elif path.exists():
                found.append(Outcome(match))
            else:
                found.append(Outcome(match, error="no such file"))
    return found


def prepare(outcome: Outcome) -> Outcome:
    """Fill in ``outcome.pixels`` (the image in MNIST's form) or ``outcome.error``; return it."""
    if outcome.error is None:
        try:
            path = Path(outcome.path)
            if path.stat().st_size == 0:
                raise ImageError("empty file (0 bytes)")
            outcome.pixels = mnist_style(decode(path))
        except ImageError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a decoder's surprise is this file's error, not the whole batch's
            outcome.error = f"cannot read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return outcome


# --- the model -------------------------------------------------------------------


def load_model(uri: str | None):
    """A function from raw-pixel batches (N, 28, 28) to probabilities (N, 10)."""
    if uri is None or ":/" not in uri:  # the pipeline's model, or a .keras file (or its directory)
        from stages.classifier import Classifier  # noqa: PLC0415

        model_path = PROJECT / MODEL_PATH if uri is None else Path(uri)
        if model_path.is_dir():
            model_path = model_path / MODEL_PATH.name
        config_path = model_path.with_name(SERVING_CONFIG_PATH.name)  # written beside it by the train stage
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path} not found: run `dvc repro` first, or pass --model URI")
        return Classifier(model_path, config_path).probabilities
    import mlflow.pyfunc  # noqa: PLC0415

    if not os.environ.get("MLFLOW_TRACKING_URI"):  # models:/ URIs: the project's default store
        mlflow.set_tracking_uri(f"sqlite:///{PROJECT / MLFLOW_DB}")
    model = mlflow.pyfunc.load_model(uri)
    return lambda pixels: np.stack(model.predict(pixels)["probabilities"].to_numpy()).astype(np.float64)


# --- output ----------------------------------------------------------------------


def ranked(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(d), float(probs[d])) for d in order]


def table(outcomes: list[Outcome], top: int) -> str:
    rows = [["path", "digit", "confidence", *(f"#{i}" for i in range(2, top + 1))]]
    for o in outcomes:
        if o.error is None:
            best = ranked(o.probabilities, top)
            rows.append([o.path, str(best[0][0]), f"{best[0][1]:.1%}", *(f"{d} ({p:.1%})" for d, p in best[1:])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def as_json(o: Outcome, top: int) -> str:
    if o.error is not None:
        return json.dumps({"path": o.path, "error": o.error})
    best = ranked(o.probabilities, top)
    return json.dumps(
        {
            "path": o.path,
            "digit": best[0][0],
            "confidence": round(best[0][1], 6),
            "top": [{"digit": d, "probability": round(p, 6)} for d, p in best],
            "probabilities": [round(float(p), 6) for p in o.probabilities],
        }
    )


def save_inputs(outcomes: list[Outcome], directory: Path) -> None:
    """Each image as the model saw it, as a 28x28 PNG named after the input file."""
    from PIL import Image  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    for i, o in enumerate(outcomes):
        if o.pixels is not None:
            name = f"{i:04d}-{Path(o.path).stem}.png"
            Image.fromarray(np.clip(np.rint(o.pixels), 0, 255).astype(np.uint8), mode="L").save(directory / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories or glob patterns")
    parser.add_argument(
        "--model",
        metavar="URI",
        help="an MLflow model URI (runs:/..., models:/...), or a .keras file with serving.json beside it "
        "(default: the pipeline's data/model/model.keras)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--top", type=int, default=2, metavar="K", help="candidates shown per image (default 2)")
    parser.add_argument("--save-inputs", type=Path, metavar="DIR", help="write each image as the model saw it")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error("--top must be between 1 and 10")

    started = time.monotonic()
    outcomes = expand(args.paths)
    # Decode and preprocess in a second process while this one loads the model
    # (importing TensorFlow is most of the start-up): both cores at work.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        prepared = pool.map(prepare, outcomes, chunksize=64)
        try:
            predict = load_model(args.model)
        except Exception as exc:  # any failure to load is reported in one line
            print(f"predict: error: cannot load the model: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        outcomes = list(prepared)
    good = [o for o in outcomes if o.pixels is not None]
    if good:
        probs = predict(np.stack([o.pixels for o in good]))
        for o, p in zip(good, probs, strict=True):
            o.probabilities = p
    if args.save_inputs:
        save_inputs(outcomes, args.save_inputs)

    if args.json:
        for o in outcomes:
            print(as_json(o, args.top))
    elif good:
        print(table(outcomes, args.top))
    failed = [o for o in outcomes if o.error is not None]
    if not args.json:
        for o in failed:
            print(f"predict: error: {o.path}: {o.error}", file=sys.stderr)
    print(f"predict: {len(good)} of {len(outcomes)} images in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The ``mnist-predict`` command: ``main`` in a process that starts and ends faster (see ``stages``)."""
    leave_out(*KERAS_EXTRAS)  # unused here
    finish(main())


if __name__ == "__main__":
    cli()
