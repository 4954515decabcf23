"""The stage processes' helpers in ``stages``: ``finish`` (exit without teardown) and ``leave_out``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
    result, marker = run(tmp_path, f"stages.finish({code})")
    assert result.returncode == code
    assert result.stdout == "buffered, no newline"  # flushed
    assert marker == "exit handler ran"
    assert "torn down" not in result.stderr


def test_finish_keeps_the_code_when_stdout_is_gone(tmp_path):
    # Like `mnist-predict … | head -1`: the reader has gone, flushing fails.
    result, marker = run(tmp_path, "import os; os.close(1); stages.finish(3)")
    assert result.returncode == 3 and marker == "exit handler ran"
    assert "Exception ignored" not in result.stderr and "torn down" not in result.stderr


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
