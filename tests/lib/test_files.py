import errno
import os

import pytest

from stages.lib.files import atomic_path, staged_dir, write_json


def test_atomic_write_has_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with staged_dir(tmp_path / "d") as staging:
            (staging / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_failed_write_leaves_target_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_staged_dir_tidies_what_a_killed_stage_left_and_keeps_a_live_ones(tmp_path):
    """A stage killed mid-write (SIGKILL, the OOM killer) leaves its staging directory; one killed between the
    two renames leaves the previous output moved aside and none in place. A live process's staging directory,
    whatever that process runs, is never touched, and while one exists nothing is put back (it may be between
    its own renames)."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has ended
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    target = tmp_path / "prepared"
    try:
        (tmp_path / f".prepared.{gone.pid}.a1b2.tmp").mkdir()
        (tmp_path / f".prepared.{live.pid}.c3d4.tmp").mkdir()
        (tmp_path / ".prepared.old").mkdir()
        (tmp_path / ".prepared.old" / "x_train.npy").write_text("the previous arrays")
        (tmp_path / f".prepared.v2.{gone.pid}.e5f6.tmp").mkdir()  # another output's (prepared.v2): not this one's
        with pytest.raises(RuntimeError), staged_dir(target):
            raise RuntimeError("a bad image")
        left = sorted(p.name for p in tmp_path.iterdir())
        kept = sorted([".prepared.old", f".prepared.v2.{gone.pid}.e5f6.tmp", f".prepared.{live.pid}.c3d4.tmp"])
        assert left == kept, left
    finally:
        live.kill()
        live.wait()
    with pytest.raises(RuntimeError), staged_dir(target):
        # No other process stages it now: the previous output is back before the block.
        assert (target / "x_train.npy").read_text() == "the previous arrays"
        raise RuntimeError("a bad image")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".prepared.v2.{gone.pid}.e5f6.tmp", "prepared"], left


def test_staged_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "stale").write_text("x")
    with staged_dir(target) as staging:
        (staging / "fresh").write_text("y")
    assert [p.name for p in target.iterdir()] == ["fresh"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


# --- durability: what a power cut may lose is the new file, never the old one nor half of the new ---------------


@pytest.fixture
def disk_events(monkeypatch):
    """Every ``os.fsync`` (as the path its descriptor is open on) and ``os.replace``, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _replace_index(events, dst):
    return next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(dst))


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, disk_events):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    at = _replace_index(disk_events, target)
    tmp = disk_events[at][1]
    assert ("fsync", tmp) in disk_events[:at], disk_events  # the bytes are on disk before the name points at them
    assert ("fsync", str(tmp_path)) in disk_events[at + 1 :], disk_events  # and the new name itself, after
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_staged_dir_fsyncs_every_file_before_the_swap_and_the_directories_after(tmp_path, disk_events):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "stale").write_text("x")
    with staged_dir(target) as staging:
        (staging / "a").write_text("1")
        (staging / "sub").mkdir()
        (staging / "sub" / "b").write_text("2")
        (staging / "link").symlink_to("a")  # not followed, not fsynced twice
    at = _replace_index(disk_events, target)
    assert disk_events[at][1] == str(staging)
    before, after = disk_events[:at], disk_events[at + 1 :]
    for path in (staging / "a", staging / "sub" / "b", staging / "sub", staging):  # entries durable before the rename
        assert ("fsync", str(path)) in before, (path, disk_events)
    assert ("fsync", str(tmp_path)) in after, disk_events  # the swap itself
    assert sorted(p.name for p in target.iterdir()) == ["a", "link", "sub"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_staged_dir_failure_fsyncs_and_swaps_nothing(tmp_path, disk_events):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "old").write_text("x")
    with pytest.raises(RuntimeError), staged_dir(target) as staging:
        (staging / "half").write_text("y")
        raise RuntimeError("boom")
    assert disk_events == []
    assert [p.name for p in target.iterdir()] == ["old"] and [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_a_filesystem_that_cannot_fsync_still_writes_and_a_failing_disk_fails(tmp_path, monkeypatch):
    def cannot(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", cannot)
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").exists()

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        write_json(tmp_path / "m.json", {"a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
