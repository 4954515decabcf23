"""Compare freshly reproduced metrics with the ones committed at HEAD.

    python -m stages.tools.metrics_check [--tolerance 0.002] [--loss-rtol 0.10]            (make reproduce)
    python -m stages.tools.metrics_check --verdict [--tolerance 0.002] [--loss-rtol 0.10]  (the end of make repro)

Accuracy metrics may differ by ``--tolerance`` (absolute); other metrics, such
as losses, by ``--loss-rtol`` (relative). A committed metric that is missing
now fails; a new metric is shown but does not. Exit status 1 on drift, with
each drifting metric named; 2 when a file cannot be read. With ``--verdict``
it only tells: one line saying whether the workspace reproduced HEAD's
metrics exactly, within tolerance (and why a different CPU may round
differently, and what to commit), or not, always with exit status 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.lib import git
from stages.lib.paths import METRICS_PATH as _METRICS_PATH

METRICS_PATH = _METRICS_PATH.as_posix()  # also a git path: `git show HEAD:reports/metrics.json`


class MetricsError(ValueError):
    """A metrics file is missing or is not a JSON object of numbers."""


@dataclass(frozen=True)
class Row:
    metric: str
    committed: float | None
    current: float | None
    allowed: str
    ok: bool

    @property
    def change(self) -> str:
        if self.committed is None or self.current is None:
            return "-"
        return f"{self.current - self.committed:+.6f}"

    @property
    def status(self) -> str:
        if self.committed is None:
            return "new"
        if self.current is None:
            return "MISSING"
        return "ok" if self.ok else "DRIFT"


def parse(text: str, source: str) -> dict[str, float]:
    """A flat JSON object of numbers (nested objects are flattened with dots)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MetricsError(f"{source}: expected a JSON object of metrics")
    flat: dict[str, float] = {}

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                flat[name] = float(value)
            else:
                raise MetricsError(f"{source}: metric {name} is not a finite number ({value!r})")

    walk(data, "")
    return flat


def compare(
    committed: dict[str, float], current: dict[str, float], tolerance: float = 0.002, loss_rtol: float = 0.10
) -> list[Row]:
    rows = []
    for name in sorted(set(committed) | set(current)):
        old, new = committed.get(name), current.get(name)
        if "accuracy" in name:
            allowed = f"±{tolerance:g}"
            ok = old is not None and new is not None and abs(new - old) <= tolerance + 1e-12
        else:
            allowed = f"±{loss_rtol:.0%}"
            ok = old is not None and new is not None and abs(new - old) <= loss_rtol * abs(old) + 1e-12
        rows.append(Row(name, old, new, allowed, ok or old is None))
    return rows


def table(rows: list[Row], path: str = METRICS_PATH) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.6g}"  # noqa: E731
    cells = [["Path", "Metric", "HEAD", "workspace", "Change", "Allowed", "Status"]]
    cells += [[path, r.metric, fmt(r.committed), fmt(r.current), r.change, r.allowed, r.status] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's name, as lscpu shows it (``AMD EPYC``, ``Intel Xeon ...``), or ``this CPU``."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "this CPU"


def verdict(rows: list[Row], rev: str = "HEAD", cpu: str | None = None) -> str:
    """One paragraph for a person who just ran the pipeline: exact, within tolerance (and why), or drifted."""
    changed = [r for r in rows if r.committed != r.current]
    if not changed:
        return f"make repro: reproduced exactly: every metric equals the one committed at {rev}."
    listed = "; ".join(f"{r.metric} {_fmt(r.committed)} -> {_fmt(r.current)}" for r in changed)
    bad = [r for r in rows if r.status in ("DRIFT", "MISSING")]
    if not bad:
        return (
            f"make repro: reproduced within tolerance on this machine ({listed}). "
            f"{cpu or cpu_model()} rounds differently from the machine that committed the metrics, so training "
            "ends a few test images apart: expected. Leave dvc.lock and reports/ modified (whatever DVC's "
            "`git add dvc.lock` hint says) unless you changed something yourself: docs/reproducibility.md says why."
        )
    drifted = ", ".join(f"{r.metric} ({r.status.lower()}, allowed {r.allowed})" for r in bad)
    return (
        f"make repro: WARNING: drifted beyond tolerance from {rev}: {drifted}; {listed}. "
        "If you changed code, params or data on purpose this is your new result (commit dvc.lock and reports/); "
        "otherwise something other than rounding changed it: compare with `dvc params diff` and `git status`."
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def committed_text(path: str = METRICS_PATH, rev: str = "HEAD") -> str:
    try:
        return git.committed(rev, path).decode()
    except git.NotCommitted as exc:
        raise MetricsError(f"{rev}:{path}: not committed ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fail when reproduced metrics drift from the committed ones.")
    parser.add_argument("--tolerance", type=float, default=0.002, help="absolute, for accuracy metrics")
    parser.add_argument("--loss-rtol", type=float, default=0.10, help="relative, for the other metrics")
    parser.add_argument("--rev", default="HEAD", help="git revision holding the committed metrics")
    parser.add_argument("--path", default=METRICS_PATH)
    parser.add_argument("--verdict", action="store_true", help="print one verdict line and exit 0 (make repro)")
    args = parser.parse_args(argv)
    try:
        committed = parse(committed_text(args.path, args.rev), f"{args.rev}:{args.path}")
        try:
            current = parse(Path(args.path).read_text(), args.path)
        except FileNotFoundError:
            raise MetricsError(f"{args.path}: missing (did the pipeline run?)") from None
    except MetricsError as exc:
        print(f"metrics: error: {exc}", file=sys.stderr)
        return 0 if args.verdict else 2
    rows = compare(committed, current, args.tolerance, args.loss_rtol)
    if args.verdict:
        print(verdict(rows, args.rev))
        return 0
    print(table(rows, args.path))
    bad = [r for r in rows if r.status in ("DRIFT", "MISSING")]
    for r in bad:
        if r.status == "MISSING":
            print(f"metrics: {r.metric} is committed at {args.rev} but missing from {args.path}", file=sys.stderr)
        else:
            print(
                f"metrics: {r.metric} drifted: {r.committed:.6g} at {args.rev}, {r.current:.6g} now "
                f"(change {r.change}, allowed {r.allowed})",
                file=sys.stderr,
            )
    if bad:
        return 1
    print(f"metrics: reproduced within tolerance of {args.rev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
