"""Trained models side by side on people's digits: the drawn ones of the demo page and photo-like files.

    python tests/benchmarks/recipe_quality.py NAME=MODEL [NAME=MODEL ...] [--photos 1000] [--errors DIR]
    python tests/benchmarks/recipe_quality.py cnn=runs:/<run id>/model cnn-best=models:/mnist-classifier/7

MODEL is what ``mnist-predict --model`` takes: an MLflow model URI, or a
``.keras`` file with ``serving.json`` beside it. Needs the raw MNIST files
(``make repro``). For each model:

- **drawn**: the 300 sketchpad drawings of ``tests/drawn.py`` (ten digits,
  three writers' styles, ten drawings each) through the demo page's own
  function, as ``tests/tools/test_demo.py`` judges the default model;
- **photo-like**: the first ``--photos`` MNIST test digits made to look like
  photos and scans (``tests/photos.py``), read by ``mnist-predict DIR --json``
  in a process of its own, as a person would run it;
- **MNIST's test set**: its 10,000 images as they are, through the same
  model: the errors and their confusions (true -> answer: count); with
  ``--errors DIR``, every misclassified image in ``DIR/NAME-errors.png``, most
  confident first, to judge by eye.

Prints one JSON line: per model the share correct of each, per digit for
the drawings, the photo-like files it got wrong and the test set's errors
(index, digit, answer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def photo_answers(model: str, directory: Path) -> list[int]:
    """``mnist-predict DIR --json --model MODEL``'s digit for each file, in file order."""
    out = subprocess.run(
        [sys.executable, "-m", "stages.tools.predict", str(directory), "--json", "--model", model],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    answers = {json.loads(line)["path"]: json.loads(line)["digit"] for line in out.splitlines()}
    return [answers[str(p)] for p in sorted(directory.iterdir())]


def test_set_errors(probs, y_test) -> dict:
    """The test set's accuracy, its errors (index, digit, answer) and their confusions, most frequent first."""
    import numpy as np

    answers = probs.argmax(axis=1)
    wrong = np.flatnonzero(answers != y_test)
    pairs: dict[str, int] = {}
    for i in wrong:
        key = f"{y_test[i]}->{answers[i]}"
        pairs[key] = pairs.get(key, 0) + 1
    return {
        "test_accuracy": round(float(np.mean(answers == y_test)), 4),
        "test_errors": len(wrong),
        "test_confusions": dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))),
        "test_wrong": [[int(i), int(y_test[i]), int(answers[i])] for i in wrong],
    }


def errors_figure(x_test, y_test, probs, name: str, path: Path) -> None:
    """Every misclassified test image, most confident first, captioned as the evaluate stage's gallery."""
    import numpy as np

    from stages.lib import plots

    answers = probs.argmax(axis=1)
    wrong = np.flatnonzero(answers != y_test)
    wrong = wrong[np.argsort(-probs[wrong, answers[wrong]], kind="stable")]
    path.parent.mkdir(parents=True, exist_ok=True)
    plots.image_grid(
        x_test[wrong].astype(np.float32),
        [f"#{i}: {y_test[i]} as {answers[i]}\n{probs[i, answers[i]]:.0%}" for i in wrong],
        path,
        title=f"{name}: all {len(wrong)} misclassified test images (index: true digit as answer), most confident first",
        highlight=[True] * len(wrong),
        columns=10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--photos", type=int, default=1000, help="photo-like test digits (default 1000)")
    parser.add_argument("--per-style", type=int, default=10, help="drawings per digit and style (default 10)")
    parser.add_argument("--errors", type=Path, help="write every test-set error of each model to DIR/NAME-errors.png")
    args = parser.parse_args()
    models = dict(spec.partition("=")[::2] for spec in args.models)
    if not all(models.values()):
        parser.error("give each model as NAME=MODEL")

    import numpy as np

    from stages.lib import idx
    from stages.tools import predict
    from tests.drawn import accuracy
    from tests.photos import write_photos

    raw = ROOT / "data" / "raw"
    x_test, y_test = idx.read(raw / "t10k-images-idx3-ubyte"), idx.read(raw / "t10k-labels-idx1-ubyte")
    images, labels = x_test[: args.photos], y_test[: args.photos]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(images, Path(tmp) / "photos")
        order = np.argsort([str(p) for p in paths])  # mnist-predict answers in file-name order
        for name, uri in models.items():
            model = predict.load_model(uri).probabilities
            drawn, per_digit = accuracy(model, per_style=args.per_style)
            probs = model(x_test.astype(np.float32))
            test_errors = test_set_errors(probs, y_test)
            if args.errors:
                errors_figure(x_test, y_test, probs, name, args.errors / f"{name}-errors.png")
            answers = np.empty(len(paths), int)
            answers[order] = photo_answers(uri, Path(tmp) / "photos")
            wrong = np.flatnonzero(answers != labels)
            results[name] = {
                "model": uri,
                "drawn_accuracy": round(drawn, 4),
                "drawn_per_digit": {str(d): round(a, 2) for d, a in per_digit.items()},
                "photo_accuracy": round(float(np.mean(answers == labels)), 4),
                "photo_wrong": [[int(i), int(labels[i]), int(answers[i])] for i in wrong],
                **test_errors,
            }
            print(f"{name}: drawn {drawn:.4f}, photo-like {results[name]['photo_accuracy']:.4f}", file=sys.stderr)
    print(json.dumps({"photos": args.photos, "drawings": 30 * args.per_style, "models": results}))


if __name__ == "__main__":
    main()
