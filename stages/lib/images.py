"""Any image of a digit in MNIST's form: decoded safely, then 28x28, light ink on black, centred like MNIST.

MNIST digits are light on dark, size-normalized into a 20x20 box and centred
by their centre of mass in 28x28; a model fed anything else guesses. ``decode``
reads a file (or bytes, or an in-memory picture) with Pillow's safety limits
and the project's own pixel cap, reducing large images while decoding, before
they become an array; ``mnist_style`` finds the digit and brings it into that
form. Used by ``mnist-predict`` and the demo page: one copy of the preprocessing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import numpy as np

from stages.lib.redact import described

if TYPE_CHECKING:
    import PIL.Image

T = TypeVar("T")

BOX = 20  # MNIST: the digit's longer side, in pixels
SIDE = 28
CENTRE = (14.0, 14.0)  # where MNIST puts the centre of mass (row, column): measured on the training set
WORKING_SIZE = 160  # larger images are reduced to about this while decoded, before the digit is found
MAX_PIXELS = 64_000_000  # the project's cap (a 64-megapixel photo), below Pillow's decompression-bomb limit


class ImageError(ValueError):
    """This file cannot be turned into a digit; the message says why."""


EMPTY_FILE = "empty file (0 bytes)"


def unreadable(exc: Exception) -> ImageError | None:
    """What Pillow raised opening or decoding an image, as the one-line ``ImageError`` that says why (``None``
    for ``MemoryError``): one wording for ``mnist-predict``, the demo page and the preprocess stage. A decoder's
    surprise on a malformed file (``struct.error``, ``IndexError`` …) is that file's error too."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError(
            f"image too large to decode safely (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)"
        )
    if isinstance(exc, UnidentifiedImageError):  # an OSError too: before them
        return ImageError("not an image (or a format Pillow cannot read)")
    if isinstance(exc, OSError | SyntaxError | ValueError | EOFError):
        return ImageError(f"cannot decode ({exc})")
    if isinstance(exc, MemoryError):
        return None
    return ImageError(f"cannot decode ({described(exc)})")


# --- one image into MNIST's form ---------------------------------------------


def decode(source: str | Path | Any) -> np.ndarray:
    """Grayscale pixels (float, 0 = black, 255 = white) of an image file or file-like object, safely.

    EXIF orientation applied, transparency composited onto white, the first
    frame of an animation; 8/16-bit, palette and CMYK images alike. Images over
    ``MAX_PIXELS`` (or Pillow's decompression-bomb limit) are refused before
    they are decoded; larger ones than needed are reduced while decoded (JPEG's
    draft mode) or right after (Pillow's box reduction), so a huge picture never
    becomes a huge array.
    """
    from PIL import Image  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return first_frame(source, from_image)


def first_frame(source: str | Path | BinaryIO, convert: Callable[[PIL.Image.Image], T]) -> T:
    """``convert`` applied to the first frame of an image file or file-like object (opened lazily: ``convert``
    sees its header before its pixels); whatever Pillow raises is the one-line ``ImageError`` of ``unreadable``.
    The caller makes Pillow's decompression-bomb warning an error (``decode``; once per chunk of images in
    ``decoding``)."""
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(source) as image:
            image.seek(0)  # the first frame of an animation
            return convert(image)
    except Exception as exc:
        if (error := unreadable(exc)) is None:
            raise
        raise error from None


def from_image(image: Any) -> np.ndarray:
    """Grayscale pixels, as ``decode`` gives them, of a Pillow image (opened lazily from a file, or a drawing
    app's canvas already in memory); refused over ``MAX_PIXELS`` before its pixels are decoded.

    Transparency is composited onto white, so a pen on a transparent canvas is
    dark ink on white paper.
    """
    if image.width == 0 or image.height == 0:
        raise ImageError("empty image (0 pixels)")
    refuse_too_large(image)
    return _grayscale(_reduced(image))


def refuse_too_large(image: Any) -> None:
    """``ImageError`` for an image over ``MAX_PIXELS``, from its header, before its pixels are decoded."""
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image too large ({image.width}x{image.height}; at most {MAX_PIXELS:,} pixels)")


def _reduced(image: Any, limit: int = WORKING_SIZE) -> Any:
    """``image`` decoded, its longer side at most about ``limit``, EXIF orientation applied."""
    from PIL import ImageOps  # noqa: PLC0415

    longer = max(image.size)
    if image.format == "JPEG" and longer > limit:  # the decoder scales down itself, far faster
        image.draft("L", (-(-image.width * limit // longer), -(-image.height * limit // longer)))
    image.load()
    image = ImageOps.exif_transpose(image)
    factor = -(-max(image.size) // limit)
    if factor > 1 and min(image.size) >= factor:  # a sliver stays as it is
        if image.mode.startswith("I;16"):
            image = image.convert("I")
        elif image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
            image = image.convert("RGBA")
        image = image.reduce(factor)  # the average of each factor x factor block
    return image


def is_wide_gray(image: Any) -> bool:
    """A 16- or 32-bit grayscale image (``I;16*``, ``I``, ``F``), whose values ``wide_gray`` brings to 0-255."""
    return image.mode.startswith("I;16") or image.mode in ("I", "F")


def wide_gray(image: Any) -> np.ndarray:
    """A 16- or 32-bit grayscale image's pixels scaled to 0-255 (float64): 16-bit modes, and 32-bit ones with
    values over 255, by 255/65535; others as they are. The one rule for training, predict and the demo."""
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
    return np.clip(pixels * (255.0 / top), 0, 255)


def on_white(image: Any) -> Any:
    """``image`` with its transparency (alpha, a palette's or a ``transparency`` colour) composited onto white,
    as ink on paper; an image without transparency as it is."""
    from PIL import Image  # noqa: PLC0415

    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image


def _grayscale(image) -> np.ndarray:
    if is_wide_gray(image):
        return wide_gray(image)
    return np.asarray(on_white(image).convert("L"), dtype=np.float64)


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
