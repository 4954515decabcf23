"""DVC stage ``fetch``: the raw data in ``data/raw/``, checked.

``fetch.dataset: mnist``: the four MNIST IDX files, verified by sha256. Sources
are tried in the order of ``fetch.sources``; the first whose files all verify
replaces ``data/raw/``. A failing source leaves nothing behind. The stage runs
on every ``dvc repro`` (so that a changed image of your own re-runs it), and
when ``data/raw/`` already holds the verified files it says so and touches
nothing.

``fetch.dataset: idx`` or ``folder``: your own data from ``fetch.path``,
checked and written with its ``dataset.json`` (``stages.lib.datasets``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from stages import finish
from stages.lib import datasets, runtime, store
from stages.lib.files import dir_digest, staged_dir
from stages.lib.paths import RAW_DIR
from stages.lib.sources import SOURCES, Expected, Settings, SourceError, SourceSkipped, origin, verify
from stages.lib.store import repo_root
from stages.params import pipeline, schema


class FetchError(RuntimeError):
    pass


def fetch(
    sources: list[str],
    dest: Path = RAW_DIR,
    settings: Settings | None = None,
    expected: Expected | None = None,
    log=print,
) -> str:
    """Fill ``dest`` from the first source that delivers verified files; return its name."""
    settings = settings or Settings()
    expected = expected or Expected()
    failures = []
    for name in sources:
        started = time.monotonic()
        log(f"fetch: trying {name}")
        try:
            with staged_dir(dest) as staging:
                SOURCES[name](staging, settings, expected, log=log)
                verify(staging, expected.files)
        except SourceSkipped as exc:
            log(f"fetch: {name} skipped: {exc}")
            failures.append(f"{name}: skipped: {exc}")
        except (SourceError, OSError) as exc:
            log(f"fetch: {name} failed: {exc}")
            failures.append(f"{name}: {exc}")
        else:
            log(f"fetch: {name} verified {len(expected.files)} files into {dest} in {time.monotonic() - started:.1f}s")
            return name
    raise FetchError("no source produced verified MNIST files; tried " + "; ".join(failures))


def holds_verified(dest: Path, expected: dict[str, str]) -> bool:
    """Whether ``dest`` holds exactly the expected files, each with its sha256 (nothing else: no dataset.json)."""
    try:
        if {p.name for p in Path(dest).iterdir()} != set(expected):
            return False
        verify(dest, expected)
    except (SourceError, OSError):
        return False
    return True


def fetch_mnist(cfg: dict[str, Any]) -> int:
    expected = Expected()
    if holds_verified(RAW_DIR, expected.files):
        print(f"fetch: {RAW_DIR.as_posix()} holds verified MNIST files; nothing to fetch")
        return 0
    keys = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in cfg.items() if k in keys})
    try:
        source = fetch(cfg["sources"], RAW_DIR, settings, expected)
    except FetchError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 1
    runtime.remember("fetch", dir_digest(RAW_DIR), source=source, origin=origin(source, settings, expected))
    return 0


def fetch_own(cfg: dict[str, Any]) -> int:
    """``fetch.dataset`` idx or folder: ``fetch.path`` (relative to the repository, seen from experiment copies)."""
    try:
        root = datasets.resolve_path(cfg["path"], repo_root())
        uri = root.as_uri()
        print(f"fetch: {cfg['dataset']} data set {cfg['name']} from {uri}")
        datasets.fetch_dataset(cfg["dataset"], cfg["name"], root, RAW_DIR)
    except datasets.DatasetError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # data/raw/ could not be written (a full disk): the previous files stay
        print(f"fetch: error: {RAW_DIR.as_posix()} not written: {exc}", file=sys.stderr)
        return 1
    runtime.remember("fetch", dir_digest(RAW_DIR), source=cfg["dataset"], origin=uri)
    return 0


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    try:
        cfg = pipeline.load()["fetch"]  # every section: see stages.params.pipeline
        # The MLflow store too, as train does before training: DVC has removed no later stage's outputs yet.
        store.preflight(store.store()[0])
    except (schema.ParamsError, store.TrackingError) as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 2
    return fetch_mnist(cfg) if cfg["dataset"] == "mnist" else fetch_own(cfg)


if __name__ == "__main__":
    finish(main())
