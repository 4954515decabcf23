"""Your own data in ``data/raw/``: an IDX set or class folders of images, checked, and read back by preprocess.

``fetch.dataset: idx``: the four IDX files of a data set in MNIST's format
(canonical or dotted names, raw or ``.gz``) and an optional ``classes.txt``
(one class name per line, for labels 0..n-1) become the four canonical,
uncompressed IDX files and ``dataset.json``.

``fetch.dataset: folder``: images in ``<path>/<class>/*``, or in
``<path>/train/<class>/*`` and ``<path>/test/<class>/*``. Nothing is decoded
here (preprocess decodes each image once): the files' bytes, unmodified, are
concatenated into ``images.bin`` in the manifest's order, and ``dataset.json``
says which slice is which file, its class, split and sha256.

The same input files give byte-identical ``data/raw/`` (no times, no absolute
paths), so DVC skips what follows; when ``data/raw/`` already holds them it is
not rewritten at all. Every check fails in one line (``DatasetError``) naming
the file or class, before anything is written, and ``data/raw/`` changes all
or nothing. MNIST has no ``dataset.json``: ``read_manifest`` returns None.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.lib import idx
from stages.lib.files import staged_dir, write_json
from stages.lib.progress import Progress
from stages.lib.redact import first_line

Log = Callable[[str], None]

KINDS = ("idx", "folder")
MANIFEST = "dataset.json"  # in data/raw/: what the data is (absent for MNIST)
IMAGES = "images.bin"  # in data/raw/, folder only: the image files' bytes, concatenated
CLASSES_FILE = "classes.txt"  # idx only, optional: one class name per line
SPLIT_DIRS = ("train", "test")
MAX_FILE_BYTES = 64 << 20  # no image this project reads is larger (see stages.lib.images.MAX_PIXELS)
FOLDERS_NAMED = 5  # sub-folders named in the line that says they were left out
# The four IDX files, MNIST's names, by split: (images, labels).
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILES = tuple(name for pair in IDX_NAMES.values() for name in pair)


class DatasetError(ValueError):
    """The data cannot be used as it is; the message is one line naming the file or class."""


def resolve_path(path: str, repo_root: Path) -> Path:
    """``fetch.path`` as an absolute, resolved path: a relative one is relative to the repository root."""
    try:
        p = Path(path).expanduser()
        return (p if p.is_absolute() else Path(repo_root) / p).resolve()
    except RuntimeError as exc:  # ~nosuchuser/..., or a loop of symbolic links
        raise DatasetError(f"fetch.path: {path}: {first_line(exc)}") from None


def manifest_text(manifest: dict[str, Any]) -> str:
    """``dataset.json``'s exact text, as ``write_json`` writes it."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def _read(path: Path, rel: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DatasetError(f"fetch.path: {rel}: cannot be read ({exc.strerror or first_line(exc)})") from None


# --- symlinks that leave fetch.path -------------------------------------------------


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _check_link(entry: os.DirEntry, rel: str, root_real: str) -> None:
    """A symlink must point inside ``fetch.path``, at something that exists."""
    if not entry.is_symlink():
        return
    real = os.path.realpath(entry.path)
    if not _inside(real, root_real):
        raise DatasetError(f"fetch.path: {rel} is a symlink to {real}, outside fetch.path")
    if not os.path.exists(real):
        raise DatasetError(f"fetch.path: {rel} is a broken symlink")


def _visible(directory: str, rel: str, root_real: str) -> list[os.DirEntry]:
    """The entries of ``directory`` not starting with ".", sorted by name, symlinks checked."""
    try:
        with os.scandir(directory) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"fetch.path: {rel or '.'}: cannot be listed ({exc.strerror or first_line(exc)})") from None
    for entry in entries:
        _check_link(entry, f"{rel}{entry.name}", root_real)
    return entries


# --- a folder of class folders ---------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One image file: its path under ``fetch.path`` (posix), class index and split (None: not given)."""

    path: str
    label: int
    split: str | None


@dataclass(frozen=True)
class Folder:
    """What ``scan_folder`` found: sorted class names, "given" or "none" split, files sorted by path."""

    root: Path
    classes: list[str]
    split: str
    files: list[Found]


