"""The IDX file format used by the LeCun MNIST files.

Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension, then the data.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

UBYTE = 0x08


class IdxError(ValueError):
    """A file is not a well-formed IDX file of the expected kind."""


def dotted_name(name: str) -> str:
    """``train-images-idx3-ubyte`` -> ``train-images.idx3-ubyte`` (Kaggle's naming)."""
    stem, _, kind = name.rpartition("-idx")
    return f"{stem}.idx{kind}"


def accepted_names(name: str) -> list[str]:
    """The file names under which a canonical IDX file may be found, raw or gzipped."""
    bases = [name, dotted_name(name)]
    return bases + [b + ".gz" for b in bases]


def find(root: Path, name: str) -> Path | None:
    """The first of ``name``'s accepted names that is a file in ``root``, or None."""
    return next((root / n for n in accepted_names(name) if (root / n).is_file()), None)


def not_found(root: Path, name: str) -> str:
    """Why ``find`` found nothing, naming each name it looked for."""
    return f"no {name} in {root} (also looked for {', '.join(accepted_names(name)[1:])})"


def magic_for(ndim: int) -> int:
    return (UBYTE << 8) | ndim


def encode(array: np.ndarray) -> bytes:
    """Serialize a uint8 array as IDX bytes."""
    if array.dtype != np.uint8:
        raise IdxError(f"IDX writer only supports uint8 arrays, got {array.dtype}")
    header = struct.pack(">I", magic_for(array.ndim))
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode(data: bytes, *, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number and sizes.

    ``name`` is used in error messages; ``ndim`` (1 for labels, 3 for images)
    rejects a file of the wrong kind.
    """
    if len(data) < 4:
        raise IdxError(f"{name}: truncated IDX file ({len(data)} bytes, no header)")
    (magic,) = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    if magic >> 8 != UBYTE or dims == 0:
        raise IdxError(f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x0000080N, unsigned bytes)")
    if ndim is not None and dims != ndim:
        raise IdxError(f"{name}: IDX file has {dims} dimensions, expected {ndim} (magic 0x{magic_for(ndim):08x})")
    header_len = 4 + 4 * dims
    if len(data) < header_len:
        raise IdxError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", data[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_len
    if actual < expected:
        raise IdxError(f"{name}: truncated IDX file: header says {shape} = {expected} bytes of data, found {actual}")
    if actual > expected:
        raise IdxError(f"{name}: IDX file has {actual - expected} trailing bytes after {shape} data")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def read(path: Path, *, ndim: int | None = None) -> np.ndarray:
    """An uncompressed IDX file (``data/raw`` holds them so; fetch un-gzips what it is given, within a limit)."""
    path = Path(path)
    return decode(path.read_bytes(), name=str(path), ndim=ndim)


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file (N, rows, cols) and its labels file (N,), checking they match."""
    images = read(images_path, ndim=3)
    labels = read(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels")
    return images, labels
