"""The trained classifier on your own images: scans, photos, drawings of digits, or your data set's kind.

    python -m stages.tools.predict PATH [PATH ...] [--model URI] [--json] [--top K] [--save-inputs DIR]
    mnist-predict ...                      (the same, as a console script)

PATHs are image files, directories (their image files, sorted) or glob
patterns. Each image is brought into the form the model was trained on, as
its ``serving.json`` says: with ``preprocess.style: digits`` (MNIST's default)
into MNIST's form (``mnist_style``: light on dark, size-normalized into a
20x20 box and centred by its centre of mass; a model fed anything else
guesses), with ``plain`` simply resized to the model's image shape
(``stages.lib.decoding``). Answers name the class (``digit`` for MNIST). The
model is the pipeline's ``data/model/`` (its ONNX form through onnxruntime
when it has a sound one, else ``model.keras``; ``--runtime`` forces one) with
the normalization it was trained with, or any MLflow model URI
(``models:/mnist-classifier@champion``, ``runs:/<id>/model``). A file that
cannot be read gets a one-line error, the others are still predicted, and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stages import KERAS_EXTRAS, finish, leave_out
from stages.lib import redact, store, tracking
from stages.lib.files import atomic_path
from stages.lib.images import EMPTY_FILE, ImageError, decode, mnist_style
from stages.lib.paths import MODEL_PATH, ONNX_PATH, PROJECT, SERVING_CONFIG_PATH
from stages.serving.classifier import DIGITS, IMAGE_SHAPE, RUNTIME_ENV, RUNTIMES, telemetry_off

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# --- which files ---------------------------------------------------------------


@dataclass
class Outcome:
    path: str
    pixels: np.ndarray | None = None
    error: str | None = None
    probabilities: np.ndarray | None = None


def expand(paths: list[str]) -> list[Outcome]:
    """Files, directories (their images, sorted) and glob patterns, in the order given."""
    found: list[Outcome] = []
    for given in paths:
        # An existing path is a file or directory even when its name has glob characters (digit[1].png).
        matches = sorted(glob.glob(given)) if glob.has_magic(given) and not Path(given).exists() else [given]
        if not matches:
            found.append(Outcome(given, error="no file matches this pattern"))
        for match in matches:
            path = Path(match)
            if path.is_dir():
                try:
                    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                except OSError as exc:  # not readable by this user, say
                    found.append(Outcome(match, error=f"cannot list this directory ({exc.strerror or exc})"))
                    continue
                if not images:
                    found.append(Outcome(match, error="directory has no image files"))
                found.extend(Outcome(str(p)) for p in images)
            elif path.exists():
                found.append(Outcome(match))
            else:
                found.append(Outcome(match, error="no such file"))
    return found


@dataclass(frozen=True)
class Form:
    """How a new image is brought to the model: ``style`` (digits | plain) and one image's ``shape``."""

    style: str = "digits"
    shape: tuple[int, ...] = IMAGE_SHAPE

    @classmethod
    def of(cls, config: dict) -> Form:
        return cls(config.get("style", "digits"), tuple(config.get("image_shape", IMAGE_SHAPE)))


def prepare(outcome: Outcome, form: Form = Form()) -> Outcome:
    """Fill in ``outcome.pixels`` (the image in the model's form) or ``outcome.error``; return it."""
    if outcome.error is None:
        try:
            path = Path(outcome.path)
            if path.stat().st_size == 0:
                raise ImageError(EMPTY_FILE)
            outcome.pixels = in_form(path, form)
        except ImageError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a decoder's surprise is this file's error, not the whole batch's
            outcome.error = f"cannot read: {redact.described(exc)}"
    return outcome


def in_form(path: Path, form: Form) -> np.ndarray:
    """The file's pixels as the model takes them (float32, 0-255)."""
    from stages.lib import decoding  # noqa: PLC0415

    height, width = form.shape[:2]
    channels = 3 if len(form.shape) == 3 else 1
    if form.style == "plain":
        return decoding.to_array(path, decoding.Shape(height, width, channels)).astype(np.float32)
    return digit_in_form(decode(path), form)


