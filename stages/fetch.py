"""DVC stage ``fetch``: the four raw MNIST IDX files in ``data/raw/``, verified.

Sources are tried in the order of ``fetch.sources``; the first whose files
all verify replaces ``data/raw/``. A failing source leaves nothing behind.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stages import finish
from stages.lib import runtime
from stages.lib.files import dir_digest, staged_dir
from stages.lib.paths import RAW_DIR
from stages.lib.sources import SOURCES, Expected, Settings, SourceError, SourceSkipped, origin, verify
from stages.params import fetch as fetch_params
from stages.params import schema


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


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs as they happen
    try:
        cfg = schema.load(fetch_params)["fetch"]
    except schema.ParamsError as exc:
        print(exc, file=sys.stderr)
        return 2
    settings = Settings(**{k: v for k, v in cfg.items() if k != "sources"})
    try:
        source = fetch(cfg["sources"], RAW_DIR, settings)
    except FetchError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 1
    runtime.remember("fetch", dir_digest(RAW_DIR), source=source, origin=origin(source, settings, Expected()))
    return 0


if __name__ == "__main__":
    finish(main())
