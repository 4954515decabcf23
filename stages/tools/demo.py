"""The demo page: a Gradio app that shows what a trained model says about your own images or handwriting.

    python -m stages.tools.demo [--model URI] [--host 127.0.0.1] [--port 7860] [--auth | --no-auth]   (make demo)

Upload a photo, scan or any image, or, for a digits model (``preprocess.style:
digits``, 28x28 gray: MNIST's), draw one with the mouse or a finger: the page
shows the answer, the class probabilities (named after the model's classes,
``serving.json``) and the image the model actually saw, in the model's form
(``stages.tools.predict``'s preprocessing, the very same functions as
``mnist-predict``). Titles and texts follow the model's data set. The model is
the champion of the data set ``params.yaml`` names by default, or what
``--model`` names, as ``mnist-predict --model`` accepts it (an MLflow model
URI, a ``.keras`` file with its ``serving.json``, or its directory).

Private and offline: bound to 127.0.0.1 unless told otherwise, no share link,
Gradio's analytics off, nothing fetched from outside (fonts and scripts are
Gradio's own, served by the app). The app also answers Gradio's API: the
``/predict`` endpoint takes an image file and returns the answer and the top 3:
MNIST's digit, or another data set's class name (``gradio_client``; see docs/demo.md).

The server rule of ``stages.tools.server``: on a host other than loopback the
page asks for a login (Gradio's ``auth``), user ``demo`` (``DEMO_USER``) and a
password from ``DEMO_PASSWORD`` or generated and shown once on the terminal;
with authentication turned off there (``--no-auth``, ``DEMO_AUTH=0``) it
refuses to start. ``--auth`` (``DEMO_AUTH=1``) asks for the login on loopback too.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import finish
from stages.lib.images import from_image
from stages.lib.net import is_loopback, local_url
from stages.lib.paths import PARAMS_FILE, PROJECT
from stages.lib.redact import described, first_line
from stages.lib.redact import uri as redact_uri
from stages.lib.registry import champion_uri, describe
from stages.serving.classifier import DIGITS, output_columns
from stages.tools.predict import Form, Outcome, digit_in_form, prepare, ranked, ranking

DEFAULT_PORT = 7860
CANVAS = 400  # the sketchpad's side, in pixels
BRUSH = 14  # the pen's radius, in pixels: MNIST's strokes are about a tenth of the digit's height
MAX_UPLOAD = "10mb"  # larger uploads are refused by Gradio before they reach the model
SEEN_SIDE = 224  # the image the model saw, shown about this many pixels wide, each pixel a square
TOP = 3
MAX_BARS = 20  # more classes than this: the chart shows the MAX_BARS most likely
DEMO_USER = "demo"  # the login's user name unless DEMO_USER says otherwise

# Before Gradio is imported: no usage statistics, no version check, no Hugging Face telemetry.
PRIVATE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}

Probabilities = Callable[[np.ndarray], np.ndarray]  # (N, *image shape) raw pixels -> (N, classes)


@dataclass(frozen=True)
class Task:
    """What the model answers, from its ``serving.json``: its data set's name, its classes and the form an image
    is brought into (``predict.Form``). MNIST's when the config says nothing (older models)."""

    dataset: str = "mnist"
    classes: tuple[str, ...] = tuple(DIGITS)
    form: Form = Form()

    @classmethod
    def of(cls, config: dict) -> Task:
        return cls(str(config.get("dataset", "mnist")), tuple(config.get("classes", DIGITS)), Form.of(config))

    @property
    def digits(self) -> bool:
        """Whether answers are MNIST's digits (``digit``), as the served model says them, or ``label`` and
        ``class`` (``classifier.output_columns``)."""
        return output_columns({"classes": list(self.classes)})[0] == "digit"

    @property
    def drawable(self) -> bool:
        """Whether the sketchpad makes sense: a digits model (``preprocess.style: digits``), whatever its image
        shape (a drawing is brought into it as a file is: ``predict.digit_in_form``)."""
        return self.form.style == "digits"

    @property
    def noun(self) -> str:
        return "digit" if self.digits else "image"

    @property
    def title(self) -> str:
        if self.dataset == "mnist" and self.digits and self.drawable:
            return "Draw a digit"
        return f"{self.dataset}: {'draw or upload' if self.drawable else 'upload'} an image"

    @property
    def prompt(self) -> str:
        """What the answer's place says before anything is drawn or uploaded."""
        return f"{'Draw' if self.drawable else 'Upload'} {article(self.noun)} {self.noun}."

    @property
    def seen_label(self) -> str:
        height, width = self.form.shape[:2]
        return f"What the model saw ({height}x{width}{', colour' if len(self.form.shape) == 3 else ''})"


