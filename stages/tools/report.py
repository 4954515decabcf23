"""The pull-request report: what a change did to the metrics, params, curves and confusion matrix.

    python -m stages.tools.report [--base REV] [--out reports/pr]

Compares ``--head`` (default ``HEAD``) with ``--base`` (default: the merge
base with ``main``, or ``HEAD~1`` on ``main`` itself), both as committed: the
results the pull request brings, not this machine's re-run of them (that is
``make reproduce``'s check). The tables
are DVC's own (``dvc metrics diff --md``, ``dvc params diff --md``); the
figures are the training curves of both revisions drawn together and each
revision's confusion matrix as the pipeline drew it. Writes ``report.md``
(for the pull-request comment) and ``summary.md`` (tables only, for the job
summary, where images cannot be shown). Runs offline; changes nothing else.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stages.lib import git, processes
from stages.lib.paths import EVALUATE_DIR, HISTORY_PATH, PR_REPORT_DIR

REPORT_FILES = ("report.md", "summary.md", "curves.png", "confusion_base.png", "confusion_head.png")


class ReportError(RuntimeError):
    pass


def run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReportError(f"{' '.join(args)} failed: {processes.error_line(result.stderr, result.returncode)}")
    return result.stdout


def default_base() -> str:
    """The merge base with ``main`` (``origin/main`` in a CI checkout); ``HEAD~1`` when that is HEAD itself."""
    head = run(["git", "rev-parse", "HEAD"]).strip()
    for branch in ["origin/main", "main"]:
        try:
            base = run(["git", "merge-base", "HEAD", branch]).strip()
        except ReportError:
            continue
        if base != head:
            return base
    return "HEAD~1"


def at_revision(rev: str, path: Path) -> bytes | None:
    """The committed bytes of ``path`` at ``rev``, or None when it is not there."""
    try:
        return git.committed(rev, path)
    except git.NotCommitted:
        return None


def table(kind: str, base: str, head: str) -> str:
    """DVC's own markdown diff of ``kind`` (metrics or params) between two commits."""
    text = run(["dvc", kind, "diff", base, head, "--md"]).strip()
    return text if text.count("\n") >= 2 else f"No {kind} changed."


def write_report(base: str, head: str = "HEAD", out: Path = PR_REPORT_DIR) -> Path:
    """The report of ``head`` against ``base``, both as committed (not as reproduced on this machine:
    another CPU moves the last digits; ``make reproduce`` checks that separately)."""
    labels = {rev: run(["git", "rev-parse", "--short", rev]).strip() for rev in (base, head)}
    metrics, params = table("metrics", base, head), table("params", base, head)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        write_files(staging, base, head, labels, metrics, params)
        # The report's own files only (--out may hold others): this run's replace the last run's, and one the
        # last run wrote but this one does not (a confusion matrix a revision lacks) goes, never left stale.
        for name in REPORT_FILES:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.md"


def write_files(out: Path, base: str, head: str, labels: dict[str, str], metrics: str, params: str) -> None:
    """The report's files in ``out``: ``report.md`` (the PR comment), ``summary.md`` (the job summary) and
    the pictures they show."""
    import pandas as pd  # noqa: PLC0415

    from stages.lib import plots  # noqa: PLC0415

    histories = {}
    for rev, name in [(base, "base"), (head, "this change")]:
        committed = at_revision(rev, HISTORY_PATH)
        if committed is not None:
            histories[f"{name} {labels[rev]}"] = pd.read_csv(io.BytesIO(committed))
    images = []
    if histories:
        plots.history_curves(histories, out / "curves.png")
        images.append("![Training curves](curves.png)")
    confusion = EVALUATE_DIR / "confusion_matrix.png"
    for rev, name in [(base, "base"), (head, "this change")]:
        png = at_revision(rev, confusion)
        if png is not None:
            file = f"confusion_{'base' if rev == base else 'head'}.png"
            (out / file).write_bytes(png)
            images.append(f"{name.capitalize()} ({labels[rev]}):\n\n![Confusion matrix, {name}]({file})")

    title = f"# MNIST pipeline: {labels[head]} against {labels[base]}"
    tables = f"## Metrics\n\n{metrics}\n\n## Params changed\n\n{params}\n"
    (out / "summary.md").write_text(f"{title}\n\n{tables}")
    body = "\n\n".join(
        [title, tables, "## Loss and accuracy per epoch", *images[:1], "## Confusion matrix (test set)", *images[1:]]
    )
    (out / "report.md").write_text(body + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision to compare with (default: merge base with main, or HEAD~1)")
    parser.add_argument("--head", default="HEAD", help="the revision to report on (default: HEAD)")
    parser.add_argument("--out", type=Path, default=PR_REPORT_DIR)
    args = parser.parse_args(argv)
    try:
        base = args.base or default_base()
        path = write_report(base, args.head, args.out)
    except (ReportError, FileNotFoundError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path} (against {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
