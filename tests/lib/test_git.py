"""stages.lib.git: a path as committed, or git's own one line saying why not."""

from __future__ import annotations

import subprocess

import pytest

from stages.lib import git


def test_committed_bytes_and_gits_line_when_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a.bin").write_bytes(b"\x00\x01committed")
    run("add", ".")
    run("commit", "-qm", "one")
    (tmp_path / "reports" / "a.bin").write_bytes(b"changed since")
    assert git.committed("HEAD", tmp_path.joinpath("reports", "a.bin").relative_to(tmp_path)) == b"\x00\x01committed"
    with pytest.raises(git.NotCommitted, match=r"^fatal: path 'reports/b.bin' does not exist in 'HEAD'$"):
        git.committed("HEAD", "reports/b.bin")
    with pytest.raises(git.NotCommitted, match=r"^fatal: invalid object name 'nosuchrev'\.$"):
        git.committed("nosuchrev", "reports/a.bin")