MNIST = Task()


def article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


@dataclass
class Answer:
    """What the page shows for one drawing or upload: a prediction, or a one-line message."""

    probabilities: np.ndarray | None = None
    seen: np.ndarray | None = None  # the image the model saw, in its form
    message: str = ""
    task: Task = MNIST

    @property
    def label(self) -> int | None:
        """The most likely class's index (for MNIST, the digit)."""
        return None if self.probabilities is None else int(np.argmax(self.probabilities))

    @property
    def digit(self) -> int | None:
        return self.label

    @property
    def name(self) -> str | None:
        """The most likely class's name (for MNIST, the digit as text)."""
        return None if self.label is None else self.task.classes[self.label]

    def top(self, k: int = TOP) -> list[dict]:
        """The ``k`` most likely classes, as the served model and ``mnist-predict --json`` name them:
        ``digit`` for MNIST, else ``label`` and ``class``."""
        if self.probabilities is None:
            return []
        return ranking(self.probabilities, k, DIGITS if self.task.digits else self.task.classes)


# --- one drawing or file -> an answer --------------------------------------------


def answer_pixels(model: Probabilities, seen: np.ndarray, task: Task = MNIST) -> Answer:
    try:
        probabilities = np.asarray(model(seen[np.newaxis])[0], dtype=np.float64)
    except Exception as exc:  # the page stays up and says so; the server's log has the same line
        print(f"demo: error: the model failed: {described(exc)}", file=sys.stderr)
        return Answer(seen=seen, message=f"The model failed: {described(exc)}", task=task)
    return Answer(probabilities=probabilities, seen=seen, task=task)


def answer_drawing(model: Probabilities, drawing, task: Task = MNIST) -> Answer:
    """The sketchpad's canvas (a PIL image, transparent where nothing is drawn) or None when cleared; brought
    into the model's form as ``mnist-predict`` brings a file (``from_image`` reads it as ``decode`` reads it).
    Only a ``task.drawable`` model has a sketchpad."""
    if drawing is None:
        return Answer(message=task.prompt, task=task)
    try:
        seen = digit_in_form(from_image(drawing), task.form)
    except ValueError as exc:  # predict.ImageError: blank, too large
        message = str(exc)
        if message.startswith("no digit found"):
            message = f"{task.prompt[:-1]}: the canvas is empty."
        return Answer(message=message, task=task)
    except Exception as exc:  # a surprise in an odd canvas is this drawing's message, not a crash
        return Answer(message=f"Cannot read the drawing: {described(exc)}", task=task)
    return answer_pixels(model, seen, task)


def answer_file(model: Probabilities, path: str | Path | None, task: Task = MNIST) -> Answer:
    """An uploaded file: anything at all, brought into the model's form (``predict.prepare``, with its safety
    limits and one-line reasons)."""
    if path is None:
        return Answer(message=f"Upload a photo or scan of {article(task.noun)} {task.noun}.", task=task)
    outcome = prepare(Outcome(str(path)), task.form)
    if outcome.error is not None:
        return Answer(message=f"{Path(path).name}: {outcome.error}", task=task)
    return answer_pixels(model, outcome.pixels, task)


def drawn_image(value):
    """The composite image of the sketchpad's value (a dict of background, layers and composite), or None."""
    if value is None:
        return None
    return value.get("composite") if isinstance(value, dict) else value


# --- what the page shows ------------------------------------------------------------


def answer_html(answer: Answer) -> str:
    """The answer (the digit, or the class name) big, and its confidence; or the message (one line, escaped)."""
    if answer.label is None:
        return f'<div id="demo-answer" class="demo-message">{html.escape(answer.message)}</div>'
    confidence = answer.probabilities[answer.label]
    size = "demo-digit" if len(answer.name) <= 2 else "demo-name"  # a long class name in smaller letters
    return (
        f'<div id="demo-answer"><span id="demo-class" class="{size}">{html.escape(answer.name)}</span> '
        f'<span class="demo-confidence">{confidence:.1%}</span></div>'
    )


