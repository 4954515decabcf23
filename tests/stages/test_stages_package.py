"""The stage processes' helpers in ``stages``: ``finish`` (exit without teardown) and ``leave_out``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import atexit, sys
import stages

class Module:
    def __del__(self):  # runs when Python tears the module down at exit
        print("torn down", file=sys.stderr, flush=True)

kept = Module()
atexit.register(lambda: open(sys.argv[1], "w").write("exit handler ran"))  # registered after stages
sys.stdout.write("buffered, no newline")
{end}
"""


def run(tmp_path, end):
    marker = tmp_path / "marker"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(end=end), str(marker)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # stdout buffered, as under DVC
        timeout=60,
    )
    return result, marker.read_text() if marker.exists() else None


@pytest.mark.parametrize("code", [0, 3])
def test_finish_exits_with_the_code_after_the_exit_handlers_and_skips_the_teardown(tmp_path, code):
    # What C code printed into its own (buffered) stdout comes out too.
    result, marker = run(tmp_path, f"import ctypes; ctypes.CDLL(None).printf(b' and C'); stages.finish({code})")
    assert result.returncode == code
    assert " and C" in result.stdout and result.stdout.replace(" and C", "") == "buffered, no newline"  # both
    assert marker == "exit handler ran"
    assert "torn down" not in result.stderr


def test_finish_keeps_the_code_when_the_reader_has_gone(tmp_path):
    # Like `mnist-predict … | head -1`: stdout is a pipe nobody reads any more.
    gone = "import os; r, w = os.pipe(); os.close(r); os.dup2(w, 1); stages.finish(3)"
    result, marker = run(tmp_path, gone)
    assert result.returncode == 3 and marker == "exit handler ran"
    assert result.stderr == ""  # no "Exception ignored", no teardown


def test_finish_fails_when_output_is_lost(tmp_path):
    # A full disk (/dev/full): the buffered output cannot be written.
    full = "import os; os.dup2(os.open('/dev/full', os.O_WRONLY), 1); stages.finish(0)"
    result, marker = run(tmp_path, full)
    assert result.returncode == 120 and marker == "exit handler ran"
    assert "stages: could not write all output: [Errno 28] No space left on device" in result.stderr


def test_finish_is_a_plain_exit_when_an_exit_handler_came_first(tmp_path):
    # A handler registered before stages (say, a coverage tool's) would run after the fast exit: never.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import atexit; atexit.register(print, 'first handler ran')\n" + SCRIPT.format(end="stages.finish(3)"),
            str(tmp_path / "marker"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stdout.endswith("first handler ran\n") and "torn down" in result.stderr


def test_the_teardown_it_skips_is_there_without_it(tmp_path):
    result, marker = run(tmp_path, "sys.exit(3)")
    assert result.returncode == 3 and marker == "exit handler ran"
    assert "torn down" in result.stderr


def test_leave_out_makes_imports_fail_but_keeps_what_is_imported():
    script = (
        "import json, stages\n"
        "stages.leave_out('json', 'csv')\n"
        "try:\n"
        "    import csv\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('csv blocked:', exc)\n"
        "import json\n"
        "print('json', json.dumps([1]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["csv blocked: import of csv halted; None in sys.modules", "json [1]"]
