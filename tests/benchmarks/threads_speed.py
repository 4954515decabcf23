"""Training threads follow the cores a process may use: a CNN recipe's epochs on 1 core against all of them.

    python tests/benchmarks/threads_speed.py [--recipe cnn-fast] [--epochs 2] [--seed 1]

Needs the prepared arrays (``make repro``). Runs ``recipe_speed.py``'s training
(the train stage's own code, ``train.threads: auto``) twice, alternating in
one run: under ``taskset -c 0`` (one core: ``auto`` gives 1 thread) and with
every core this process may use. Prints the seconds per epoch of each and
their ratio, as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def epoch_seconds(prefix: list[str], recipe: str, epochs: int, seed: int) -> tuple[float, float]:
    """(median seconds per epoch after the first, test accuracy) of the recipe shortened to ``epochs``."""
    from tests.recipes import recipe_settings

    flags = [*recipe_settings(recipe), f"train.epochs={epochs}"]
    command = [*prefix, sys.executable, str(ROOT / "tests" / "benchmarks" / "recipe_speed.py")]
    command += ["--worker", json.dumps(flags), "--seeds", str(seed)]
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout
    run = json.loads(out.strip().splitlines()[-1])
    later = sorted(run["epoch_seconds"][1:] or run["epoch_seconds"])  # the first epoch includes tracing
    return later[len(later) // 2], run["test_accuracy"][-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="cnn-fast")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from stages.serving import cores

    one, one_accuracy = epoch_seconds(["taskset", "-c", "0"], args.recipe, args.epochs, args.seed)
    every, every_accuracy = epoch_seconds([], args.recipe, args.epochs, args.seed)
    print(
        json.dumps(
            {
                "recipe": args.recipe,
                "epochs": args.epochs,
                "cores": cores.usable(),
                "epoch_s_1_core": round(one, 2),
                f"epoch_s_{cores.usable()}_cores": round(every, 2),
                "speed_up": round(one / every, 2),
                "test_accuracy": {"1_core": one_accuracy, "all_cores": every_accuracy},
            }
        )
    )


if __name__ == "__main__":
    main()