def chart_html(answer: Answer) -> str:
    """One bar per class, named (the MAX_BARS most likely of more, in the classes' order); the top 3 labelled
    with their probability."""
    if answer.probabilities is None:
        return ""
    probabilities, classes = answer.probabilities, answer.task.classes
    top = {i for i, _ in ranked(probabilities, TOP)}
    shown = sorted(i for i, _ in ranked(probabilities, MAX_BARS))
    bars = []
    for i in shown:
        p, name = probabilities[i], html.escape(classes[i])
        label = ("<1%" if p < 0.005 else f"{p:.0%}") if i in top else ""
        kind = "demo-bar demo-best" if i == answer.label else "demo-bar"
        bars.append(
            f'<div class="demo-col" title="{name}: {p:.2%}"><span class="demo-value">{html.escape(label)}</span>'
            f'<div class="{kind}" style="height:{max(p * 100, 1):.1f}%"></div>'
            f'<span class="demo-label">{name}</span></div>'
        )
    note = (
        f'<div class="demo-note">the {len(shown)} most likely of {len(classes)} classes</div>'
        if len(shown) < len(classes)
        else ""
    )
    return f'<div id="demo-chart" class="demo-chart">{"".join(bars)}</div>{note}'


def seen_zoom(shape: tuple[int, ...]) -> int:
    """The side of the square each of the model's pixels is shown as (browsers blur small images): 8 for 28x28."""
    return max(1, SEEN_SIDE // max(shape[:2]))


def seen_image(answer: Answer) -> np.ndarray | None:
    """The model's input as 8-bit gray or RGB, each pixel a ``seen_zoom``-sided square."""
    if answer.seen is None:
        return None
    pixels = np.clip(np.rint(answer.seen), 0, 255).astype(np.uint8)
    zoom = seen_zoom(pixels.shape)
    block = np.ones((zoom, zoom) if pixels.ndim == 2 else (zoom, zoom, 1), dtype=np.uint8)
    return np.kron(pixels, block)


def page_outputs(answer: Answer) -> tuple[str, str, np.ndarray | None]:
    return answer_html(answer), chart_html(answer), seen_image(answer)


# The sketchpad starts with its image tool: pick the pen, so that the first stroke draws.
PICK_PEN = """() => {
  const pick = (tries) => {
    const pen = document.querySelector('#demo-sketchpad button[aria-label="Brush"]');
    if (pen) pen.click(); else if (tries > 0) setTimeout(() => pick(tries - 1), 100);
  };
  pick(100);
}"""

CSS = """
.demo-digit { font-size: 6rem; font-weight: 700; line-height: 1; margin-right: 1rem; }
.demo-name { font-size: 3rem; font-weight: 700; line-height: 1.1; margin-right: 1rem; overflow-wrap: anywhere; }
.demo-confidence { font-size: 1.5rem; opacity: 0.7; }
.demo-message { font-size: 1.1rem; padding: 1rem 0; }
.demo-chart { display: flex; align-items: flex-end; gap: 6px; height: 180px; padding-top: 1.2rem; }
.demo-col { flex: 1; height: 100%; display: flex; flex-direction: column; justify-content: flex-end;
  align-items: center; }
.demo-bar { width: 100%; background: var(--neutral-400); border-radius: 3px 3px 0 0; }
.demo-best { background: var(--color-accent); }
.demo-value { font-size: 0.8rem; min-height: 1.1rem; }
.demo-label { font-weight: 600; font-size: 0.8rem; max-width: 100%; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.demo-note { font-size: 0.8rem; opacity: 0.7; }
"""


# --- the model and the app --------------------------------------------------------------


def describe_model(uri: str | None) -> str:
    """Which model answers: a registry URI with its version, kind and val_accuracy; otherwise the URI or path."""
    if uri is None:
        return "the workspace model (data/model/model.keras)"
    from stages.lib.store import read_store  # noqa: PLC0415

    return describe(uri, read_store(PROJECT))


def load(uri: str | None) -> tuple[Probabilities, str, Task]:
    """The model as a probabilities function, warmed up (first call traced), its description and its task."""
    from stages.tools.predict import load_model  # noqa: PLC0415

    model, config, _ = load_model(uri)
    task = Task.of(config)
    model(np.zeros((1, *task.form.shape), dtype=np.float32))
    return model, describe_model(uri), task


def build_app(model: Probabilities, description: str, task: Task = MNIST):
    """The page (and the ``/predict`` API endpoint) around ``model``: an upload box for every model, the
    sketchpad for a ``task.drawable`` one."""
    for key, value in PRIVATE_ENVIRONMENT.items():
        os.environ[key] = value
    import gradio as gr  # noqa: PLC0415

    def on_drawing(value):
        return page_outputs(answer_drawing(model, drawn_image(value), task))

    def on_upload(path):
        return page_outputs(answer_file(model, path, task))

    def api_predict(image):
        """The answer for an image file (MNIST's digit, or the class name) and the three most likely classes
        with their probabilities."""
        answer = answer_file(model, image, task)
        if answer.label is None:
            raise gr.Error(answer.message, print_exception=False)
        return (answer.digit if task.digits else answer.name), answer.top()

    height = task.form.shape[0]
    zoom = seen_zoom(task.form.shape)
    # Gradio keeps each request's files (the drawings, the images shown): hourly, those over an hour old go.
    with gr.Blocks(title=task.title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## {task.title}\nModel: `{description}`", elem_id="demo-model")
        with gr.Row():
            with gr.Column():
                if task.drawable:
                    sketch = gr.Sketchpad(
                        label=f"Draw here (one {task.noun})",
                        type="pil",
                        image_mode="RGBA",
                        canvas_size=(CANVAS, CANVAS),
                        fixed_canvas=True,
                        brush=gr.Brush(default_size=BRUSH, colors=["#000000"], color_mode="fixed"),
                        layers=False,
                        transforms=(),
                        height=CANVAS + 110,  # the canvas at 100 %, with the toolbars
                        elem_id="demo-sketchpad",
                    )
                upload = gr.File(
                    label="Or upload a photo or scan" if task.drawable else f"Upload {article(task.noun)} {task.noun}",
                    file_types=["image"],
                    type="filepath",
                    elem_id="demo-upload",
                )
            with gr.Column():
                answer = gr.HTML(answer_html(Answer(message=task.prompt)), elem_id="demo-answer-box")
                chart = gr.HTML("", elem_id="demo-chart-box")
                seen = gr.Image(
                    label=task.seen_label,
                    type="numpy",
                    image_mode="L" if len(task.form.shape) == 2 else "RGB",
                    interactive=False,
                    height=height * zoom,
                    buttons=["download"],
                    elem_id="demo-seen",
                )
        outputs = [answer, chart, seen]
        # One model call at a time, whichever event asks; a burst of strokes is answered once, for the last.
        common = {"concurrency_id": "model", "concurrency_limit": 1, "show_progress": "hidden"}
        if task.drawable:
            sketch.change(on_drawing, sketch, outputs, trigger_mode="always_last", api_visibility="private", **common)
        upload.upload(on_upload, upload, outputs, api_visibility="private", **common)
        upload.clear(lambda: page_outputs(Answer(message=task.prompt)), None, outputs, api_visibility="private")
        # The API: an image file in, the answer and the top 3 out (hidden components carry the types).
        api_in = gr.File(visible=False, type="filepath")
        api_answer = gr.Number(visible=False, precision=0) if task.digits else gr.Textbox(visible=False)
        api_top = gr.JSON(visible=False)
        gr.Button(visible=False).click(api_predict, api_in, [api_answer, api_top], api_name="predict", **common)
        if task.drawable:
            app.load(None, js=PICK_PEN)
            sketch.clear(None, js=PICK_PEN)  # clearing goes back to the image tool
    return app


def wants_auth(host: str, flag: bool | None, environ=os.environ) -> bool:
    """Whether the page asks for a login: ``--auth``/``--no-auth``, else ``DEMO_AUTH`` (1/0), else only off
    loopback. Off loopback it must: anyone who can reach the address could use the page (the server rule)."""
    if flag is None:
        value = environ.get("DEMO_AUTH", "").strip().lower()
        if value in ("1", "yes", "true", "on"):
            flag = True
        elif value in ("0", "no", "false", "off"):
            flag = False
        elif value:
            raise ValueError(f"DEMO_AUTH={value!r}: expected 1 or 0")
    if flag is False and not is_loopback(host):
        raise ValueError(
            f"refusing to serve the page on {host} without authentication (AUTH=0, --no-auth or DEMO_AUTH=0): "
            "drop it for a login with a generated password, or keep 127.0.0.1 behind an authenticating proxy"
        )
    return not is_loopback(host) if flag is None else flag


def login(environ=os.environ) -> tuple[tuple[str, str], str | None]:
    """The page's login (user, password) and the password to show once: ``DEMO_PASSWORD`` when set (then
    shown nowhere, None), else a new random one (shown on the terminal once, kept nowhere)."""
    user = environ.get("DEMO_USER") or DEMO_USER
    password = environ.get("DEMO_PASSWORD") or ""
    if password:
        return (user, password), None
    generated = secrets.token_urlsafe(18)
    return (user, generated), generated


def launch_options(host: str, port: int, auth: tuple[str, str] | None = None) -> dict:
    """Gradio's ``launch`` arguments (but the theme and the CSS): this host and port only, no share link,
    and the login when there is one."""
    return {
        "server_name": host,
        "server_port": port,
        "auth": auth,
        "auth_message": "The demo page: log in with the user and password `make demo` printed." if auth else None,
        "share": False,
        "inbrowser": False,
        "show_error": False,
        "quiet": True,
        "ssr_mode": False,
        "max_file_size": MAX_UPLOAD,
        "prevent_thread_lock": True,
    }


def serve(app, host: str, port: int, auth: tuple[str, str] | None = None) -> None:
    """Start the page; return once it answers (the server runs on in Gradio's threads)."""
    import gradio as gr  # noqa: PLC0415

    app.queue(default_concurrency_limit=1)
    app.launch(**launch_options(host, port, auth), theme=gr.themes.Default(), css=CSS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        metavar="URI",
        default=None,
        help="an MLflow model URI, or a .keras file with serving.json beside it (default: the champion of the "
        "data set the project's params.yaml names, models:/<name>-classifier@champion)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ask for a login (default: off loopback only, where --no-auth is refused; or DEMO_AUTH=1/0)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error("--port must be between 1 and 65535")
    try:
        credentials, generated = login() if wants_auth(args.host, args.auth) else (None, None)
        if args.model is None:  # the project's params.yaml, wherever this is started (a ParamsError is a ValueError)
            args.model = champion_uri(PROJECT / PARAMS_FILE)
    except ValueError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2

    started = time.monotonic()
    print(f"demo: loading {redact_uri(args.model)} ...", file=sys.stderr)
    try:
        model, description, task = load(args.model or None)
    except Exception as exc:  # any failure to load is reported in one line
        print(f"demo: error: cannot load the model: {first_line(exc)}", file=sys.stderr)
        return 2
    app = build_app(model, description, task)
    try:
        serve(app, args.host, args.port, credentials)
    except OSError as exc:  # the port is taken, the address is not this machine's
        reason = first_line(exc)
        if credentials:  # DEMO_PASSWORD is none of redact's variables: masked here
            reason = reason.replace(credentials[1], "***")
        print(f"demo: error: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    url = local_url(args.host, args.port)
    print(f"demo: {description}", file=sys.stderr)
    what = "draw or upload" if task.drawable else "upload"
    print(f"demo: {task.dataset} ({len(task.classes)} classes), {what} an image", file=sys.stderr)
    if credentials and generated:
        print(f"demo: login: user {credentials[0]!r}, password {generated} (generated, shown this once)")
    elif credentials:
        print(f"demo: login: user {credentials[0]!r}, the password in DEMO_PASSWORD")
    print(f"demo: ready in {time.monotonic() - started:.1f}s - open {url} (Ctrl-C stops it)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        app.block_thread()
    return 0


if __name__ == "__main__":
    finish(main())  # without Python's seconds-long teardown of TensorFlow's modules
