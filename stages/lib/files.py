"""Small file helpers: checksums and all-or-nothing writes.

All or nothing holds across a power cut too: a new file's bytes are fsynced
before its name replaces the old one, and the directory after, so a crash
leaves the old file or the whole new one, never a new name on missing bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.lib import processes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to the disk.

    A filesystem that cannot sync (EINVAL, ENOTSUP: some network and FUSE ones, for directories) is let be: the
    write is then as durable as that filesystem makes it. Any other error (EIO) fails the write.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Fsync every regular file and directory under ``root``, and ``root``, children first (links not followed)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            mode = os.lstat(path).st_mode  # a link is neither: not followed
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                _fsync(path)
    _fsync(root)


def file_digest(path: Path, algorithm: str = "sha256") -> bytes:
    """The ``algorithm`` digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).digest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256").hex()


def dir_digest(directory: Path) -> str:
    """One sha256 for the files directly in ``directory`` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            digest.update(f"{path.name}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = ".tmp", durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    ``suffix`` keeps writers that insist on an extension (Keras' ``.keras``) happy.
    The file is fsynced before the rename and the directory after it, unless not ``durable`` (many small files a
    person asked for: a killed process still leaves none half-written, but a power cut may lose the last ones).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        if durable:
            _fsync(tmp_path)  # the bytes on the disk before the name points at them
        os.replace(tmp_path, target)
        if durable:
            _fsync(target.parent)  # and the new name itself
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(target: Path, obj: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _recover(target: Path) -> None:
    """Tidy what a ``staged_dir`` on ``target`` left when its process was killed: the staging directory of a
    process that has ended (its pid is in the name) is removed, as it was never complete; and a previous
    ``target`` moved aside by a process killed between the two renames is put back, unless another process
    is staging ``target`` right now (it may be between its renames). A pid that is alive, whatever runs
    under it now, keeps its directory: a leftover may stay, a live run's is never touched."""
    name = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.tmp")  # mkdtemp's random part has no dot
    live = False
    for staging in target.parent.iterdir():
        match = name.fullmatch(staging.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not processes.signalled(pid):
            shutil.rmtree(staging, ignore_errors=True)
        else:
            live = True
    old = target.with_name(f".{target.name}.old")
    if not live and old.is_dir() and not target.exists():
        os.replace(old, target)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; swap it in on success.

    The previous ``target`` (if any) is replaced only after the block completes;
    on failure the staging directory is deleted and ``target`` is left as it was.
    What a killed process left is tidied first (``_recover``).
    Every file and directory in the staging directory, and the staging directory
    itself, are fsynced before the swap (its entries durable before the rename
    can be), and the parent directory after it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        _fsync_tree(staging)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
