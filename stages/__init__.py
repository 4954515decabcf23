"""DVC pipeline stages for MNIST: fetch, preprocess, train, evaluate, publish; and predict.

Each stage is a module runnable as ``python -m stages.<name>``; its ``main()``
only reads params and calls the plain functions that hold the logic.
"""

import atexit
import contextlib
import importlib.util
import os
import sys
from typing import NoReturn

# A Python without the project's packages (say, `.venv/bin/dvc repro` run
# without activating the environment, so DVC's `python` is the system one)
# gets one line saying what to do instead of a ModuleNotFoundError traceback.
_REQUIRED = {"numpy": "numpy", "yaml": "pyyaml", "pandas": "pandas", "sklearn": "scikit-learn"}
_missing = [package for module, package in _REQUIRED.items() if importlib.util.find_spec(module) is None]
if _missing:
    raise SystemExit(
        f"stages: {sys.executable} lacks the project's packages ({', '.join(_missing)}): "
        "activate the project's environment first (`source .venv/bin/activate`; `make install` creates it)"
    )


# Python's own teardown of TensorFlow's or MLflow's thousands of modules takes
# about a second at every exit, a second that DVC waits for before the next stage.
_exit_code: int | None = None


def _skip_teardown() -> None:
    # Registered on the package's first import, before TensorFlow or MLflow are
    # imported, so it runs after every exit handler they register (last in, first out).
    if _exit_code is not None:
        for stream in (sys.stdout, sys.stderr):
            # A closed pipe (`mnist-predict … | head -1`): nothing more can be said there.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(_exit_code)


atexit.register(_skip_teardown)


def leave_out(*packages: str) -> None:
    """Make importing ``packages`` fail in this process, as if they were not installed.

    For a stage that never uses them but whose libraries import them when they
    are there: Keras imports scikit-learn and matplotlib for optional extras
    (its scikit-learn wrappers, an image-gallery plot) whenever TensorFlow is
    imported, about a third of that import's seconds. Call it before those
    imports; a package already imported stays.
    """
    for name in packages:
        sys.modules.setdefault(name, None)  # None in sys.modules: `import name` raises ModuleNotFoundError


def finish(code: int) -> NoReturn:
    """End a stage's process with ``code``, like ``sys.exit``, minus Python's module teardown.

    The exit handlers still run (threads joined, logs flushed), and every output
    is complete by then: files are written to a temporary path and renamed.
    """
    global _exit_code
    _exit_code = code
    sys.exit(code)
