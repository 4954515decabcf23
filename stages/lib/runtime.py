"""Facts about how the current outputs were produced that must stay out of DVC's hashes.

Wall-clock times and which download source answered differ from run to run
while the outputs stay byte-identical; recorded in DVC's outputs they would
change ``dvc.lock`` every time. They are kept in the git-ignored
``.runtime/`` instead, each record tied to the hash of the output it
describes, and read by the ``publish`` stage for the MLflow run. A record that
is missing or describes other bytes (DVC restored the outputs from its cache)
reads as None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.lib.files import write_json
from stages.lib.paths import RUNTIME_DIR


def remember(name: str, of: str, runtime_dir: Path = RUNTIME_DIR, **facts: Any) -> None:
    """Record ``facts`` about the output whose hash is ``of``."""
    write_json(runtime_dir / f"{name}.json", {"of": of, **facts})


def recall(name: str, of: str, runtime_dir: Path = RUNTIME_DIR) -> dict[str, Any] | None:
    """The facts recorded under ``name`` for the output whose hash is ``of``, or None."""
    try:
        record = json.loads((runtime_dir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("of") != of:
        return None
    return record