def digit_in_form(gray: np.ndarray, form: Form) -> np.ndarray:
    """A grayscale image of a digit (a file's, a drawing's) in a digits model's form: MNIST's (``mnist_style``),
    resized to the model's image shape and repeated over its channels (float32, 0-255)."""
    height, width = form.shape[:2]
    digit = mnist_style(gray)  # 28x28 gray
    if digit.shape != (height, width):
        from PIL import Image  # noqa: PLC0415

        digit = np.asarray(Image.fromarray(digit, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    if len(form.shape) == 3:
        digit = np.repeat(digit[..., None], form.shape[2], axis=2)
    return np.clip(digit, 0, 255).astype(np.float32)


# --- the model -------------------------------------------------------------------


class Loaded(NamedTuple):
    """A model ready to answer: raw-pixel batches (N, *shape) to probabilities (N, classes), its serving config,
    and which model answers through what (for the line that ends ``mnist-predict``'s output)."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    config: dict
    source: str


def load_model(uri: str | None, runtime: str | None = None) -> Loaded:
    """The model at ``uri`` (None: the pipeline's, ``data/model`` of this project).

    ``runtime``: auto (the ONNX form when the model has a sound one, else Keras), onnx or keras; None: the
    ``MODEL_RUNTIME`` variable's, else auto."""
    if runtime:
        os.environ[RUNTIME_ENV] = runtime  # a served model from the registry reads it when it loads
    telemetry_off(os.environ)  # a version registered earlier opens onnxruntime through its own code
    if uri is None or ":/" not in uri:  # the pipeline's model, or a .keras file (or its directory)
        from stages.serving.classifier import Classifier  # noqa: PLC0415

        model_path, config_path = local_paths(uri)
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path} not found: run `dvc repro` first, or pass --model URI")
        classifier = Classifier(model_path, config_path, model_path.with_name(ONNX_PATH.name))
        where = model_path.parent if model_path.name == MODEL_PATH.name else model_path
        return Loaded(classifier.probabilities, classifier.config, f"{shown_path(where)}, {classifier.runtime}")
    store_uri = store.read_store(PROJECT)
    store.check_readable(uri, store_uri)
    import mlflow  # noqa: PLC0415

    tracking.quiet_mlflow()
    mlflow.set_tracking_uri(store_uri)
    if importlib.util.find_spec("keras") is None:  # the inference-only environment
        logging.getLogger("mlflow.utils.requirements_utils").addFilter(beyond_training_packages)
    os.environ.update(tracking.NO_PICKLES)
    pinned = tracking.pin(uri, store_uri)  # the version checked is the version loaded
    # Downloaded here rather than where MLflow would put it (a temporary directory of its own, left behind for
    # good): the model holds its network and ONNX session in memory once loaded, so the files go at once.
    with tempfile.TemporaryDirectory(prefix="mnist-model-") as tmp:
        model = tracking.load_from_code(pinned, tmp)
    served = model.unwrap_python_model()
    classifier = getattr(served, "classifier", None)
    runtime = getattr(classifier, "runtime", None)  # a version registered before ONNX forms answers through Keras
    return Loaded(
        lambda pixels: np.stack(model.predict(pixels)["probabilities"].to_numpy()).astype(np.float64),
        classifier.config if classifier is not None else {},
        f"{redact.uri(uri)}, {runtime or 'keras'}",
    )


def shown_path(path: Path) -> str:
    """``path`` as a person reads it here: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def beyond_training_packages(record: logging.LogRecord) -> bool:
    """Whether MLflow's warning of packages the model pins but this environment lacks says more than that
    TensorFlow and Keras are missing, which they are by design in the inference-only environment (the ONNX form
    answers there): a log filter, so that any other mismatch is still said."""
    named = [line for line in record.getMessage().splitlines() if line.startswith(" - ")]
    return not named or not all(line.startswith((" - tensorflow", " - keras")) for line in named)


def local_paths(uri: str | None) -> tuple[Path, Path]:
    """(the .keras file, the serving.json beside it) of the pipeline's model or a given file or directory."""
    model_path = PROJECT / MODEL_PATH if uri is None else Path(uri)
    if model_path.is_dir():
        model_path = model_path / MODEL_PATH.name
    return model_path, model_path.with_name(SERVING_CONFIG_PATH.name)  # written beside it by the train stage


def known_form(uri: str | None) -> Form:
    """The model's form when it can be read before the model loads (a local model's serving.json)."""
    if uri is None or ":/" not in uri:
        try:
            return Form.of(json.loads(local_paths(uri)[1].read_text()))
        except (OSError, ValueError):
            pass
    return Form()


# --- output ----------------------------------------------------------------------


def ranked(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(d), float(probs[d])) for d in order]


def table(outcomes: list[Outcome], top: int, classes: list[str] = DIGITS) -> str:
    rows = [["path", "digit" if classes == DIGITS else "class", "confidence", *(f"#{i}" for i in range(2, top + 1))]]
    for o in outcomes:
        if o.error is None:
            best = ranked(o.probabilities, top)
            rows.append(
                [o.path, classes[best[0][0]], f"{best[0][1]:.1%}", *(f"{classes[d]} ({p:.1%})" for d, p in best[1:])]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def ranking(probs: np.ndarray, k: int, classes: list[str] = DIGITS, digits: int | None = None) -> list[dict]:
    """The ``k`` most likely classes as the served model names them: ``digit`` for MNIST, else ``label`` and
    ``class``; each with its ``probability`` (rounded to ``digits`` decimals if given)."""
    top = []
    for i, p in ranked(probs, k):
        name = {"digit": i} if classes == DIGITS else {"label": i, "class": classes[i]}
        top.append({**name, "probability": p if digits is None else round(p, digits)})
    return top


def as_json(o: Outcome, top: int, classes: list[str] = DIGITS) -> str:
    if o.error is not None:
        return json.dumps({"path": o.path, "error": o.error})
    best = ranking(o.probabilities, top, classes, digits=6)
    head = {k: v for k, v in best[0].items() if k != "probability"}
    return json.dumps(
        {
            "path": o.path,
            **head,
            "confidence": best[0]["probability"],
            "top": best,
            "probabilities": [round(float(p), 6) for p in o.probabilities],
        }
    )


def usable_directory(directory: Path) -> str | None:
    """Create ``directory`` if needed; None when files can be written there, else why not (one line)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {directory}: {exc.strerror or exc}"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    return None


def save_inputs(outcomes: list[Outcome], directory: Path) -> None:
    """Each image as the model saw it, as a PNG named after the input file (``directory`` exists)."""
    from PIL import Image  # noqa: PLC0415

    for i, o in enumerate(outcomes):
        if o.pixels is not None:
            name = f"{i:04d}-{Path(o.path).stem}.png"
            pixels = np.clip(np.rint(o.pixels), 0, 255).astype(np.uint8)
            with atomic_path(directory / name, suffix=".png", durable=False) as tmp:  # complete files, no fsync each
                Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories or glob patterns")
    parser.add_argument(
        "--model",
        metavar="URI",
        help="an MLflow model URI (runs:/..., models:/...), or a .keras file with serving.json beside it "
        "(default: the pipeline's data/model/)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="auto: the model's ONNX form through onnxruntime when it has one, else Keras (default; "
        f"also ${RUNTIME_ENV}); onnx or keras to force one",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--top", type=int, default=2, metavar="K", help="candidates shown per image (default 2)")
    parser.add_argument("--save-inputs", type=Path, metavar="DIR", help="write each image as the model saw it")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error("--top must be between 1 and 10")
    if args.save_inputs and (problem := usable_directory(args.save_inputs)):
        parser.error(f"--save-inputs: {problem}")  # before any work, not after inference

    started = time.monotonic()
    listed = expand(args.paths)
    form = known_form(args.model)  # an MLflow model's form is known once it is loaded: MNIST's until then
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        prepared = pool.map(partial(prepare, form=form), listed, chunksize=64)  # copies come back
        try:
            predict, config, source = load_model(args.model, args.runtime)
        except Exception as exc:  # any failure to load is reported in one line
            print(f"mnist-predict: error: cannot load the model: {redact.first_line(exc)}", file=sys.stderr)
            return 2
        outcomes = list(prepared)
    if Form.of(config) != form:  # the model wants another form: bring the listed images into it
        outcomes = [prepare(o, Form.of(config)) for o in listed]
    classes = config.get("classes", DIGITS)
    top = min(args.top, len(classes))  # a model of fewer classes than --top asks for
    good = [o for o in outcomes if o.pixels is not None]
    if good:
        probs = predict(np.stack([o.pixels for o in good]))
        for o, p in zip(good, probs, strict=True):
            o.probabilities = p
    if args.save_inputs:
        save_inputs(outcomes, args.save_inputs)

    if args.json:
        for o in outcomes:
            print(as_json(o, top, classes))
    elif good:
        print(table(outcomes, top, classes))
    failed = [o for o in outcomes if o.error is not None]
    if not args.json:
        for o in failed:
            print(f"mnist-predict: error: {o.path}: {o.error}", file=sys.stderr)
    seconds = time.monotonic() - started
    print(f"mnist-predict: {len(good)} of {len(outcomes)} images in {seconds:.1f}s ({source})", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    """The ``mnist-predict`` command: ``main`` in a process that starts and ends faster (see ``stages``)."""
    leave_out(*KERAS_EXTRAS)  # unused here
    finish(main())


if __name__ == "__main__":
    cli()
