"""Pids written down by a publisher or the team server: alive, reused, or behind a foreign /proc."""

import http.server
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stages.lib import processes, tracking
from stages.tools import server

OWN_PROC = pytest.mark.skipif(not processes.own_proc(), reason="needs this PID namespace's /proc to see zombies")


def test_a_proc_of_another_pid_namespace_is_not_trusted(tmp_path):
    """A sandbox may keep the host's /proc, where our pids name other processes: liveness then
    comes from kill(pid, 0) alone, and a live pid counts as a publisher rather than as gone."""
    sleeper = subprocess.Popen(["sleep", "30"])
    ours, foreign = tmp_path / "ours", tmp_path / "foreign"
    (ours / str(sleeper.pid)).mkdir(parents=True)
    (ours / str(sleeper.pid) / "cmdline").write_bytes(b"sleep\x0030\x00")
    (ours / "self").symlink_to(str(os.getpid()))
    (foreign / "1").mkdir(parents=True)
    (foreign / "self").symlink_to("1")
    try:
        assert processes.own_proc(ours) and not processes.own_proc(foreign)
        assert not tracking.process_alive(sleeper.pid, ours)  # our namespace: not a publish process
        assert tracking.process_alive(sleeper.pid, foreign)  # a foreign /proc: alive is all we know
        (ours / str(sleeper.pid) / "cmdline").write_bytes(b"python\x00-m\x00stages.publish\x00")
        assert tracking.process_alive(sleeper.pid, ours)
        # Being exec'd (CI caught one right after Popen returned): the command line is empty for a moment.
        (ours / str(sleeper.pid) / "cmdline").write_bytes(b"")
        assert processes.runs(sleeper.pid, b"stages.publish", ours) is None
        assert tracking.process_alive(sleeper.pid, ours)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not tracking.process_alive(sleeper.pid, ours)
    assert not tracking.process_alive(sleeper.pid, foreign)


@OWN_PROC
def test_the_server_s_pid_behind_a_foreign_proc_counts_when_its_url_answers_as_mlflow(monkeypatch):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    sleeper = subprocess.Popen(["sleep", "30"])
    deadline = time.monotonic() + 10
    # Until it has exec'd, its command line is empty and says nothing: wait for "sleep" (a race seen under load).
    while b"sleep" not in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert not server.is_mlflow(sleeper.pid, url)  # our /proc: sleep is not mlflow, whatever answers
        monkeypatch.setattr(processes, "own_proc", lambda proc=processes.PROC: False)
        assert server.is_mlflow(sleeper.pid, url)
        assert not server.is_mlflow(sleeper.pid, None)  # nothing to ask: not stopped
        httpd.shutdown()
        httpd.server_close()
        assert not server.is_mlflow(sleeper.pid, url)  # nothing answers there: a reused pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not server.is_mlflow(sleeper.pid, url)


@OWN_PROC
def test_a_group_whose_processes_exited_unreaped_is_not_running(tmp_path):
    """An orphaned server's exited processes wait for init to reap them: killpg(pgid, 0) still finds the
    zombies (stopping an auth server waited out the full 20 s for them), group_running does not."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert processes.group_running(child.pid)
        os.kill(child.pid, 15)
        for _ in range(100):  # exited, but not waited for: a zombie
            if (processes.PROC / str(child.pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            threading.Event().wait(0.02)
        os.killpg(child.pid, 0)  # what the old check saw: "still there"
        assert not processes.group_running(child.pid)
        # Behind a foreign /proc, only killpg can tell: the zombie counts as running.
        foreign = tmp_path / "foreign"
        (foreign / "1").mkdir(parents=True)
        (foreign / "self").symlink_to("1")
        assert processes.group_running(child.pid, foreign)
    finally:
        child.kill()
        child.wait()
    assert not processes.group_running(child.pid)


@OWN_PROC
def test_stopping_a_server_group_returns_once_its_processes_have_exited(monkeypatch):
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    monkeypatch.setattr(server, "is_mlflow", lambda pid, url=None: True)
    started = time.monotonic()
    try:
        server.stop_process_group(child.pid, timeout_s=20)
        assert time.monotonic() - started < 5  # not the 20 s the zombie used to cost
        assert not processes.group_running(child.pid)
    finally:
        child.kill()
        child.wait()


def test_programs_are_this_environment_s_whatever_path_says(monkeypatch, tmp_path):
    monkeypatch.setattr(processes.sys, "executable", str(tmp_path / "python"))
    (tmp_path / "mlflow").write_text("")
    assert processes.program("mlflow") == str(tmp_path / "mlflow")
    assert processes.program("dvc") == "dvc"  # not installed here: left for PATH to find


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        (  # DVC: the reason before an excerpt of the file
            "'./dvc.yaml' validation failed.\n\nextra keys not allowed, in stages -> a -> bogus_key, line 3, column 5\n"
            "  3 │   cmd: echo\n  4 │   bogus_key: 1\n",
            "'./dvc.yaml' validation failed. extra keys not allowed, in stages -> a -> bogus_key, line 3, column 5",
        ),
        (  # DVC: an error line, then its footer
            "ERROR: unexpected error - [Errno 13] Permission denied: '.dvc/tmp'\n\nHaving any troubles? Hit us up at "
            "https://dvc.org/support, we are always happy to help!\n",
            "ERROR: unexpected error - [Errno 13] Permission denied: '.dvc/tmp'",
        ),
        ("fatal: invalid object name 'nosuchrev'.\n", "fatal: invalid object name 'nosuchrev'."),
        ("", "exit status 128"),
    ],
)
def test_another_programs_error_in_one_line(stderr, line):
    assert processes.error_line(stderr, 128) == line
