"""The ``evaluate`` section: batch size and the size of the reports.

Only reports depend on it, never the trained model: ``effective`` keeps nothing.
"""

from __future__ import annotations

from typing import Any

from stages.params.schema import Schema, integer

NAME = "evaluate"

SCHEMA: Schema = {
    "batch_size": integer(1),
    "top_confusions": integer(1),
    "gallery_size": integer(1),
    "sample_size": integer(1),
}


def check(cfg: dict[str, Any]) -> None:
    pass


def effective(cfg: dict[str, Any]) -> dict[str, Any]:
    return {}