def _check_root(root: Path) -> str:
    if not root.exists():
        raise DatasetError(f"fetch.path: {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"fetch.path: {root} is not a directory")
    return os.path.realpath(root)


def _class_dirs(directory: str, rel: str, root_real: str, what: str) -> list[str]:
    names = [e.name for e in _visible(directory, rel, root_real) if e.is_dir()]
    if not names:
        raise DatasetError(f"fetch.path: {what} holds no class folders (images go in {rel}<class>/)")
    return names


def first_few(names: list[str], limit: int, sep: str) -> str:
    """The first ``limit`` of ``names`` joined by ``sep``, then how many more there are (for one-line reports)."""
    rest = len(names) - limit
    return sep.join(names[:limit]) + (f"{sep}and {rest} more" if rest > 0 else "")


def _class_files(directory: str, rel: str, root_real: str) -> tuple[list[str], list[str]]:
    """The relative path of each regular file directly in a class folder, and of each of its sub-folders.

    Sizes are checked as the files are read (``_read_image``), not here: one stat a file would cost 70,000 small
    files a third of a second more."""
    files, subdirs = [], []
    for entry in _visible(directory, rel, root_real):
        if entry.is_file():
            files.append(f"{rel}{entry.name}")
        elif entry.is_dir():
            subdirs.append(f"{rel}{entry.name}/")
    if not files:
        raise DatasetError(f"fetch.path: class folder {rel} holds no files")
    return files, subdirs


def scan_folder(root: Path, log: Log = print) -> Folder:
    """The class folders under ``root`` (flat, or under train/ and test/), checked; no file is opened or sized."""
    root = Path(root)
    root_real = _check_root(root)
    top = _visible(str(root), "", root_real)
    if not top:
        raise DatasetError(f"fetch.path: {root} is empty")
    dirs = {e.name for e in top if e.is_dir()}
    if not dirs:
        raise DatasetError(f"fetch.path: {root} holds no class folders (images go in fetch.path/<class>/)")
    splits: tuple[str | None, ...]
    if dirs == set(SPLIT_DIRS):
        splits = SPLIT_DIRS
    elif dirs <= set(SPLIT_DIRS):
        (only,) = dirs
        other = "test" if only == "train" else "train"
        raise DatasetError(
            f"fetch.path: {only}/ has no {other}/ beside it (train/<class>/ and test/<class>/, or <class>/)"
        )
    elif set(SPLIT_DIRS) <= dirs:
        extra = ", ".join(sorted(dirs - set(SPLIT_DIRS)))
        raise DatasetError(
            f"fetch.path: train/ and test/ beside other folders ({extra}): use train/<class>/ and test/<class>/ "
            "only, or <class>/ only"
        )
    else:
        splits = (None,)
    per_split: dict[str | None, list[str]] = {}
    for split in splits:
        base = str(root) if split is None else str(root / split)
        rel = "" if split is None else f"{split}/"
        per_split[split] = _class_dirs(base, rel, root_real, "fetch.path" if split is None else f"{split}/")
    if splits == SPLIT_DIRS:
        train, test = set(per_split["train"]), set(per_split["test"])
        if train - test:
            raise DatasetError(f"fetch.path: class {min(train - test)!r} is in train/ but not in test/")
        if test - train:
            raise DatasetError(f"fetch.path: class {min(test - train)!r} is in test/ but not in train/")
    classes = sorted(per_split[splits[0]])
    if len(classes) < 2:
        raise DatasetError(f"fetch.path: a single class ({classes[0]}/): a classifier needs at least 2 class folders")
    label = {name: i for i, name in enumerate(classes)}
    found: list[Found] = []
    subdirs: list[str] = []
    for split in splits:
        prefix = "" if split is None else f"{split}/"
        for name in classes:
            files, skipped = _class_files(str(root / prefix / name), f"{prefix}{name}/", root_real)
            subdirs += skipped
            found += [Found(path, label[name], split) for path in files]
    found.sort(key=lambda f: f.path)
    if subdirs:
        log(
            f"fetch: left out {len(subdirs)} sub-folder(s) of class folders, with what they hold "
            f"(only the files directly in a class folder count): {first_few(sorted(subdirs), FOLDERS_NAMED, ', ')}"
        )
    ignored = sum(1 for e in top if not e.is_dir())
    if ignored:
        log(f"fetch: left out {ignored} file(s) at the top of fetch.path: images go in class folders")
    return Folder(root, classes, "given" if splits == SPLIT_DIRS else "none", found)


def _counts(classes: list[str], pairs: list[tuple[str, int]]) -> dict[str, dict[str, int]]:
    """{split: {class name: n}} for (split, label) pairs."""
    out: dict[str, dict[str, int]] = {}
    for split, label in pairs:
        per_class = out.setdefault(split, dict.fromkeys(classes, 0))
        per_class[classes[label]] += 1
    return out


def _read_image(path: str, rel: str) -> bytes:
    """A file's bytes, read with one ``open`` and one ``read`` (the cost of 70,000 small files is the calls)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            if size > MAX_FILE_BYTES:
                raise DatasetError(
                    f"fetch.path: {rel} is {size / 2**20:.1f} MiB: not an image of a size this project reads "
                    f"(at most {MAX_FILE_BYTES >> 20} MiB a file)"
                )
            parts, got = [], 0
            while got < size:
                chunk = os.read(fd, size - got)
                if not chunk:  # it shrank meanwhile
                    break
                parts.append(chunk)
                got += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DatasetError(f"fetch.path: {rel}: cannot be read ({exc.strerror or first_line(exc)})") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


KEEP_BYTES = 256 << 20  # folders up to this size are read once: kept in memory between the check and the packing


def _read_folder(name: str, folder: Folder, keep: int = 0) -> tuple[dict[str, Any], list[bytes] | None]:
    """The manifest (every file read for its sha256 and offset), and the files' bytes if they total ``keep`` or less."""
    root = os.fspath(folder.root)
    progress = Progress(f"fetch: reading {len(folder.files)} files", None)
    files: list[dict[str, Any]] = []
    kept: list[bytes] | None = []
    offset = 0
    for f in folder.files:
        data = _read_image(f"{root}/{f.path}", f.path)
        files.append(
            {
                "path": f.path,
                "label": f.label,
                "split": f.split,
                "offset": offset,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        offset += len(data)
        if kept is not None:
            if offset <= keep:
                kept.append(data)
            else:
                kept = None  # too large to hold: pack_folder reads the files again
        progress.update(len(data))
    progress.close()
    counts = _counts(folder.classes, [(f.split or "all", f.label) for f in folder.files])
    manifest = {
        "kind": "folder",
        "name": name,
        "classes": list(folder.classes),
        "split": folder.split,
        "files": files,
        "counts": {s: counts[s] for s in (SPLIT_DIRS if folder.split == "given" else ("all",))},
    }
    return manifest, kept


def pack_folder(root: Path, manifest: dict[str, Any], target: Path, kept: list[bytes] | None = None) -> None:
    """Write the files of ``manifest`` into ``target`` (``images.bin``): ``kept``, the bytes read for the manifest,
    or each file read again and checked against its sha256."""
    files = manifest["files"]
    progress = Progress(f"fetch: packing {IMAGES}", sum(f["size"] for f in files))
    root_text = os.fspath(root)
    with open(target, "wb", buffering=1 << 20) as out:
        for i, entry in enumerate(files):
            if kept is not None:
                data = kept[i]
            else:
                data = _read_image(f"{root_text}/{entry['path']}", entry["path"])
                if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise DatasetError(
                        f"fetch.path: {entry['path']} changed while fetch was reading it: run fetch again"
                    )
            out.write(data)
            progress.update(len(data))
    progress.close()


# --- an IDX set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdxSet:
    """A checked IDX set: the four files' uncompressed bytes by canonical name, class names and counts."""

    files: dict[str, bytes]
    classes: list[str]
    counts: dict[str, dict[str, int]]
    shape: tuple[int, int]


def _find_idx(root: Path, name: str, root_real: str) -> Path:
    path = idx.find(root, name)
    if path is None:
        raise DatasetError(f"fetch.path: {idx.not_found(root, name)}")
    if not _inside(os.path.realpath(path), root_real):
        raise DatasetError(f"fetch.path: {path.name} is a symlink to {os.path.realpath(path)}, outside fetch.path")
    return path


def _read_idx(path: Path, ndim: int) -> tuple[bytes, np.ndarray]:
    data = _read(path, path.name)
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"fetch.path: {path.name}: not a valid gzip file ({first_line(exc)})") from None
    try:
        return data, idx.decode(data, name=path.name, ndim=ndim)
    except idx.IdxError as exc:
        raise DatasetError(f"fetch.path: {exc}") from None


def read_classes(path: Path) -> list[str]:
    """``classes.txt``: one class name per line (outer spaces and trailing empty lines ignored)."""
    try:
        text = _read(path, path.name).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"fetch.path: {path.name} is not UTF-8 text") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if not name:
            raise DatasetError(f"fetch.path: {path.name}: line {i} is empty (one class name per line)")
        if name in seen:
            raise DatasetError(f"fetch.path: {path.name}: {name!r} on lines {seen[name]} and {i}")
        seen[name] = i
    if not names:
        raise DatasetError(f"fetch.path: {path.name} names no class")
    return names


def read_idx_set(root: Path) -> IdxSet:
    """The four IDX files (and ``classes.txt``) in ``root``, uncompressed and checked."""
    root = Path(root)
    root_real = _check_root(root)
    files: dict[str, bytes] = {}
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    shown: dict[str, str] = {}
    for split, (images_name, labels_name) in IDX_NAMES.items():
        images_path, labels_path = _find_idx(root, images_name, root_real), _find_idx(root, labels_name, root_real)
        files[images_name], images[split] = _read_idx(images_path, 3)
        files[labels_name], labels[split] = _read_idx(labels_path, 1)
        shown[images_name], shown[labels_name] = images_path.name, labels_path.name
        if len(images[split]) != len(labels[split]):
            raise DatasetError(
                f"fetch.path: {images_path.name} has {len(images[split])} images but {labels_path.name} has "
                f"{len(labels[split])} labels"
            )
        if len(images[split]) == 0:
            raise DatasetError(f"fetch.path: {images_path.name} holds no images")
    train_images, test_images = (shown[IDX_NAMES[s][0]] for s in SPLIT_DIRS)
    train_labels, test_labels = (shown[IDX_NAMES[s][1]] for s in SPLIT_DIRS)
    shape = images["train"].shape[1:]
    if images["test"].shape[1:] != shape or 0 in shape:
        raise DatasetError(
            f"fetch.path: {test_images} holds {'x'.join(map(str, images['test'].shape[1:]))} images but "
            f"{train_images} {'x'.join(map(str, shape))}"
        )
    classes_path = root / CLASSES_FILE
    given = read_classes(classes_path) if classes_path.is_file() else None
    n = len(given) if given is not None else int(max(labels["train"].max(), labels["test"].max())) + 1
    classes = given if given is not None else [str(i) for i in range(n)]
    for split, shown_name in (("train", train_labels), ("test", test_labels)):
        outside = np.flatnonzero(labels[split] >= n)
        if outside.size:
            i = int(outside[0])
            raise DatasetError(
                f"fetch.path: {shown_name}: label {int(labels[split][i])} (item {i}) is outside 0..{n - 1} "
                f"({CLASSES_FILE} names {n} classes)"
            )
    if n < 2:
        raise DatasetError(
            f"fetch.path: {train_labels}: a single class ({classes[0]!r}): a classifier needs at least 2"
        )
    per_split = {split: np.bincount(labels[split], minlength=n) for split in SPLIT_DIRS}
    for label in range(n):
        if per_split["train"][label] == 0:
            raise DatasetError(f"fetch.path: {train_labels}: class {classes[label]!r} (label {label}) has no image")
    for label in range(n):
        if per_split["test"][label] == 0:
            raise DatasetError(
                f"fetch.path: {test_labels}: class {classes[label]!r} (label {label}) is in train but not in test"
            )
    counts = {split: {classes[i]: int(c) for i, c in enumerate(per_split[split])} for split in SPLIT_DIRS}
    return IdxSet({name: files[name] for name in IDX_FILES}, classes, counts, (int(shape[0]), int(shape[1])))


def idx_manifest(name: str, data: IdxSet) -> dict[str, Any]:
    """``dataset.json`` for an IDX set."""
    return {"kind": "idx", "name": name, "classes": list(data.classes), "split": "given", "counts": data.counts}


# --- into data/raw/ -------------------------------------------------------------------------


def _names(directory: Path) -> set[str] | None:
    try:
        return {p.name for p in Path(directory).iterdir()}
    except OSError:
        return None


def _holds(dest: Path, files: dict[str, bytes]) -> bool:
    """Whether ``dest`` holds exactly these files with these bytes."""
    if _names(dest) != set(files):
        return False
    for name, data in files.items():
        path = Path(dest) / name
        try:
            if path.stat().st_size != len(data) or path.read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def _holds_folder(dest: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``dest`` holds this manifest and an ``images.bin`` of its size (the manifest has every sha256)."""
    if _names(dest) != {MANIFEST, IMAGES}:
        return False
    try:
        size = (Path(dest) / IMAGES).stat().st_size
        if size != sum(f["size"] for f in manifest["files"]):
            return False
        # Equal values serialize to equal text (sorted keys): comparing them skips json's slow indented writer.
        return json.loads((Path(dest) / MANIFEST).read_bytes()) == manifest
    except (OSError, ValueError):
        return False


def fetch_dataset(kind: str, name: str, root: Path, dest: Path, log: Log = print) -> bool:
    """Check the data in ``root`` and put it into ``dest`` (all or nothing); False when ``dest`` held it already."""
    started = time.monotonic()
    if kind == "idx":
        data = read_idx_set(root)
        manifest = idx_manifest(name, data)
        n = sum(sum(c.values()) for c in data.counts.values())
        what = f"{n} {'x'.join(map(str, data.shape))} images in {len(data.classes)} classes"
        files = {**data.files, MANIFEST: manifest_text(manifest).encode()}
        if _holds(dest, files):
            log(f"fetch: {dest} holds {name}'s {what} unchanged; nothing to write")
            return False
        with staged_dir(dest) as staging:
            for file_name, content in data.files.items():
                (staging / file_name).write_bytes(content)
            write_json(staging / MANIFEST, manifest)
    elif kind == "folder":
        folder = scan_folder(root, log)
        split = "train/ and test/" if folder.split == "given" else "no test split"
        log(f"fetch: {len(folder.files)} files in {len(folder.classes)} classes ({split})")
        manifest, kept = _read_folder(name, folder, keep=KEEP_BYTES)
        what = f"{len(folder.files)} files in {len(folder.classes)} classes"
        if _holds_folder(dest, manifest):
            log(f"fetch: {dest} holds {name}'s {what} unchanged; nothing to write")
            return False
        with staged_dir(dest) as staging:
            pack_folder(root, manifest, staging / IMAGES, kept)
            write_json(staging / MANIFEST, manifest)
    else:
        raise DatasetError(f"fetch.dataset: {kind!r} is not one of {', '.join(KINDS)}")
    log(f"fetch: {name}: {what} into {dest} in {time.monotonic() - started:.1f}s")
    return True


# --- reading data/raw/ back (preprocess) ----------------------------------------------------


def _check_manifest(m: Any, path: Path) -> dict[str, Any]:
    def bad(why: str) -> DatasetError:
        return DatasetError(f"{path}: {why}: run fetch again")

    if not isinstance(m, dict) or m.get("kind") not in KINDS:
        raise bad(f"kind is not one of {', '.join(KINDS)}")
    classes = m.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad("classes is not a list of 2+ names")
    if m.get("split") not in ("given", "none") or not isinstance(m.get("counts"), dict):
        raise bad("split or counts missing")
    if m["kind"] == "folder":
        files = m.get("files")
        if not isinstance(files, list):
            raise bad("files missing")
        offset = 0
        for entry in files:
            if (
                not isinstance(entry, dict)
                or entry.get("offset") != offset
                or not isinstance(entry.get("size"), int)
                or entry["size"] < 0
                or not isinstance(entry.get("label"), int)
                or not 0 <= entry["label"] < len(classes)
            ):
                raise bad(f"entry {entry.get('path') if isinstance(entry, dict) else entry!r} is malformed")
            offset += entry["size"]
    return m


def read_manifest(raw_dir: Path) -> dict[str, Any] | None:
    """``raw_dir``'s ``dataset.json``, checked; None for MNIST (which has none)."""
    path = Path(raw_dir) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({first_line(exc)})") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({first_line(exc)}): run fetch again") from None
    return _check_manifest(manifest, path)


def packed_images(raw_dir: Path, manifest: dict[str, Any]) -> Path:
    """``images.bin`` of a folder data set, checked against ``dataset.json``: there, and exactly as long as the
    files it describes (a cut-off copy would otherwise be read as unreadable images of the user's)."""
    path = Path(raw_dir) / IMAGES
    expected = sum(f["size"] for f in manifest["files"])
    if not path.is_file():  # not there, or not a file
        raise DatasetError(f"{path}: missing: run fetch again")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({first_line(exc)}): run fetch again") from None
    if size != expected:
        raise DatasetError(f"{path}: {size} bytes, but {MANIFEST} describes {expected}: run fetch again")
    return path
