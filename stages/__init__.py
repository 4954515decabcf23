"""DVC pipeline stages for MNIST: fetch, preprocess, train, evaluate, publish; and predict.

Each stage is a module runnable as ``python -m stages.<name>``; its ``main()``
only reads params and calls the plain functions that hold the logic.
"""

import importlib.util
import sys

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
