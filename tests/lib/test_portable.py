"""The portable (ONNX) form: made deterministic and checked where it is trained, and how the served model,
predict and evaluate choose between it and Keras.

Fast tests use a small ONNX graph built with ``onnx.helper`` (no TensorFlow);
the slow ones export real Keras networks and check the pipeline's model on all
10,000 test images.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.serving import classifier
from stages.serving.classifier import Classifier, ModelUnavailable, onnx_problem
from tests.conftest import imported_modules, linear_onnx
from tests.tools.test_predict import drawn_seven, png

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def onnx_model(tmp_path) -> Path:
    """data/model/ with serving.json and model.onnx of a linear classifier (no Keras file)."""
    weights = np.random.default_rng(0).normal(0, 0.05, (28 * 28, 10))
    directory = tmp_path / "model"
    directory.mkdir()
    data = linear_onnx(weights)
    (directory / "model.onnx").write_bytes(data)
    config = {
        "normalization": {"method": "minmax", "offset": 0.0, "scale": 255.0},
        "output": "softmax",
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(data).hexdigest()},
    }
    (directory / "serving.json").write_text(json.dumps(config))
    return directory


def answers_in_subprocess(directory: Path, *setup: str, runtime: str = "auto") -> subprocess.CompletedProcess:
    """Classifier(...).probabilities of two images in a fresh process, after ``setup`` lines (say, hiding Keras);
    prints the probabilities' sum and whether TensorFlow was imported."""
    code = "\n".join(
        [
            "import sys",
            *setup,
            "import numpy as np",
            "from stages.serving.classifier import Classifier",
            f"c = Classifier({str(directory / 'model.keras')!r}, {str(directory / 'serving.json')!r},"
            f" {str(directory / 'model.onnx')!r}, runtime={runtime!r})",
            "p = c.probabilities(np.full((2, 28, 28), 100.0, np.float32))",
            "print(c.runtime, p.shape, round(float(p.sum()), 4), sys.modules.get('tensorflow') is not None)",
        ]
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_sound_onnx_form_answers_without_importing_tensorflow(onnx_model):
    result = answers_in_subprocess(onnx_model)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnxruntime", "(2,", "10)", "2.0", "False"]
    assert result.stderr == ""
    hidden = answers_in_subprocess(onnx_model, "sys.modules['keras'] = sys.modules['tensorflow'] = None")
    assert hidden.stdout == result.stdout  # as in the inference-only environment


def test_the_onnx_answer_is_the_graphs_on_normalized_pixels(onnx_model):
    model = Classifier(onnx_model / "model.keras", onnx_model / "serving.json", onnx_model / "model.onnx")
    pixels = np.random.default_rng(1).uniform(0, 255, (5, 28, 28)).astype(np.float32)
    weights = np.random.default_rng(0).normal(0, 0.05, (28 * 28, 10))
    logits = (pixels.reshape(5, -1) / 255.0) @ weights
    assert model.runtime == "onnxruntime"
    np.testing.assert_allclose(model.probabilities(pixels), classifier.softmax(logits), atol=1e-6)


def test_a_damaged_or_missing_onnx_form_is_never_used(onnx_model):
    config = json.loads((onnx_model / "serving.json").read_text())
    assert onnx_problem(onnx_model / "model.onnx", config) is None
    assert "is missing" in onnx_problem(onnx_model / "absent.onnx", config)
    assert onnx_problem(None, {"onnx": None}) == "the model has no ONNX form"
    data = bytearray((onnx_model / "model.onnx").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte, in a weight
    (onnx_model / "model.onnx").write_bytes(bytes(data))
    assert "is damaged: sha256" in onnx_problem(onnx_model / "model.onnx", config)
    with pytest.raises(ModelUnavailable, match=r"is damaged: sha256 .* \(MODEL_RUNTIME=onnx asks for it\)"):
        Classifier(onnx_model / "model.keras", onnx_model / "serving.json", onnx_model / "model.onnx", "onnx")


def test_without_keras_a_model_without_a_usable_onnx_form_gets_one_line(onnx_model):
    (onnx_model / "model.onnx").write_bytes(b"not onnx")
    result = answers_in_subprocess(onnx_model, "sys.modules['keras'] = None")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("stages.serving.classifier.ModelUnavailable: its ONNX form (model.onnx) is damaged")
    assert "Keras is not installed here (an inference-only environment)" in last


@pytest.mark.parametrize("damaged", [False, True], ids=["sound-onnx", "damaged-onnx"])
def test_without_keras_the_keras_runtime_asked_for_gets_one_line_that_says_so(onnx_model, damaged):
    if damaged:
        (onnx_model / "model.onnx").write_bytes(b"not onnx")
    result = answers_in_subprocess(onnx_model, "sys.modules['keras'] = None", runtime="keras")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "stages.serving.classifier.ModelUnavailable: the keras runtime was asked for (--runtime keras, "
        "RUNTIME=keras or MODEL_RUNTIME=keras), and Keras is not installed here (an inference-only environment): "
    ), last
    advice = "this model has no usable ONNX form" if damaged else "leave the runtime to auto (its ONNX form)"
    assert last.endswith(f"{advice}, or use the full environment (make install)"), last


def test_a_keras_that_fails_to_import_is_named_with_its_error_and_its_messages_kept(onnx_model, tmp_path):
    """Installed but broken (say TensorFlow's library missing): not "not installed", and what it wrote to standard
    error while failing is still there, though a sound import's start-up lines are held back."""
    broken = tmp_path / "site" / "keras"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "import os\nos.write(2, b'native: libtensorflow_framework.so.2 not found\\n')\n"
        "raise ImportError('libtensorflow_framework.so.2: cannot open shared object file')\n"
    )
    result = answers_in_subprocess(onnx_model, f"sys.path.insert(0, {str(tmp_path / 'site')!r})", runtime="keras")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "native: libtensorflow_framework.so.2 not found" in lines
    assert lines[-1].startswith(
        "stages.serving.classifier.ModelUnavailable: the keras runtime was asked for (--runtime keras, "
        "RUNTIME=keras or MODEL_RUNTIME=keras), and Keras cannot be imported here (ImportError: "
        "libtensorflow_framework.so.2: cannot open shared object file): leave the runtime to auto"
    ), lines[-1]


