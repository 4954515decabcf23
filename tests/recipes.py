"""The Makefile's recipes (``make cnn SEED=2`` and the others), read as their ``dvc exp run`` settings.

One home for the tests and benchmarks that train or check a recipe as the
Makefile defines it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exp_run_command(recipe: str, seed: int | None = None, root: Path = ROOT) -> list[str]:
    """``make <recipe>``'s ``dvc exp run`` command as its arguments, printed by ``make -n`` and not run.

    The install stamp stays the Makefile's own: make brings a makefile up to
    date even under ``-n``, so a stamp that is a makefile (``STAMP=Makefile``)
    would run the install rule for real. ``-o install`` leaves the install
    rule out of what is printed.
    """
    extra = [] if seed is None else [f"SEED={seed}"]
    out = subprocess.run(
        ["make", "-s", "-n", "-o", "install", recipe, *extra], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    (command,) = [line for line in out.splitlines() if line.startswith("dvc exp run")]
    return shlex.split(command)


def recipe_settings(recipe: str) -> list[str]:
    """The recipe's ``key=value`` settings (its ``-S`` flags) without the seed, in the Makefile's order."""
    args = exp_run_command(recipe)[5:]  # after `dvc exp run -n <name>`
    return [a for a in args if a != "-S" and not a.startswith("train.seed=")]
