"""How long `dvc exp run` takes end to end, at two revisions side by side, and where the time goes.

    python tests/benchmarks/exp_run_speed.py [--base REV] [--head REV] [--seeds 2 3 4] [--own-venvs]

Clones the repository twice (BASE, default HEAD~1, and HEAD; committed
states only) into a temporary directory, both sharing this checkout's DVC
cache, and runs `dvc repro` once in each (the data and the first MLflow run).
Then, for each seed, `dvc exp run -S train.seed=N` in one clone and then the
other, the order swapping every seed, so that a slow spell of the machine
does not land on one side only. Each clone logs to its own `mlflow.db`,
as a user's first experiments would. Prints one line per run with the
seconds of each stage (from DVC's own output, so a stage's time includes
starting and ending its process), then one JSON line with the medians.
Both clones use this environment's packages, unless `--own-venvs`: then
each clone installs its own from its own `requirements.lock` (`make
install`, a few minutes each), which is what a change of the lock needs.
Needs `make install` and, for speed, the data in this checkout's DVC cache
(`make repro`); the clones fetch it otherwise. The experiments' models and
reports are added to that cache too (`dvc gc` removes them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = re.compile(r"^Running stage '(\w+)'")


def run(args: list[str], cwd: Path, bin_dir: Path) -> list[tuple[float, str]]:
    """Run a command as a user would (``bin_dir``, an environment's, on PATH); its output lines, timed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic() - started, line.rstrip()) for line in proc.stdout]
    lines.append((time.monotonic() - started, "<exit>"))
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n" + "\n".join(line for _, line in lines[-20:]))
    return lines


def breakdown(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per stage (from 'Running stage' to the next stage or the end) and the total."""
    marks = [(t, m.group(1)) for t, line in lines if (m := STAGE.match(line))]
    total = lines[-1][0]
    seconds = {"dvc_before_first_stage": marks[0][0] if marks else total}
    for (t, stage), (t_next, _) in zip(marks, [*marks[1:], (total, "")], strict=True):
        seconds[stage] = t_next - t
    seconds["total"] = total
    return {k: round(v, 2) for k, v in seconds.items()}


def clone(rev: str, path: Path, own_venv: bool) -> Path:
    """A clone at ``rev`` sharing this checkout's DVC cache, set up by `dvc repro`; its environment's bin."""
    here = Path(sys.executable).parent
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", rev], check=True)
    for key, value in [("user.name", "benchmark"), ("user.email", "benchmark@example.com")]:
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    if own_venv:
        subprocess.run(["make", "-s", "install"], cwd=path, check=True, stdout=subprocess.DEVNULL)
    bin_dir = path / ".venv" / "bin" if own_venv else here
    cache = subprocess.run(
        ["dvc", "cache", "dir"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": f"{here}:{os.environ['PATH']}"},
    ).stdout.strip()
    run(["dvc", "cache", "dir", "--local", cache], path, bin_dir)
    run(["dvc", "repro"], path, bin_dir)
    return bin_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--own-venvs", action="store_true", help="each clone installs its own locked packages")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="exp-run-speed-") as tmp:
        sides, bins = {}, {}
        for name, rev in [("base", args.base), ("head", args.head)]:
            # The commit as this checkout knows it (a clone's "origin/main" would be this checkout's main).
            verify = ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"]
            sha = subprocess.run(verify, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
            print(f"setting up {name} = {sha[:7]} ...", file=sys.stderr)
            sides[name] = Path(tmp) / name
            bins[name] = clone(sha, sides[name], args.own_venvs)
        totals: dict[str, list[float]] = {"base": [], "head": []}
        for i, seed in enumerate(args.seeds):
            for name in ["base", "head"] if i % 2 == 0 else ["head", "base"]:
                seconds = breakdown(run(["dvc", "exp", "run", "-S", f"train.seed={seed}"], sides[name], bins[name]))
                totals[name].append(seconds["total"])
                print(f"{name} seed {seed}: {json.dumps(seconds)}", file=sys.stderr)
    base, head = statistics.median(totals["base"]), statistics.median(totals["head"])
    print(
        json.dumps(
            {
                "base": args.base,
                "head": args.head,
                "base_s": totals["base"],
                "head_s": totals["head"],
                "base_median_s": base,
                "head_median_s": head,
                "ratio": round(base / head, 2),
                "own_venvs": args.own_venvs,
            }
        )
    )


if __name__ == "__main__":
    main()
