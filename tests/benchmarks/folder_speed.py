"""A folder of 70,000 small PNGs (MNIST written out as files) to arrays: the pipeline against a plain loop.

    python tests/benchmarks/folder_speed.py [--dir /tmp/mnist-png] [--repeat 2]

Needs the MNIST files in data/raw (``dvc repro fetch``). Writes the PNGs once
(class folders ``0``..``9``, train and test together), then measures, side by
side in one run:

- **plain**: one file at a time with Pillow: open, convert to gray, resize to
  28x28, copy into a preallocated uint8 array (what a first script would do);
- **pack**: the ``fetch`` stage's work for ``fetch.dataset: folder`` (read every
  file, hash it, write ``images.bin`` and the manifest);
- **decode**: the ``preprocess`` stage's decoding of the packed files into the
  arrays (``stages.lib.decoding.decode_packed``, every core this process may use).

Prints each time, the ratios plain/decode and plain/(pack + decode), the cores
used and the peak resident memory of the decoding (against the final arrays' size).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stages.lib import datasets, decoding, idx  # noqa: E402
from stages.serving import cores  # noqa: E402


def write_pngs(directory: Path) -> list[Path]:
    from PIL import Image

    marker = directory / ".complete"
    if not marker.exists():
        raw = ROOT / "data" / "raw"
        images = np.concatenate([idx.read(raw / "train-images-idx3-ubyte"), idx.read(raw / "t10k-images-idx3-ubyte")])
        labels = np.concatenate([idx.read(raw / "train-labels-idx1-ubyte"), idx.read(raw / "t10k-labels-idx1-ubyte")])
        for digit in range(10):
            (directory / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(pixels, mode="L").save(directory / str(label) / f"{i:05d}.png")
        marker.touch()
    return sorted(directory.glob("*/*.png"))


def plain_loop(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(paths), 28, 28), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            out[i] = np.asarray(image.convert("L").resize((28, 28)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mnist-png")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    paths = write_pngs(args.dir)
    print(f"{len(paths)} PNG files in {args.dir}; {cores.usable()} usable cores")
    shape = decoding.Shape(28, 28, 1)
    best = {"plain": float("inf"), "pack": float("inf"), "decode": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for _ in range(args.repeat):
            started = time.perf_counter()
            reference = plain_loop(paths)
            best["plain"] = min(best["plain"], time.perf_counter() - started)

            started = time.perf_counter()
            for stale in raw.glob("*"):
                stale.unlink()
            datasets.fetch_dataset("folder", "mnist-png", args.dir, raw, log=lambda line: None)
            best["pack"] = min(best["pack"], time.perf_counter() - started)

            manifest = datasets.read_manifest(raw)
            entries = [(f["offset"], f["size"]) for f in manifest["files"]]
            started = time.perf_counter()
            arrays, failed = decoding.decode_packed(raw / datasets.IMAGES, entries, shape)
            best["decode"] = min(best["decode"], time.perf_counter() - started)
    order = {str(p.relative_to(args.dir)): i for i, p in enumerate(paths)}
    same = np.array_equal(arrays, reference[[order[f["path"]] for f in manifest["files"]]])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"plain loop        {best['plain']:6.2f} s")
    print(f"pack (fetch)      {best['pack']:6.2f} s")
    print(f"decode (prepare)  {best['decode']:6.2f} s   same pixels as the plain loop: {same}; failed: {len(failed)}")
    print(f"ratio plain/decode            {best['plain'] / best['decode']:.2f}x")
    print(f"ratio plain/(pack + decode)   {best['plain'] / (best['pack'] + best['decode']):.2f}x")
    print(f"arrays {arrays.nbytes / 1e6:.1f} MB; this process's peak resident memory {peak_mb:.0f} MB")
    return 0 if same and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
