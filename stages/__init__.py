"""The MNIST pipeline: the five DVC stages at the top (fetch, preprocess, train, evaluate, publish).

Each stage is a module runnable as ``python -m stages.<name>``; its ``main()``
only reads its params and calls the plain functions that hold the logic, in
``stages.lib``. ``stages.params`` holds the params' rules, ``stages.serving``
the served model's code, ``stages.tools`` what a person runs (predict, demo,
tune, server, report, the CI checks). This package itself holds only the
process helpers every entry point uses (``finish``, ``leave_out``).
"""

import atexit
import importlib.util
import os
import sys
from typing import NoReturn

# A Python without the project's packages (say, `.venv/bin/dvc repro` run
# without activating the environment, so DVC's `python` is the system one)
# gets one line saying what to do instead of a ModuleNotFoundError traceback.
_REQUIRED = {"numpy": "numpy", "yaml": "pyyaml", "pandas": "pandas"}  # also in the inference-only environment
_missing = [package for module, package in _REQUIRED.items() if importlib.util.find_spec(module) is None]
if _missing:
    raise SystemExit(
        f"stages: error: {sys.executable} lacks the project's packages ({', '.join(_missing)}): "
        "activate the project's environment first (`source .venv/bin/activate`; `make install` creates it)"
    )


# Python's own teardown of TensorFlow's or MLflow's thousands of modules takes
# about a second at every exit, a second that DVC waits for before the next stage.
_exit_code: int | None = None


def _skip_teardown() -> None:
    # Registered on the package's first import, before TensorFlow or MLflow are
    # imported, so it runs after every exit handler they register (last in, first out).
    if _exit_code is None:
        return
    code = _exit_code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader has gone (`mnist-predict … | head -1`), or closed
            pass
        except OSError as exc:  # say, a full disk: lost output is a failure, as Python itself reports it
            os.write(2, f"stages: could not write all output: {exc}\n".encode())
            code = 120
    os._exit(code)


# Only when no exit handler came before (one of a coverage tool or a site
# customisation, say): those would run after this one, so never. Then `finish`
# is a plain `sys.exit`.
if getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
    atexit.register(_skip_teardown)


# What Keras imports with TensorFlow for optional extras that only `evaluate`
# (figures, scikit-learn's metrics) uses: 1.3 s of a 4.3 s import.
KERAS_EXTRAS = ("sklearn", "matplotlib")


def leave_out(*packages: str) -> None:
    """Make importing ``packages`` fail in this process, as if they were not installed.

    For a stage that never uses them but whose libraries import them when they
    are there: Keras imports scikit-learn and matplotlib for optional extras
    (its scikit-learn wrappers, an image-gallery plot), about a third of the
    seconds that importing TensorFlow with Keras takes. Call it before those
    imports; a package already imported stays. Their metadata stays too: a
    library that checks ``importlib.metadata`` and then imports would fail.
    It holds for the rest of the process: call it from a ``__main__`` block or
    a console-script entry point, never from code other code imports and calls.
    """
    for name in packages:
        sys.modules.setdefault(name, None)  # None in sys.modules: `import name` raises ModuleNotFoundError


def finish(code: int) -> NoReturn:
    """End the process with ``code``, like ``sys.exit``, minus Python's module teardown.

    The exit handlers still run (threads joined, logs flushed) and the standard
    streams are flushed; what is skipped is the clean-up of objects still alive
    (``__del__``, unclosed files), so every output must be complete before:
    the stages write files to a temporary path and rename them into place.
    Ends the process even if something catches the ``SystemExit``: call it
    from a ``__main__`` block or a console-script entry point only.
    """
    global _exit_code
    _exit_code = code
    sys.exit(code)
