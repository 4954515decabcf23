"""The demo page: its prediction function, bad input, any data set's model, the API through gradio_client, a real
browser.

Fast tests use a stand-in model (a function of the pixels) and no Gradio. The
slow ones start the page as `make demo` does (`python -m stages.tools.demo`, on
127.0.0.1, stopped by process id): against tiny Keras models for the API (MNIST's
digits, and three colour classes), and, for the quality gate and the browser, against the default dense network
trained on the real prepared MNIST data (`dvc repro preprocess` makes it in a fresh clone).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stages.lib.images import decode, from_image, mnist_style
from stages.tools import demo
from stages.tools.server import free_port
from tests.drawn import STYLES, accuracy, pose, render

ROOT = Path(__file__).resolve().parents[2]


def seven() -> Image.Image:
    return render(pose(STYLES[7][0], np.random.default_rng(7)))


class StandIn:
    """A model that remembers what it was given and answers ``digit`` (a class's index) with 70 %, the rest
    shared among its ``classes``."""

    def __init__(self, digit: int = 7, classes: int = 10) -> None:
        self.digit, self.classes, self.seen = digit, classes, []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.seen.append(pixels)
        probs = np.full((len(pixels), self.classes), 0.3 / (self.classes - 1))
        probs[:, self.digit] = 0.7
        return probs


SHAPES = ["circle", "square", "triangle"]
COLOUR = {"dataset": "shapes", "classes": SHAPES, "image_shape": [16, 16, 3], "style": "plain"}


def red_square(size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 230))
    image.paste((200, 20, 20), (8, 6, size[0] - 8, size[1] - 6))
    return image


# --- the page's functions (fast) ------------------------------------------------------


def test_a_transparent_canvas_is_read_like_the_same_drawing_saved_as_a_file(tmp_path):
    canvas = seven()
    canvas.save(tmp_path / "seven.png")
    assert np.array_equal(from_image(canvas), decode(tmp_path / "seven.png"))
    gray = from_image(canvas)
    assert gray.max() == 255 and gray.min() < 50  # dark ink composited onto white paper


def test_a_drawing_is_answered_from_exactly_what_the_page_shows_as_seen():
    model = StandIn(7)
    canvas = seven()
    answer = demo.answer_drawing(model, demo.drawn_image({"background": None, "layers": [], "composite": canvas}))
    assert answer.digit == 7 and answer.message == ""
    expected = mnist_style(from_image(canvas))  # predict's preprocessing, the same functions
    assert np.array_equal(answer.seen, expected) and np.array_equal(model.seen[0][0], expected)
    assert [t["digit"] for t in answer.top()] == [7, 0, 1] and answer.top()[0]["probability"] == pytest.approx(0.7)

    html, chart, seen = demo.page_outputs(answer)
    assert re.search(r'id="demo-class" class="demo-digit">7<', html) and "70.0%" in html
    assert chart.count('class="demo-col"') == 10
    assert re.findall(r'class="demo-label">([^<]*)<', chart) == [str(d) for d in range(10)]
    assert len(re.findall(r'class="demo-value">(?:\d+%|&lt;1%)<', chart)) == 3  # the top 3 labelled, not the rest
    zoom = demo.seen_zoom((28, 28))
    assert zoom == 8 and seen.shape == (28 * zoom, 28 * zoom) and seen.dtype == np.uint8
    assert np.array_equal(seen[::zoom, ::zoom], np.rint(expected).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.png", b"not an image at all", "not an image"),
        ("empty.png", b"", "empty file"),
        ("blank.png", png_bytes(Image.new("L", (300, 200), 240)), "no digit found"),
        ("truncated.png", png_bytes(Image.new("L", (300, 200), 240))[:60], "cannot"),
    ],
)
def test_a_bad_upload_gets_a_one_line_message_and_no_model_call(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    model = StandIn()
    answer = demo.answer_file(model, tmp_path / name)
    assert answer.digit is None and message in answer.message and "\n" not in answer.message
    assert answer.message.startswith(name) and model.seen == []
    html, chart, seen = demo.page_outputs(answer)
    assert message in html and chart == "" and seen is None


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    from stages.lib import images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)  # the project's cap, for a canvas already in memory
    model = StandIn()
    Image.new("L", (400, 400), 255).save(tmp_path / "huge.png")
    assert "too large" in demo.answer_file(model, tmp_path / "huge.png").message
    assert "too large" in demo.answer_drawing(model, seven()).message  # a canvas too
    assert model.seen == []


def test_an_empty_or_cleared_canvas_asks_for_a_digit():
    model = StandIn()
    empty = Image.new("RGBA", (demo.CANVAS, demo.CANVAS), (0, 0, 0, 0))
    assert demo.answer_drawing(model, empty).message == "Draw a digit: the canvas is empty."
    assert demo.answer_drawing(model, demo.drawn_image(None)).message == "Draw a digit."
    assert demo.answer_file(model, None).digit is None and model.seen == []


def test_a_failing_model_or_preprocessing_is_a_message_not_a_crash(monkeypatch, capsys):
    def broken(pixels):
        raise RuntimeError("out of memory\nat some layer")

    answer = demo.answer_drawing(broken, seven())
    assert answer.digit is None and answer.message == "The model failed: RuntimeError: out of memory"
    assert demo.page_outputs(answer)[2] is not None  # what the model was given is still shown
    assert "demo: error: the model failed: RuntimeError: out of memory" in capsys.readouterr().err

    monkeypatch.setattr(demo, "from_image", lambda image: np.full((10,), 1.0))  # not 2-D: mnist_style trips
    answer = demo.answer_drawing(StandIn(), seven())
    assert answer.message.startswith("Cannot read the drawing: ") and "\n" not in answer.message


def test_a_good_upload_is_answered(tmp_path):
    seven().save(tmp_path / "seven.png")
    answer = demo.answer_file(StandIn(7), tmp_path / "seven.png")
    assert answer.digit == 7 and answer.seen.shape == (28, 28)


def test_a_bad_model_is_one_line_and_no_password_is_shown_for_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEMO_AUTH", raising=False)
    assert demo.main(["--model", str(tmp_path / "none.keras"), "--host", "0.0.0.0"]) == 2
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"demo: loading {tmp_path / 'none.keras'} ...",
        f"demo: error: cannot load the model: {tmp_path / 'none.keras'} not found: run `dvc repro` first, "
        "or pass --model URI",
    ]
    assert "password" not in out.out + out.err  # the page never started: no login to give
    assert demo.main(["--model", str(tmp_path / "none.keras")]) == 2
    assert all(demo.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.1.1"))
    assert not any(demo.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.org"))


# --- any data set's model (fast) -----------------------------------------------------------------


def test_the_task_follows_the_models_serving_config():
    assert demo.Task.of({}) == demo.MNIST  # a model that says nothing is MNIST's
    mnist = demo.MNIST
    assert mnist.digits and mnist.drawable and mnist.title == "Draw a digit" and mnist.prompt == "Draw a digit."
    assert mnist.seen_label == "What the model saw (28x28)"
    shapes = demo.Task.of(COLOUR)
    assert shapes.classes == tuple(SHAPES) and shapes.form.shape == (16, 16, 3) and shapes.form.style == "plain"
    assert not shapes.digits and not shapes.drawable  # upload only
    assert shapes.title == "shapes: upload an image" and shapes.prompt == "Upload an image."
    assert shapes.seen_label == "What the model saw (16x16, colour)"
    # Letters in MNIST's form: the sketchpad, and the page says image, not digit.
    letters = demo.Task.of({"dataset": "letters", "classes": list("abc"), "image_shape": [28, 28], "style": "digits"})
    assert letters.drawable and not letters.digits and letters.title == "letters: draw or upload an image"
    assert letters.prompt == "Draw an image."
    # Digits at another size: drawn too (a drawing is brought to 14x14 as a file is).
    small = demo.Task.of({"dataset": "mini", "image_shape": [14, 14], "style": "digits"})
    assert small.digits and small.drawable and small.prompt == "Draw a digit."
    canvas = Image.new("RGBA", (demo.CANVAS, demo.CANVAS))
    ImageDraw.Draw(canvas).line([(140, 60), (140, 220)], fill=(0, 0, 0, 255), width=16)
    seen = demo.answer_drawing(lambda x: np.full((len(x), 10), 0.1), canvas, small).seen
    assert seen.shape == (14, 14) and seen.max() > 100


def test_an_upload_to_a_colour_model_is_answered_with_class_names(tmp_path):
    task = demo.Task.of(COLOUR)
    red_square().save(tmp_path / "red.png")
    model = StandIn(1, classes=3)
    answer = demo.answer_file(model, tmp_path / "red.png", task)
    assert answer.message == "" and answer.name == "square" and answer.label == 1
    assert model.seen[0].shape == (1, 16, 16, 3) and answer.seen.shape == (16, 16, 3)
    from stages.tools.predict import Form, in_form

    assert np.array_equal(answer.seen, in_form(tmp_path / "red.png", Form("plain", (16, 16, 3))))  # predict's own
    assert answer.seen[8, 8, 0] > 150 and answer.seen[8, 8, 1] < 80  # red stays red: colour reaches the model
    assert answer.top() == [
        {"label": 1, "class": "square", "probability": pytest.approx(0.7)},
        {"label": 0, "class": "circle", "probability": pytest.approx(0.15)},
        {"label": 2, "class": "triangle", "probability": pytest.approx(0.15)},
    ]

    html, chart, seen = demo.page_outputs(answer)
    assert re.search(r'id="demo-class" class="demo-name">square<', html) and "70.0%" in html
    assert re.findall(r'class="demo-label">([^<]*)<', chart) == SHAPES
    assert 'title="square: 70.00%"' in chart and "demo-note" not in chart
    zoom = demo.seen_zoom((16, 16, 3))
    assert zoom == 14 and seen.shape == (16 * zoom, 16 * zoom, 3) and seen.dtype == np.uint8
    assert np.array_equal(seen[::zoom, ::zoom], np.rint(answer.seen).astype(np.uint8))


def test_a_bad_upload_to_a_colour_model_is_one_line_and_names_no_digit(tmp_path):
    task = demo.Task.of(COLOUR)
    (tmp_path / "notes.png").write_text("not an image")
    model = StandIn(0, classes=3)
    answer = demo.answer_file(model, tmp_path / "notes.png", task)
    assert answer.label is None and answer.message.startswith("notes.png: not an image") and model.seen == []
    assert demo.answer_file(model, None, task).message == "Upload a photo or scan of an image."
    Image.new("RGB", (30, 30), (250, 250, 250)).save(tmp_path / "blank.png")  # plain: a blank image is an image
    assert demo.answer_file(model, tmp_path / "blank.png", task).name == "circle"


def test_class_names_are_escaped_and_many_classes_show_the_most_likely():
    classes = [f"<c{i}>" for i in range(30)]
    task = demo.Task.of({"dataset": "many", "classes": classes, "image_shape": [8, 8], "style": "plain"})
    probabilities = np.linspace(1, 2, 30)
    probabilities /= probabilities.sum()
    answer = demo.Answer(probabilities=probabilities, seen=np.zeros((8, 8)), task=task)
    html, chart, _ = demo.page_outputs(answer)
    assert "&lt;c29&gt;" in html and "<c29>" not in html + chart
    labels = re.findall(r'class="demo-label">([^<]*)<', chart)
    assert labels == [f"&lt;c{i}&gt;" for i in range(10, 30)]  # the 20 most likely, in the classes' order
    assert "the 20 most likely of 30 classes" in chart


@pytest.mark.parametrize("how", ["DEMO_AUTH=0", "--no-auth"])
def test_a_non_loopback_host_without_auth_is_refused_in_one_line(tmp_path, capsys, monkeypatch, how):
    monkeypatch.delenv("DEMO_AUTH", raising=False)
    args = ["--model", str(tmp_path / "none.keras"), "--host", "0.0.0.0"]
    if how == "--no-auth":
        args.append(how)
    else:
        monkeypatch.setenv("DEMO_AUTH", "0")
    assert demo.main(args) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.splitlines()) == 1, out.err
    assert out.err.startswith("demo: error: refusing to serve the page on 0.0.0.0 without authentication"), out.err


class Served:
    """Stands in for the model, the app and ``serve``: records how the page would be launched."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[dict] = []
        monkeypatch.setattr(demo, "load", lambda uri: (StandIn(), "a stand-in", demo.MNIST))
        monkeypatch.setattr(demo, "build_app", lambda model, description, task: self)
        monkeypatch.setattr(
            demo, "serve", lambda app, host, port, auth=None: self.calls.append(demo.launch_options(host, port, auth))
        )

    def block_thread(self) -> None:
        pass


def test_off_loopback_the_page_asks_for_a_password_shown_once(capsys, monkeypatch):
    for name in ("DEMO_AUTH", "DEMO_USER", "DEMO_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    served = Served(monkeypatch)
    assert demo.main(["--host", "0.0.0.0", "--port", "7861"]) == 0
    options = served.calls[-1]
    assert options["server_name"] == "0.0.0.0" and options["server_port"] == 7861
    user, password = options["auth"]
    out = capsys.readouterr()
    assert user == "demo" and len(password) >= 20
    assert (out.out + out.err).count(password) == 1  # shown this once
    assert "shown this once" in out.out and out.out.strip().splitlines()[-1].startswith("demo: ready")

    monkeypatch.setenv("DEMO_PASSWORD", "a-password-from-the-environment")
    assert demo.main(["--host", "0.0.0.0"]) == 0
    assert served.calls[-1]["auth"] == ("demo", "a-password-from-the-environment")
    out = capsys.readouterr()
    assert "a-password-from-the-environment" not in out.out + out.err and "DEMO_PASSWORD" in out.out

    # On loopback: no login unless asked for (--auth or DEMO_AUTH=1).
    assert demo.main([]) == 0 and served.calls[-1]["auth"] is None and served.calls[-1]["server_name"] == "127.0.0.1"
    assert demo.main(["--auth"]) == 0 and served.calls[-1]["auth"] == ("demo", "a-password-from-the-environment")
    monkeypatch.setenv("DEMO_AUTH", "1")
    assert demo.main([]) == 0 and served.calls[-1]["auth"] is not None
    capsys.readouterr()


def test_the_launch_options_carry_the_login():
    options = demo.launch_options("0.0.0.0", 7860, ("demo", "pw-1234"))
    assert options["auth"] == ("demo", "pw-1234") and options["share"] is False
    assert demo.launch_options("127.0.0.1", 7860, None)["auth"] is None


@pytest.mark.slow
def test_the_page_says_which_registered_version_answers(tmp_path, monkeypatch):
    import mlflow

    from stages.lib.registry import CHAMPION, MODEL_NAME

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    client.create_registered_model(MODEL_NAME)
    for score in ("0.9712", "0.9788"):
        tags = {"model.kind": "cnn", "val_accuracy": score}
        version = client.create_model_version(MODEL_NAME, str(tmp_path), tags=tags).version
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    champion = f"models:/{MODEL_NAME}@{CHAMPION}"
    assert demo.describe_model(champion) == f"{champion}: version 2 (cnn, val_accuracy 0.9788)"
    assert (
        demo.describe_model(f"models:/{MODEL_NAME}/1")
        == f"models:/{MODEL_NAME}/1: version 1 (cnn, val_accuracy 0.9712)"
    )
    assert demo.describe_model("data/model/model.keras") == "data/model/model.keras"
    assert "s3cret" not in demo.describe_model("http://alice:s3cret@example.org/model")


# --- the running app (slow) -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    nn = pytest.importorskip("stages.lib.model")
    root = tmp_path_factory.mktemp("tiny")
    nn.configure(0)
    nn.save_model(nn.build([8], "relu", 0.0, "linear"), root / "model.keras")
    (root / "serving.json").write_text(
        json.dumps({"normalization": {"method": "minmax", "offset": 0.0, "scale": 255.0}, "output": "linear"})
    )
    return root / "model.keras"


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """A tiny untrained network on 16x16 colour images of three named classes, as the pipeline writes one for a
    folder of shapes (``serving.json`` with its data set, classes, image shape and style)."""
    nn = pytest.importorskip("stages.lib.model")
    root = tmp_path_factory.mktemp("colour")
    nn.configure(0)
    model = nn.build([8], "relu", 0.0, "softmax", input_shape=(16, 16, 3), classes=3, name="shapes")
    nn.save_model(model, root / "model.keras")
    config = {"normalization": {"method": "minmax", "offset": 0.0, "scale": 255.0}, "output": "softmax", **COLOUR}
    (root / "serving.json").write_text(json.dumps(config))
    return root / "model.keras"


@contextlib.contextmanager
def running_demo(model: Path | str | None, timeout_s: float = 120, cwd: Path = ROOT, env: dict | None = None):
    """`python -m stages.tools.demo` on a free port of 127.0.0.1, as `make demo` starts it; stopped by its pid.
    ``model`` None: the page's default (the champion of the data set ``cwd/params.yaml`` names); ``env``: more
    variables (MLflow's and Gradio's are not inherited). Gradio's cache is a temporary directory, removed after."""
    port = free_port()
    cache = tempfile.TemporaryDirectory(prefix="demo-cache-")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GRADIO_"))}, **(env or {})}
    env.update(PYTHONPATH=str(ROOT), GRADIO_TEMP_DIR=cache.name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.tools.demo", *(["--model", str(model)] if model else []), "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline, lines = time.monotonic() + timeout_s, []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("demo: ready"):
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert proc.poll() is None, "".join(lines)
        assert f"open http://127.0.0.1:{port}" in lines[-1]
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        cache.cleanup()


@pytest.mark.slow
def test_the_api_through_gradio_client(tiny_model, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    seven().save(tmp_path / "seven.png")
    (tmp_path / "notes.png").write_text("not an image")
    with running_demo(tiny_model) as url:
        components = page_components(url)
        assert {"file", "imageeditor"} <= components or {"file", "sketchpad"} <= components, components
        client = Client(url, verbose=False)
        assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/predict"]
        started = time.monotonic()
        digit, top = client.predict(handle_file(tmp_path / "seven.png"), api_name="/predict")
        seconds = time.monotonic() - started
        assert digit == top[0]["digit"] and len(top) == 3
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
        with pytest.raises(AppError, match=r"^notes.png: not an image"):
            client.predict(handle_file(tmp_path / "notes.png"), api_name="/predict")
        assert client.predict(handle_file(tmp_path / "seven.png"), api_name="/predict") == [digit, top] or (
            client.predict(handle_file(tmp_path / "seven.png"), api_name="/predict") == (digit, top)
        )  # the server keeps answering
        print(f"API round trip: {seconds * 1000:.0f} ms")

        # Everything the page loads is served by the app itself: scripts, styles, fonts.
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page)
        assert sources and all(not urlparse(s).netloc for s in sources), sources
        css = urllib.request.urlopen(f"{url}/theme.css", timeout=10).read().decode()
        assert "fonts.googleapis" not in css and not re.search(r"url\(['\"]?https?:", css)


def page_components(url: str) -> set[str]:
    """The kinds of component the running page shows (Gradio's /config)."""
    config = json.loads(urllib.request.urlopen(f"{url}/config", timeout=10).read())
    return {c["type"] for c in config["components"] if c.get("props", {}).get("visible", True) is not False}


@pytest.mark.slow
def test_a_colour_model_gets_an_upload_page_and_answers_class_names(colour_model, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    red_square().save(tmp_path / "red.png")
    (tmp_path / "notes.png").write_text("not an image")
    with running_demo(colour_model) as url:
        components = page_components(url)
        assert "file" in components and not components & {"sketchpad", "imageeditor"}, components
        page = urllib.request.urlopen(f"{url}/config", timeout=10).read().decode()
        assert "shapes: upload an image" in page and "What the model saw (16x16, colour)" in page
        client = Client(url, verbose=False)
        name, top = client.predict(handle_file(tmp_path / "red.png"), api_name="/predict")
        assert name in SHAPES and name == top[0]["class"] and len(top) == 3
        assert sorted(t["class"] for t in top) == SHAPES and {t["label"] for t in top} == {0, 1, 2}
        assert sum(t["probability"] for t in top) == pytest.approx(1, abs=1e-5)
        with pytest.raises(AppError, match=r"^notes.png: not an image"):
            client.predict(handle_file(tmp_path / "notes.png"), api_name="/predict")


@pytest.mark.slow
def test_drawn_digits_are_recognised_by_the_default_model(default_model):
    from stages.tools.predict import load_model

    total, per_digit = accuracy(load_model(str(default_model)).probabilities)
    print(f"drawn digits, dense default: {total:.3f}; per digit {per_digit}")
    assert total >= 0.90


# --- a real browser (slow) ------------------------------------------------------------------


def browser_programs() -> tuple[str | None, str | None]:
    """The browser and its driver: chromium (Debian's), or else Google Chrome; the chromedriver on PATH, or else
    in $CHROMEWEBDRIVER (where GitHub's Ubuntu runners keep one)."""
    chromium = shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chrome")
    driver_dir = os.environ.get("CHROMEWEBDRIVER")
    driver = shutil.which("chromedriver") or (driver_dir and shutil.which("chromedriver", path=driver_dir)) or None
    return chromium, driver


def browser(profile: Path):
    """Chromium or Chrome, headless, through its chromedriver, logging every network request; its profile in
    the folder ``profile`` (the test's own: a profile left in /tmp would be 3.5 MB a run)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_programs()
    if not chromium or not driver:
        pytest.skip(
            "no browser: chromium and chromedriver (.ci/run installs them) or google-chrome and its chromedriver "
            "(on PATH or in $CHROMEWEBDRIVER) are missing"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,820",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def draw(driver, canvas, strokes: list[list[tuple[float, float]]]) -> None:
    """Mouse strokes on the canvas, points given as fractions of its size."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = canvas.size["width"], canvas.size["height"]
    side = min(width, height) * 0.8  # the drawing area is a square in the middle of the canvas element

    def at(x: float, y: float) -> tuple[int, int]:
        return round((x - 0.5) * side), round((y - 0.5) * side)

    actions = ActionChains(driver, duration=10)
    for stroke in strokes:
        actions.move_to_element_with_offset(canvas, *at(*stroke[0])).click_and_hold()
        # Each move relative to the last point: a move to the element's offset has chromedriver locate the
        # element again (a third of a second a point on this page: 9 s for the 0's 28 points).
        for before, point in itertools.pairwise(stroke):
            (x0, y0), (x1, y1) = at(*before), at(*point)
            actions.move_by_offset(x1 - x0, y1 - y0)
        actions.release()
    actions.perform()


def shown_answer(driver, previous: str, timeout_s: float = 30) -> tuple[str, float]:
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        text = driver.find_element(By.ID, "demo-answer-box").text.strip()
        if text and text != previous:
            return text, time.monotonic() - started
        time.sleep(0.02)
    return driver.find_element(By.ID, "demo-answer-box").text.strip(), timeout_s


def requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", message["params"]).get("url", "")
            if urlparse(url).scheme in ("http", "https", "ws", "wss"):
                hosts.add(urlparse(url).hostname)
    return hosts


@pytest.mark.slow
def test_a_real_browser_draws_a_7_and_a_0(default_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    seven_strokes = [[(0.25, 0.2), (0.75, 0.2), (0.42, 0.85)]]
    zero_strokes = [[(x, y) for x, y in STYLES[0][0][0]]]
    (tmp_path / "notes.png").write_text("not an image")
    with running_demo(default_model) as url:
        driver = browser(tmp_path / "chromium-profile")
        try:
            driver.get(url)
            canvas = WebDriverWait(driver, 30).until(
                lambda d: d.find_element(By.CSS_SELECTOR, "#demo-sketchpad canvas")
            )
            time.sleep(1)  # the pen is picked when the page has loaded
            assert "Draw a digit." in driver.find_element(By.ID, "demo-answer-box").text

            draw(driver, canvas, seven_strokes)
            answer, seconds_7 = shown_answer(driver, "Draw a digit.")
            assert answer.split()[0] == "7", answer
            assert len(driver.find_elements(By.CSS_SELECTOR, "#demo-chart .demo-col")) == 10
            driver.save_screenshot(str(tmp_path / "demo.png"))

            driver.find_element(By.CSS_SELECTOR, '#demo-sketchpad button[aria-label="Clear canvas"]').click()
            cleared, _ = shown_answer(driver, answer)
            assert cleared == "Draw a digit.", cleared
            draw(driver, canvas, zero_strokes)
            answer, seconds_0 = shown_answer(driver, cleared)
            assert answer.split()[0] == "0", answer

            # A file that is not an image: one line in the page, and the page keeps answering.
            driver.find_element(By.CSS_SELECTOR, "#demo-upload input[type=file]").send_keys(str(tmp_path / "notes.png"))
            message, _ = shown_answer(driver, answer)
            assert message == "notes.png: not an image (or a format Pillow cannot read)", message

            hosts = requested_hosts(driver)
            assert hosts == {"127.0.0.1"}, hosts  # nothing fetched from anywhere else
        finally:
            driver.quit()
    print(f"browser: 7 shown {seconds_7:.2f}s after the stroke ended, 0 after {seconds_0:.2f}s")
    if os.environ.get("DEMO_SCREENSHOT"):  # DEMO_SCREENSHOT=docs/demo.png refreshes the README's picture
        Image.open(tmp_path / "demo.png").convert("RGB").quantize(64).save(os.environ["DEMO_SCREENSHOT"], optimize=True)
