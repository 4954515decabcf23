"""Your own images end to end (slow): a class-folder data set of coloured shapes, any sizes and modes, through
the real fetch, preprocess, train, evaluate and publish stages, then served over HTTP as `make serve` serves it,
read by `mnist-predict`'s functions and answered by the demo page's API; class names checked at each step, the data
set's own registered model and experiment, MNIST's untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.tools.server import free_port
from tests.conftest import mlflow_runs, run_in, tiny_clone
from tests.stages.test_publish import post
from tests.tools.test_demo import page_components, running_demo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["circle", "square", "triangle"]


def shape_image(kind: str, rng: np.random.Generator, size: tuple[int, int], mode: str):
    """A filled shape in a random colour on a random light background, at ``size``, in ``mode``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    box = [w * 0.2 + rng.uniform(-2, 2), h * 0.2 + rng.uniform(-2, 2), w * 0.8, h * 0.8]
    colour = tuple(int(v) for v in rng.integers(0, 120, 3))
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])], fill=colour)
    return image.convert(mode)


def make_shapes(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    """``root/<class>/<i>.(png|jpg)``: mixed sizes, RGB, gray and RGBA files."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            mode = ["RGB", "L", "RGBA"][i % 3]
            image = shape_image(kind, rng, size, mode)
            image.save(root / kind / (f"{i}.jpg" if mode == "RGB" and i % 2 else f"{i}.png"))
    return root


def run_stage(stage: str, cwd: Path, **env: str):
    return run_in([sys.executable, "-m", f"stages.{stage}"], cwd, PYTHONPATH=str(ROOT), DVC_ROOT=str(cwd), **env)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes-project")
    make_shapes(root / "data" / "external" / "shapes")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"].update(dataset="folder", name="shapes", path="data/external/shapes")
    params["preprocess"].update(image_size=[16, 16], channels=3, style="plain", val_fraction=0.2, test_fraction=0.2)
    params["model"]["hidden_units"] = [32]
    params["train"].update(epochs=8, batch_size=16, learning_rate=0.005)
    params["evaluate"].update(gallery_size=4, sample_size=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ["fetch", "preprocess", "train", "evaluate"]:
        result = run_stage(stage, root)
        assert result.returncode == 0, f"{stage}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return root


def test_a_folder_of_your_images_trains_with_its_class_names(project):
    stats = json.loads((project / "data" / "prepared" / "stats.json").read_text())
    assert stats["dataset"]["classes"] == CLASSES and stats["dataset"]["name"] == "shapes"
    assert stats["shapes"]["x_train"][1:] == [16, 16, 3]
    serving = json.loads((project / "data" / "model" / "serving.json").read_text())
    assert serving["classes"] == CLASSES and serving["image_shape"] == [16, 16, 3] and serving["style"] == "plain"
    per_class = (project / "reports" / "evaluate" / "per_class.csv").read_text().splitlines()
    assert per_class[0].startswith("class,") and [row.split(",")[0] for row in per_class[1:]] == CLASSES
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.8, metrics  # shapes are easy: a broken pipeline guesses (1/3)
    predictions = (project / "reports" / "evaluate" / "predictions.csv").read_text().splitlines()[1:]
    assert {row.split(",")[0] for row in predictions} == set(CLASSES)


@pytest.fixture(scope="module")
def published(project) -> str:
    """The publish stage's output, run once: the shapes model registered as shapes-classifier version 1."""
    result = run_stage("publish", project)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_it_is_published_under_its_own_name_and_serves_class_names(project, published, tmp_path):
    import mlflow

    uri = f"sqlite:///{project}/mlflow.db"
    assert "registered shapes-classifier version 1" in published, published
    client = mlflow.MlflowClient(uri)
    assert client.get_experiment_by_name("mnist") is None and mlflow_runs(uri) == []
    assert [m.name for m in client.search_registered_models()] == ["shapes-classifier"]
    [run] = client.search_runs([client.get_experiment_by_name("shapes").experiment_id])
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"shapes-train", "shapes-val", "shapes-test"}

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model("models:/shapes-classifier@champion", dst_path=str(tmp_path))  # not /tmp's
    x_test = np.load(project / "data" / "prepared" / "x_test.npy", allow_pickle=False)
    raw = np.clip(np.round(x_test[:6] * 255), 0, 255).astype(np.float32)
    frame = served.predict(raw)
    assert list(frame.columns) == ["label", "class", "probabilities"]
    assert set(frame["class"]) <= set(CLASSES) and len(frame["probabilities"][0]) == 3
    with pytest.raises(Exception, match=r"does not match expected shape \(-1, 16, 16, 3\)"):  # MLflow's schema
        served.predict(np.zeros((1, 28, 28), dtype=np.float32))

    again = run_stage("publish", project)
    assert "this result is already in" in again.stdout, again.stdout + again.stderr


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1):
                return
        except OSError:
            assert proc.poll() is None, f"mlflow models serve exited with status {proc.returncode}"
            assert time.monotonic() < deadline, "mlflow models serve did not start"
            time.sleep(0.5)


