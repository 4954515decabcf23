"""The light path (the champion's ONNX form through onnxruntime) against the Keras path, side by side in one run.

    python tests/benchmarks/inference_speed.py [--seconds 10] [--repeats 5] [--workers auto] [--skip serve,demo]

Needs the pipeline's model and a champion with an ONNX form (`make repro`).
Each figure is measured for both runtimes, alternating, in this one run (the
machine's speed drifts minute to minute: compare the ratios):

- predict: ``mnist-predict one.png`` end to end from a cold process (median of ``--repeats``);
  also in the inference-only environment (``make install-inference``) when it exists;
- serve: ``make serve``'s command (``stages.tools.serve``) on 127.0.0.1; one client's single-image requests
  (p50), then 16 concurrent clients for ``--seconds`` (requests/s, p99, errors); ``--workers`` as ``make
  serve``'s ``WORKERS`` (default ``auto``: one per usable core);
- batch: images/s of ``Classifier.probabilities`` on batches of 1,000 test images, in this process;
- demo: seconds from starting ``python -m stages.tools.demo`` until its page answers;
- size: the inference-only environment on disk, beside ``.venv``.

Prints a table and one JSON line. Servers bind 127.0.0.1 and are stopped by process group.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RUNTIMES = ("onnx", "keras")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_seconds(command: list[str], repeats: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    process.log = log  # shown if it exits early
    return process


def stop(process: subprocess.Popen) -> None:
    """Stop the process group (the server and its workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=20)
            return
        except ProcessLookupError:
            process.wait()
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(port: int, path: str, process: subprocess.Popen, timeout: float = 180) -> float:
    """Seconds until GET ``path`` answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout}s")


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - started


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """One client's p50, then ``clients`` concurrent clients' requests/s, p99 and errors."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for body in bodies[:20]:  # warm up
        post(conn, body)
    single = [post(conn, bodies[i % len(bodies)])[1] for i in range(300)]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.perf_counter() < deadline:
            try:
                status, took = post(c, bodies[i % len(bodies)])
            except OSError:
                status, took = 0, 0.0
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            i += 1
            with lock:
                latencies.append(took)
                errors[0] += status != 200

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": round(1000 * statistics.median(single), 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "errors": errors[0],
    }


def du_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the 16-client load")
    parser.add_argument("--repeats", type=int, default=5, help="cold predict runs per runtime")
    parser.add_argument("--workers", default="auto", help="make serve's WORKERS (default auto: one per core)")
    parser.add_argument("--skip", default="", help="comma-separated: predict, serve, batch, demo, size")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import numpy as np

    from stages.lib import idx
    from stages.serving import cores

    images = idx.read(ROOT / "data" / "raw" / "t10k-images-idx3-ubyte")
    results: dict[str, dict] = {r: {} for r in RUNTIMES}
    bin_dir = Path(sys.executable).parent
    # As under make: the environment's programs first (mlflow models serve starts its `uvicorn`).
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.png"
        from PIL import Image

        Image.fromarray(images[0]).save(one)

        if "predict" not in skip:
            for runtime in RUNTIMES:
                command = [str(bin_dir / "mnist-predict"), str(one), "--runtime", runtime]
                results[runtime]["predict_cold_s"] = round(median_seconds(command, args.repeats, env), 2)
            light_env = ROOT / ".venv-inference" / "bin" / "mnist-predict"
            if light_env.exists():  # installed --no-compile: a first run writes the bytecode, as a user's would
                first_run = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
                median_seconds([str(light_env), str(one)], 1, first_run)
                seconds = median_seconds([str(light_env), str(one)], args.repeats, env)
                results["onnx"]["predict_cold_inference_env_s"] = round(seconds, 2)

        if "serve" not in skip:
            bodies = [json.dumps({"inputs": images[i : i + 1].tolist()}).encode() for i in range(200)]
            for runtime in RUNTIMES:
                port = free_port()
                command = [sys.executable, "-m", "stages.tools.serve", "--port", str(port), "--runtime", runtime]
                command += ["--workers", args.workers]
                server = start(command, env, Path(tmp) / f"serve-{runtime}.log")
                try:
                    results[runtime]["serve_ready_s"] = round(wait_for(port, "/ping", server), 1)
                    results[runtime].update(load(port, bodies, 16, args.seconds))
                    first = (Path(tmp) / f"serve-{runtime}.log").read_text().splitlines()[0]
                    results[runtime]["serve_workers"] = int(re.search(r"\((\d+) workers?\b", first).group(1))
                finally:
                    stop(server)

        if "batch" not in skip:
            from stages.lib.paths import MODEL_DIR
            from stages.serving.classifier import Classifier

            batch = images[:1000].astype(np.float32)
            for runtime in RUNTIMES:
                model = Classifier(
                    MODEL_DIR / "model.keras", MODEL_DIR / "serving.json", MODEL_DIR / "model.onnx", runtime
                )
                model.probabilities(batch)  # warm up
                took = min(_timed(model.probabilities, batch) for _ in range(5))
                results[runtime]["batch_images_per_s"] = round(len(batch) / took)

        if "demo" not in skip:
            for runtime in RUNTIMES:
                port = free_port()
                demo = start(
                    [sys.executable, "-m", "stages.tools.demo", "--port", str(port)],
                    {**env, "MODEL_RUNTIME": runtime, "GRADIO_ANALYTICS_ENABLED": "False"},
                    Path(tmp) / f"demo-{runtime}.log",
                )
                try:
                    results[runtime]["demo_ready_s"] = round(wait_for(port, "/", demo), 1)
                finally:
                    stop(demo)

    if "size" not in skip:
        results["onnx"]["environment_mb"] = du_mb(ROOT / ".venv-inference")
        results["keras"]["environment_mb"] = du_mb(ROOT / ".venv")

    keys = sorted({k for r in results.values() for k in r})
    print(f"{'figure':32} {'onnx':>10} {'keras':>10} {'keras/onnx':>11}")
    for key in keys:
        light, heavy = results["onnx"].get(key), results["keras"].get(key)
        ratio = f"{heavy / light:.2f}" if isinstance(light, (int, float)) and light and heavy is not None else ""
        print(f"{key:32} {light!s:>10} {heavy!s:>10} {ratio:>11}")
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "?",
    )
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    print(json.dumps({"cpu": cpu, "avx512": avx512, "cores": cores.usable(), **results}))


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