def test_onnxruntime_is_told_to_send_no_usage_events(onnx_model, monkeypatch):
    """onnxruntime 1.29 on sends usage events to Microsoft (traced: DNS queries for mobile.events.data.microsoft.com
    from any session) unless ORT_DISABLE_TELEMETRY is set before it starts; a user's own setting is kept."""
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    classifier.onnx_session(onnx_model / "model.onnx")
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")
    classifier.onnx_session(onnx_model / "model.onnx")
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "0"


def test_an_unknown_runtime_is_refused(onnx_model, monkeypatch):
    monkeypatch.setenv("MODEL_RUNTIME", "tflite")
    with pytest.raises(ModelUnavailable, match="MODEL_RUNTIME=tflite: expected one of auto, onnx, keras"):
        Classifier(onnx_model / "model.keras", onnx_model / "serving.json", onnx_model / "model.onnx")


def test_usable_cores_are_the_affinity_within_the_cgroup_quota(tmp_path, monkeypatch):
    from stages.serving import cores

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cores.quota(tmp_path) == 1.5
    monkeypatch.setattr(cores, "affinity", lambda: 16)
    assert cores.usable(tmp_path) == 2  # a quota of 1.5 cores: two threads, not sixteen
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores.usable(tmp_path) == 16
    monkeypatch.setattr(cores, "affinity", lambda: 1)
    assert cores.usable(tmp_path) == 1


def test_onnx_runs_on_the_cores_this_process_may_use(onnx_model, monkeypatch):
    def threads() -> int:
        return classifier.onnx_session(onnx_model / "model.onnx").get_session_options().intra_op_num_threads

    monkeypatch.delenv(classifier.THREADS_ENV, raising=False)
    monkeypatch.setattr(classifier, "usable_cores", lambda: 3)
    assert threads() == 3  # not onnxruntime's own count of the machine's cores
    monkeypatch.setenv(classifier.THREADS_ENV, "1")  # make serve: one per worker
    assert threads() == 1


def test_train_threads_auto_keeps_a_dense_network_on_one_thread(monkeypatch):
    from stages.lib import training
    from stages.serving import cores

    monkeypatch.setattr(cores, "usable", lambda: 6)
    dense = {"kind": "dense", "dropout": 0.0}
    assert training.backend_settings(dense)["threads"] == 1
    assert training.backend_settings({"kind": "cnn", "dropout": 0.0})["threads"] == 6
    assert training.backend_settings({"kind": "dense", "dropout": 0.2}, "auto")["threads"] == 6
    assert training.backend_settings(dense, 3)["threads"] == 3


# --- real exports (slow: TensorFlow) -------------------------------------------------------------------------


def tiny_network(kind: str):
    from stages.lib import model as nn

    nn.configure(0)
    if kind == "cnn":
        return nn.build([16], "relu", 0.0, "linear", kind="cnn", cnn={**nn_cnn_defaults(), "filters": [4, 8]})
    return nn.build([16], "relu", 0.0, "softmax")