def test_the_champion_is_served_over_http_read_by_predict_and_answered_by_the_demo(project, published, monkeypatch):
    """`make serve`'s command on 127.0.0.1 (the champion of the data set params.yaml names), mnist-predict's
    functions and the demo page's API agree on the class of the same image files."""
    from gradio_client import Client, handle_file

    from stages.tools.predict import Form, Outcome, load_model, prepare

    store = f"sqlite:///{project}/mlflow.db"
    # The model `make serve` and `make demo` serve by default, read from this project's params.yaml.
    champion = run_in(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from stages.lib.registry import champion_uri; "
            "print(champion_uri(Path('params.yaml')))",
        ],
        project,
        PYTHONPATH=str(ROOT),
    )
    assert champion.stdout.strip() == "models:/shapes-classifier@champion", champion.stdout + champion.stderr
    shapes = project / "data" / "external" / "shapes"
    files = [next((shapes / kind).glob(f"{i}.*")) for kind in CLASSES for i in (1, 3)]  # a gray PNG, an RGB JPEG

    # mnist-predict's functions: the files in the model's form, the answers named after its classes.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    probabilities, config, source = load_model(champion.stdout.strip())
    assert source == "models:/shapes-classifier@champion, onnxruntime"
    assert config["classes"] == CLASSES and Form.of(config) == Form("plain", (16, 16, 3))
    prepared = [prepare(Outcome(str(f)), Form.of(config)) for f in files]
    assert [o.error for o in prepared] == [None] * len(files)
    pixels = np.stack([o.pixels for o in prepared])
    expected = probabilities(pixels)
    expected_classes = [CLASSES[i] for i in expected.argmax(axis=1)]
    assert sum(c == f.parent.name for c, f in zip(expected_classes, files, strict=True)) >= len(files) - 1

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "MODEL_"))}
    env.update(MLFLOW_TRACKING_URI=store, PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(ROOT))
    # The code is ROOT's (PYTHONPATH), the params and data this directory's: serve and the demo would take their
    # default model from ROOT's params.yaml (MNIST's), as from the clone they live in; it is given here.
    model = champion.stdout.strip()
    serve = subprocess.Popen(  # make serve's command: the champion, two workers
        [sys.executable, "-m", "stages.tools.serve", "--port", str(port), "--workers", "2", "--model", model],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with running_demo(model, timeout_s=300, cwd=project, env={"MLFLOW_TRACKING_URI": store}) as demo_url:
            served = f"http://127.0.0.1:{port}"
            wait_until_up(serve, served)

            status, answer = post(served, json.dumps({"inputs": pixels.tolist()}).encode())
            assert status == 200, answer
            rows = answer["predictions"]
            assert set(rows[0]) == {"label", "class", "probabilities"}
            assert [r["class"] for r in rows] == expected_classes
            assert [r["label"] for r in rows] == expected.argmax(axis=1).tolist()
            np.testing.assert_allclose([r["probabilities"] for r in rows], expected, rtol=1e-4, atol=1e-6)
            status, error = post(served, json.dumps({"inputs": np.zeros((1, 28, 28)).tolist()}).encode())
            assert status == 400 and "16" in error.get("message", ""), error  # the wrong shape: a clear 400

            components = page_components(demo_url)
            assert "file" in components and not components & {"sketchpad", "imageeditor"}, components
            client = Client(demo_url, verbose=False)
            for file, want, probs in zip(files, expected_classes, expected, strict=True):
                name, top = client.predict(handle_file(file), api_name="/predict")
                assert name == want and top[0] == {
                    "label": CLASSES.index(want),
                    "class": want,
                    "probability": top[0]["probability"],
                }
                assert top[0]["probability"] == pytest.approx(probs.max(), rel=1e-4, abs=1e-6)
                assert sorted(t["class"] for t in top) == CLASSES
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)


