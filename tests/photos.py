"""MNIST test digits made to look like photos and scans of handwriting (for predict's quality gate)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def photo_like(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 28x28 MNIST digit as a JPEG: dark on light, 100-400 px, off-centre, tilted, blurred or noisy."""
    size = int(rng.integers(100, 401))
    image = Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC)  # dark ink on white
    image = image.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BICUBIC, fillcolor=255)
    canvas = Image.new("L", (int(size * rng.uniform(1.2, 2.0)), int(size * rng.uniform(1.2, 2.0))), 255)
    canvas.paste(image, (int(rng.integers(0, canvas.width - size + 1)), int(rng.integers(0, canvas.height - size + 1))))
    paper = rng.uniform(200, 245)  # off-white paper, grey-ish ink
    pixels = np.asarray(canvas, dtype=np.float64) * (paper / 255.0)
    if rng.random() < 0.5:
        pixels = np.asarray(
            Image.fromarray(pixels.astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
        )
    else:
        pixels = pixels + rng.normal(0, 8, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=int(rng.integers(60, 86)))
    return out.getvalue()


def write_photos(images: np.ndarray, directory: Path, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, digit in enumerate(images):
        path = directory / f"{i:05d}.jpg"
        path.write_bytes(photo_like(digit, rng))
        paths.append(path)
    return paths
