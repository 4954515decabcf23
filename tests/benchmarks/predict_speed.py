"""How fast `predict` is on 1,000 photo-like image files, where the time goes, and a figure of what it does.

    python tests/benchmarks/predict_speed.py [--n 1000] [--figure docs/predict-examples.png]

Needs the pipeline's model (`make repro`). Writes N MNIST test digits made to
look like photos (see tests/photos.py) to a temporary directory, then times
`python -m stages.tools.predict DIR --json` end to end in a fresh process, and in
this process the split: start-up (imports and model load), decode +
preprocess, inference. Prints one JSON line with the seconds and accuracies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def figure(photos: list[Path], seen: list, labels, path: Path) -> None:
    """Each photo-like input above the 28x28 image the model saw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(2, len(photos), figsize=(1.6 * len(photos), 3.6), layout="constrained")
    for i, (photo, pixels) in enumerate(zip(photos, seen, strict=True)):
        axes[0, i].imshow(Image.open(photo).convert("L"), cmap="gray", vmin=0, vmax=255)
        axes[1, i].imshow(pixels, cmap="gray", vmin=0, vmax=255)
        axes[0, i].set_title(f"digit {labels[i]}", fontsize=9)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input file")
    axes[1, 0].set_ylabel("model saw")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np

    from stages.lib import idx
    from tests.photos import write_photos

    raw = ROOT / "data" / "raw"
    images = idx.read(raw / "t10k-images-idx3-ubyte")[: args.n]
    labels = idx.read(raw / "t10k-labels-idx1-ubyte")[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        photos = write_photos(images, Path(tmp) / "photos")

        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "stages.tools.predict", str(Path(tmp) / "photos"), "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        end_to_end = time.monotonic() - started
        answers = np.array([json.loads(line)["digit"] for line in out.splitlines()])

        # The split, in this process.
        started = time.monotonic()
        from stages.tools import predict

        model = predict.load_model(None).probabilities
        startup = time.monotonic() - started
        started = time.monotonic()
        seen = np.stack([predict.mnist_style(predict.decode(p)) for p in photos])
        preprocess = time.monotonic() - started
        started = time.monotonic()
        model(seen)
        inference = time.monotonic() - started
        if args.figure:
            figure(photos[:8], list(seen[:8]), labels[:8], args.figure)

    print(
        json.dumps(
            {
                "files": args.n,
                "end_to_end_s": round(end_to_end, 2),
                "startup_s": round(startup, 2),
                "decode_preprocess_s": round(preprocess, 2),
                "inference_s": round(inference, 2),
                "accuracy": round(float(np.mean(answers == labels)), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