def test_an_idx_data_set_with_class_names_goes_through_under_its_own_name(tmp_path):
    import gzip

    import mlflow

    from tests.conftest import make_synthetic

    root = tmp_path / "bands-project"
    source = root / "data" / "external" / "bands"
    source.mkdir(parents=True)
    for name, data in make_synthetic(n_train_per_class=30, n_test_per_class=6, seed=5).files.items():
        (source / f"{name}.gz").write_bytes(gzip.compress(data))
    names = [f"band-{i}" for i in range(10)]
    (source / "classes.txt").write_text("\n".join(names) + "\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"].update(dataset="idx", name="bands", path="data/external/bands")
    params["preprocess"].update(image_size=[14, 14], val_fraction=0.2)
    params["model"]["hidden_units"] = [32]
    params["train"].update(epochs=6, batch_size=16, learning_rate=0.005)
    params["evaluate"].update(gallery_size=4, sample_size=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ["fetch", "preprocess", "train", "evaluate", "publish"]:
        result = run_stage(stage, root)
        assert result.returncode == 0, f"{stage}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert "registered bands-classifier version 1" in result.stdout
    stats = json.loads((root / "data" / "prepared" / "stats.json").read_text())
    assert stats["dataset"]["classes"] == names and stats["shapes"]["x_test"] == [60, 14, 14]
    confusions = (root / "reports" / "evaluate" / "per_class.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in confusions[1:]] == names
    assert json.loads((root / "reports" / "metrics.json").read_text())["test_accuracy"] > 0.8
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    assert client.get_registered_model("bands-classifier").aliases == {"champion": 1}


def test_a_bad_image_stops_dvc_repro_in_one_line_and_keeps_the_previous_arrays(tmp_path):
    """Through DVC, as a user meets it: DVC deletes a stage's outputs before running it unless they persist, and
    preprocess's must (a truncated file added to the folder must not cost the arrays that were there)."""
    path = tiny_clone(tmp_path / "clone")
    shapes = make_shapes(path / "data" / "external" / "shapes", per_class=8)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["fetch"].update(dataset="folder", name="shapes", path="data/external/shapes")
    params["preprocess"].update(image_size=[8, 8], channels=3, style="plain", val_fraction=0.25, test_fraction=0.25)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepared = path / "data" / "prepared"

    def arrays() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(prepared.iterdir())}

    first = run_in(["dvc", "repro", "preprocess"], path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    before = arrays()
    (shapes / "circle" / "cut.png").write_bytes((shapes / "circle" / "0.png").read_bytes()[:60])
    failed = run_in(["dvc", "repro", "preprocess"], path)
    assert failed.returncode != 0
    said = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("preprocess: error:")]
    assert len(said) == 1 and said[0].startswith("preprocess: error: circle/cut.png: cannot decode ("), said
    assert arrays() == before  # the previous arrays, every byte
    (shapes / "circle" / "cut.png").unlink()
    again = run_in(["dvc", "repro", "preprocess"], path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    # The folder as it was: fetch restores its data/raw/, and the kept arrays are the ones dvc.lock records.
    assert "Stage 'preprocess' didn't change, skipping" in again.stdout, again.stdout
    assert arrays() == before
