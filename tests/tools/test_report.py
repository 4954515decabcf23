"""stages.tools.report's files: its own replaced whole, a stale one of its own removed, nothing else touched.
(The report itself, from two commits through dvc and git: tests/system/test_ci.py.)"""

from __future__ import annotations

from stages.tools import report


def test_a_report_replaces_its_own_files_only(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    (out / "confusion_base.png").write_bytes(b"an earlier base's matrix")  # this base has none
    (out / "report.md").write_text("the last report")

    def files(staging, base, head, labels, metrics, params):
        (staging / "report.md").write_text(f"{labels[head]} against {labels[base]}")
        (staging / "summary.md").write_text(metrics)

    monkeypatch.setattr(report, "run", lambda args: {"HEAD~1": "abc1234\n", "HEAD": "def5678\n"}[args[-1]])
    monkeypatch.setattr(report, "table", lambda kind, base, head: f"No {kind} changed.")
    monkeypatch.setattr(report, "write_files", files)
    assert report.write_report("HEAD~1", out=out) == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md", "summary.md"]
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "report.md").read_text() == "def5678 against abc1234"