def nn_cnn_defaults() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())["model"]["cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "cnn"])
def test_an_export_is_deterministic_and_agrees_with_keras(kind, tmp_path):
    from stages.lib import portable

    network = tiny_network(kind)
    x = np.random.default_rng(2).uniform(0, 1, (300, 28, 28)).astype(np.float32)
    output = "linear" if kind == "cnn" else "softmax"
    first = portable.export(network, tmp_path / "a.onnx", x, output)
    second = portable.export(network, tmp_path / "b.onnx", x, output)  # the converter's counters have moved on
    assert first == second == hashlib.sha256((tmp_path / "a.onnx").read_bytes()).hexdigest()
    session = classifier.onnx_session(tmp_path / "a.onnx")
    assert [i.name for i in session.get_inputs()] == ["pixels"] and session.get_outputs()[0].name == "outputs"
    expected = portable.as_probabilities(np.asarray(network(x, training=False)), output)
    got = portable.as_probabilities(session.run(["outputs"], {"pixels": x})[0], output)
    assert np.abs(got - expected).max() <= portable.TOLERANCE
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.slow
def test_a_refused_or_failed_export_writes_nothing_and_says_why(tmp_path, monkeypatch, capsys):
    from stages import train
    from stages.lib import portable

    network = tiny_network("dense")
    x = np.random.default_rng(3).uniform(0, 1, (50, 28, 28)).astype(np.float32)
    stale = tmp_path / "model.onnx"
    stale.write_bytes(b"an earlier model's export")
    monkeypatch.setattr(portable, "TOLERANCE", -1.0)  # every export now fails its check
    form, reason = train.make_portable(network, x, "softmax", stale)
    assert form is None and reason.startswith("the model has no ONNX form (the ONNX form differs from Keras")
    assert not stale.exists() and not list(tmp_path.glob("*.onnx*"))
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("train: no ONNX form: the ONNX form differs from Keras on the 50 check images")
    assert out[-1].endswith("; the model is served through Keras alone")

    monkeypatch.setattr(portable, "TOLERANCE", 1e-5)

    def refuse(*args, **kwargs):
        raise ValueError("Unsupported ops: MyCustomOp\nmore detail")

    monkeypatch.setattr(type(network), "export", refuse)
    with pytest.raises(portable.Refused, match=r"^the ONNX converter \(tf2onnx\) refused the network: ValueError: "):
        portable.export(network, stale, x)
    assert not stale.exists()

    # A graph onnxruntime cannot load (an op it lacks, a damaged file): refused in one line, not a crash.
    with pytest.raises(portable.Refused, match=r"^onnxruntime cannot run the ONNX form: \w+: .+$"):
        portable.check(network, b"not an ONNX graph", x)


@pytest.mark.slow
def test_the_pipelines_onnx_form_agrees_with_keras_on_all_10000_test_images(default_model):
    from stages.lib import idx

    directory = default_model.parent  # the default network, trained and exported as the train stage does
    config = json.loads((directory / "serving.json").read_text())
    assert config["onnx"]["file"] == "model.onnx", config.get("onnx_refused")
    raw = Path(__file__).resolve().parents[2] / "data" / "raw"
    images = idx.read(raw / "t10k-images-idx3-ubyte").astype(np.float32)
    paths = (directory / "model.keras", directory / "serving.json", directory / "model.onnx")
    light, keras = Classifier(*paths, runtime="onnx"), Classifier(*paths, runtime="keras")
    assert (light.runtime, keras.runtime) == ("onnxruntime", "keras")
    p_light, p_keras = light.probabilities(images), keras.probabilities(images)
    assert len(images) == 10_000
    assert np.abs(p_light - p_keras).max() <= 1e-5
    assert (p_light.argmax(axis=1) == p_keras.argmax(axis=1)).all()


@pytest.mark.slow
def test_predict_answers_the_same_through_onnx_without_tensorflow_and_through_keras(tmp_path):
    from stages import train
    from stages.lib import model as nn

    network = tiny_network("dense")
    directory = tmp_path / "model"
    nn.save_model(network, directory / "model.keras")
    x = np.random.default_rng(4).uniform(0, 1, (64, 28, 28)).astype(np.float32)
    form, _ = train.make_portable(network, x, "softmax", directory / "model.onnx")
    config = {"normalization": {"method": "minmax", "offset": 0.0, "scale": 255.0}, "output": "softmax"}
    (directory / "serving.json").write_text(json.dumps({**config, "onnx": form}))
    (tmp_path / "seven.png").write_bytes(png(drawn_seven()))
    command = Path(sys.executable).parent / "mnist-predict"
    answers = {}
    for runtime in ("auto", "keras"):
        result = subprocess.run(
            [command, str(tmp_path / "seven.png"), "--json", "--model", str(directory), "--runtime", runtime],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        imported = imported_modules(result.stderr)
        assert ("tensorflow" in imported) == (runtime == "keras")
        answers[runtime] = json.loads(result.stdout)
    assert answers["auto"]["digit"] == answers["keras"]["digit"]
    np.testing.assert_allclose(answers["auto"]["probabilities"], answers["keras"]["probabilities"], atol=1e-5)
