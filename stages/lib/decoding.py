"""A labelled image collection decoded once into uint8 arrays of one shape, using every core it may.

Training images (unlike ``mnist-predict``'s digits, ``stages.lib.images``) are
brought to ``preprocess.image_size`` and ``preprocess.channels`` as they are:
EXIF orientation applied, the first frame of an animation, 16-bit images
scaled to 8 bits, transparency composited onto **white**, converted to gray
(``L``) or ``RGB``, and resized to exactly H x W with Pillow's **bilinear**
filter (antialiased when shrinking; the aspect ratio is not kept). Files are
opened with Pillow's safety limits and the project's pixel cap
(``images.MAX_PIXELS``).

``decode_packed`` reads the files that ``fetch`` packed into one
``images.bin`` (no per-file open), in as many processes as the cores this
process may use; each writes straight into one uint8 array in anonymous
shared memory (inherited through fork, so not bounded by ``/dev/shm``), which
becomes the result: every file is decoded once and the pixels are never held
twice. A worker that dies (the OOM killer) fails the decoding in one line.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.lib.images import (
    EMPTY_FILE,
    ImageError,
    first_frame,
    is_wide_gray,
    on_white,
    refuse_too_large,
    wide_gray,
)
from stages.serving import cores

EXIF_FORMATS = {"JPEG", "MPO", "TIFF", "WEBP"}  # formats whose orientation lives in EXIF
CHUNK = 256  # images per task: large enough to hide the task's cost, small enough for steady progress


@dataclass(frozen=True)
class Shape:
    height: int
    width: int
    channels: int

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """One image's array shape: (H, W) for gray (as MNIST), (H, W, 3) for colour."""
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, 3)


def image_to_array(image: Any, shape: Shape) -> np.ndarray:
    """A Pillow image as uint8 pixels of ``shape`` (see the module's docstring for each step)."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    refuse_too_large(image)
    mode = "L" if shape.channels == 1 else "RGB"
    if image.format == "JPEG" and (image.width > 2 * shape.width and image.height > 2 * shape.height):
        image.draft(mode, (shape.width, shape.height))  # the decoder scales down itself
    image.load()
    if "exif" in image.info or image.format in EXIF_FORMATS:  # a PNG without an eXIf chunk has no orientation
        image = ImageOps.exif_transpose(image)
    if is_wide_gray(image):
        image = Image.fromarray(wide_gray(image).astype(np.uint8), mode="L")
    image = on_white(image)
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (shape.width, shape.height):
        image = image.resize((shape.width, shape.height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def to_array(source: Any, shape: Shape) -> np.ndarray:
    """An encoded image (a path or a file-like object) as uint8 pixels of ``shape``, or ``ImageError``."""
    from PIL import Image  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _to_array(source, shape)


def _to_array(source: Any, shape: Shape) -> np.ndarray:
    """``to_array`` where Pillow's decompression-bomb warning is already an error (set once per chunk: a
    ``catch_warnings`` per image costs more than decoding a small one)."""
    return first_frame(source, lambda image: image_to_array(image, shape))


def resize_arrays(images: np.ndarray, shape: Shape) -> np.ndarray:
    """uint8 gray images (N, h, w) of an IDX file brought to ``shape`` (unchanged when they already have it)."""
    from PIL import Image  # noqa: PLC0415

    if images.shape[1:] == shape.pixel_shape:
        return images
    out = np.empty((len(images), *shape.pixel_shape), dtype=np.uint8)
    for i, pixels in enumerate(images):
        out[i] = image_to_array(Image.fromarray(pixels, mode="L"), shape)
    return out


# --- a packed collection, decoded in parallel into shared memory --------------------------------


class DecodingFailed(RuntimeError):
    """A decoding process died (out of memory, killed); the message is one line."""


_worker: dict[str, Any] = {}


def _open_blob(blob: str) -> Any:
    with open(blob, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""


def _decode_chunk(chunk: Sequence[tuple[int, int, int]]) -> list[tuple[int, str]]:
    """Decode (index, offset, size) entries into the shared array; the (index, reason) of those that failed."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    if "blob" not in _worker:  # once per process: the packed file, mapped
        _worker["blob"] = _open_blob(_worker["blob_path"])
    blob, out, shape = _worker["blob"], _worker["out"], _worker["shape"]
    failed = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for index, offset, size in chunk:
            if size == 0:
                failed.append((index, EMPTY_FILE))
                continue
            try:
                out[index] = _to_array(io.BytesIO(blob[offset : offset + size]), shape)
            except ImageError as exc:  # a decoder's surprise on a malformed file too (images.unreadable)
                failed.append((index, str(exc)))
    return failed


def decode_packed(
    blob: Path,
    entries: Sequence[tuple[int, int]],
    shape: Shape,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[np.ndarray, dict[int, str]]:
    """The images at (offset, size) in ``blob`` as one uint8 array (N, H, W[, 3]), and {index: reason} for
    the files that could not be decoded (their rows are left black)."""
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

    n = len(entries)
    memory = mmap.mmap(-1, max(1, n * int(np.prod(shape.pixel_shape))))  # anonymous, shared with forked workers
    out = np.ndarray((n, *shape.pixel_shape), dtype=np.uint8, buffer=memory)
    indexed = [(i, offset, size) for i, (offset, size) in enumerate(entries)]
    chunks = [indexed[i : i + CHUNK] for i in range(0, n, CHUNK)]
    workers = min(workers or cores.usable(), max(1, len(chunks)))
    failed: dict[int, str] = {}
    _worker.update(blob_path=str(blob), out=out, shape=shape)  # what the forked workers inherit
    try:
        if workers == 1:
            for chunk in chunks:
                failed.update(_decode_chunk(chunk))
                progress(len(chunk))
        else:
            context = multiprocessing.get_context("fork")
            try:
                with ProcessPoolExecutor(workers, mp_context=context) as pool:
                    for chunk, result in zip(chunks, pool.map(_decode_chunk, chunks), strict=True):
                        failed.update(result)
                        progress(len(chunk))
            except BrokenProcessPool:
                raise DecodingFailed(
                    f"a decoding process died (out of memory?) while reading {blob.name}: "
                    "use a smaller preprocess.image_size, or fewer images"
                ) from None
    finally:
        blob_map = _worker.pop("blob", None)
        if isinstance(blob_map, mmap.mmap):
            blob_map.close()
        _worker.clear()
    return out, failed
