"""predict: MNIST-style preprocessing of people's images, bad inputs, the command line, the quality gate."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from stages.lib.images import CENTRE, ImageError, decode, mnist_style
from stages.tools import predict
from stages.tools.predict import expand, prepare
from tests.conftest import imported_modules, user_environment
from tests.photos import write_photos

ROOT = Path(__file__).resolve().parents[2]


def drawn_seven(size=(300, 200), ink=30, paper=235, width=12) -> Image.Image:
    """A dark 7 on light paper, off-centre, like a photo of a drawing."""
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    draw.line([(60, 40), (150, 40), (90, 170)], fill=ink, width=width)
    return image


def ink_box(pixels: np.ndarray, level: float = 30) -> tuple[int, int]:
    rows, cols = np.nonzero(pixels > level)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_dark_on_light_becomes_light_on_dark_20px_and_centred():
    out = mnist_style(np.asarray(drawn_seven(), dtype=float))
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out[0].max() == 0 and out[:, 0].max() == 0  # black background
    assert out.max() > 200  # light ink
    assert max(ink_box(out, 0)) == 20
    com = ndimage.center_of_mass(out)
    assert abs(com[0] - CENTRE[0]) <= 0.5 and abs(com[1] - CENTRE[1]) <= 0.5


def test_aspect_ratio_is_kept():
    image = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(image).rectangle([90, 20, 109, 179], fill=255)  # a 20 x 160 bar: 1:8
    height, width = ink_box(mnist_style(np.asarray(image, dtype=float)), 60)
    assert height == 20 and width in (2, 3)


def test_noise_jpeg_artefacts_and_a_faint_shadow_do_not_widen_the_box():
    rng = np.random.default_rng(0)
    clean = np.asarray(drawn_seven(), dtype=float)
    noisy = clean + rng.normal(0, 10, clean.shape)
    noisy[:, 250:] -= 40  # a faint shadow along one side
    noisy[10:12, 280:282] = 0  # two dark specks far away
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=60)
    out = mnist_style(np.asarray(Image.open(buffer), dtype=float))
    reference = mnist_style(clean)
    assert abs(ndimage.center_of_mass(out)[1] - ndimage.center_of_mass(reference)[1]) < 1
    assert np.abs(out - reference).mean() < 15


def test_blank_image_has_no_digit():
    with pytest.raises(ImageError, match="no digit found"):
        mnist_style(np.full((50, 50), 240.0))


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: save(drawn_seven().convert("RGB"), p / "rgb.png"),
        lambda p: save(drawn_seven().convert("P"), p / "palette.png"),
        lambda p: save(drawn_seven().convert("CMYK"), p / "cmyk.jpg"),
        lambda p: save(Image.fromarray(np.asarray(drawn_seven(), dtype=np.uint16) * 257), p / "16bit.png"),
        lambda p: save(drawn_seven().convert("RGB").convert("RGBA"), p / "rgba.webp"),
        lambda p: save(drawn_seven(), p / "gray.tiff"),
        lambda p: save(drawn_seven(), p / "gray.bmp"),
    ],
)
def test_formats_and_modes_decode_to_the_same_digit(tmp_path, make):
    reference = mnist_style(np.asarray(drawn_seven(), dtype=float))
    out = mnist_style(decode(make(tmp_path)))
    assert np.abs(out - reference).mean() < 8


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (300, 200), (0, 0, 0, 0))  # transparent black: white once composited
    ImageDraw.Draw(rgba).line([(60, 40), (150, 40), (90, 170)], fill=(0, 0, 0, 255), width=12)
    out = mnist_style(decode(save(rgba, tmp_path / "t.png")))
    reference = mnist_style(np.asarray(drawn_seven(ink=0, paper=255), dtype=float))
    assert np.abs(out - reference).mean() < 8


def test_exif_orientation_is_applied(tmp_path):
    rotated = drawn_seven().rotate(90, expand=True)  # stored sideways, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    path = save(rotated, tmp_path / "exif.jpg", exif=exif, quality=95)
    reference = mnist_style(np.asarray(drawn_seven(), dtype=float))
    assert np.abs(mnist_style(decode(path)) - reference).mean() < 10


def test_an_animated_gif_uses_its_first_frame(tmp_path):
    first, second = drawn_seven(), Image.new("L", (300, 200), 235)
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second])
    assert mnist_style(decode(path)).max() > 200


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: (p / "notes.png").write_text("not an image"), "not an image"),
        (lambda p: (p / "empty.png").write_bytes(b""), "empty file"),
        (lambda p: (p / "blank.png").write_bytes(png(Image.new("L", (40, 40), 250))), "no digit found"),
        (lambda p: (p / "cut.png").write_bytes(png(drawn_seven())[:300]), "cannot decode"),
    ],
)
def test_bad_files_get_a_one_line_reason(tmp_path, setup, message):
    setup(tmp_path)
    [outcome] = expand([str(tmp_path)])
    prepare(outcome)
    assert outcome.pixels is None and message in outcome.error and "\n" not in outcome.error


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = save(drawn_seven(), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large to decode safely"):
        decode(path)


def test_paths_directories_and_globs(tmp_path):
    (tmp_path / "b.png").write_bytes(png(drawn_seven()))
    (tmp_path / "a.jpg").write_bytes(png(drawn_seven()))
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    found = expand(
        [
            str(tmp_path),
            str(tmp_path / "*.png"),
            str(tmp_path / "missing.png"),
            str(tmp_path / "empty"),
            str(tmp_path / "*.gif"),
        ]
    )
    assert [Path(o.path).name for o in found] == ["a.jpg", "b.png", "b.png", "missing.png", "empty", "*.gif"]
    errors = [o.error for o in found]
    assert errors[:3] == [None, None, None]
    assert errors[3:] == ["no such file", "directory has no image files", "no file matches this pattern"]


def test_a_directory_that_cannot_be_listed_is_its_own_line_and_the_rest_is_read(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    (tmp_path / "seven.png").write_bytes(png(drawn_seven()))
    listing = Path.iterdir

    def iterdir(self):  # as for a directory of another user's, mode 700 (the tests run as root, who may read it)
        if self.name == "locked":
            raise PermissionError(13, "Permission denied")
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    found = expand([str(tmp_path / "locked"), str(tmp_path / "seven.png")])
    assert [(Path(o.path).name, o.error) for o in found] == [
        ("locked", "cannot list this directory (Permission denied)"),
        ("seven.png", None),
    ]


def test_an_existing_file_with_glob_characters_is_a_file(tmp_path):
    (tmp_path / "digit[1].png").write_bytes(png(drawn_seven()))
    (tmp_path / "digit1.png").write_bytes(png(drawn_seven()))  # what the pattern would match instead
    [found] = expand([str(tmp_path / "digit[1].png")])
    assert found.error is None and Path(found.path).name == "digit[1].png"
    assert [Path(o.path).name for o in expand([str(tmp_path / "digit[0-9].png")])] == ["digit1.png"]


def test_every_format_is_held_to_the_pixel_cap_before_decoding(tmp_path, monkeypatch):
    from stages.lib import images

    path = save(drawn_seven(size=(400, 300)), tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageError, match=r"image too large \(400x300; at most 100,000 pixels\)"):
        decode(path)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "JPEG"])
def test_large_images_are_reduced_while_decoded(tmp_path, fmt):
    """A 4000x3000 picture becomes a ~160-pixel array, never a 12-megapixel float one."""
    image = drawn_seven(size=(400, 300)).resize((4000, 3000))
    path = tmp_path / f"big.{fmt.lower()}"
    image.save(path, fmt)
    gray = decode(path)
    assert 80 <= max(gray.shape) <= 160  # JPEG: the decoder halves, then a box reduction
    small = decode(save(drawn_seven(size=(400, 300)).resize((160, 120)), tmp_path / "small.png"))
    assert np.abs(mnist_style(gray) - mnist_style(small)).mean() < 8  # the same digit, JPEG artefacts aside


def test_a_registry_model_without_a_store_is_one_line_and_leaves_no_empty_store(tmp_path, capsys, monkeypatch):
    # MLflow would create an empty mlflow.db, fail with "not found" and leave it (make ui would then open it).
    (tmp_path / "seven.png").write_bytes(png(drawn_seven()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(predict, "PROJECT", tmp_path)  # this project's default store, here
    assert predict.main(["seven.png", "--model", "models:/mnist-classifier@champion"]) == 2
    assert capsys.readouterr().err == (
        f"mnist-predict: error: cannot load the model: no MLflow store at sqlite:///{tmp_path / 'mlflow.db'}: "
        "run `make repro` first, or set MLFLOW_TRACKING_URI\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seven.png"]


def test_an_unusable_save_inputs_directory_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "seven.png").write_bytes(png(drawn_seven()))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(tmp_path / "seven.png"), "--save-inputs", str(tmp_path / "file")])
    assert exit_.value.code == 2
    assert f"--save-inputs: cannot create {tmp_path / 'file'}" in capsys.readouterr().err
    assert predict.usable_directory(tmp_path / "new" / "dir") is None and (tmp_path / "new" / "dir").is_dir()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# --- the command line, with a tiny model (slow: TensorFlow) --------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    nn = pytest.importorskip("stages.lib.model")
    root = tmp_path_factory.mktemp("tiny")
    nn.configure(0)
    nn.save_model(nn.build([8], "relu", 0.0, "linear"), root / "data" / "model" / "model.keras")
    (root / "data" / "model" / "serving.json").write_text(
        json.dumps({"normalization": {"method": "minmax", "offset": 0.0, "scale": 255.0}, "output": "linear"})
    )
    return root


@pytest.mark.slow
def test_cli_table_json_exit_codes_and_saved_inputs(tiny_model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "seven.png").write_bytes(png(drawn_seven()))
    (images / "broken.jpg").write_text("nope")
    model = ["--model", str(tiny_model_dir / "data" / "model")]

    assert predict.main([str(images), "--save-inputs", str(tmp_path / "seen"), *model]) == 1
    out, err = capsys.readouterr()
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["path", "digit", "confidence"] and row.startswith(str(images / "seven.png"))
    assert f"mnist-predict: error: {images / 'broken.jpg'}: not an image" in err
    seen = Image.open(tmp_path / "seen" / "0001-seven.png")
    assert seen.size == (28, 28) and seen.mode == "L"

    assert predict.main([str(images / "seven.png"), "--json", "--top", "3", *model]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["top"]) == 3 and len(record["probabilities"]) == 10
    assert abs(sum(record["probabilities"]) - 1) < 1e-4  # softmax applied to the logits
    assert record["digit"] == record["top"][0]["digit"]


@pytest.mark.slow
def test_the_installed_command_prints_everything_and_skips_unused_imports(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    command = Path(sys.executable).parent / "mnist-predict"  # `make install` puts it there
    (tmp_path / "seven.png").write_bytes(png(drawn_seven()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as when piped
    result = subprocess.run(
        [command, str(tmp_path / "seven.png"), "--json", "--model", str(tiny_model_dir / "data" / "model")],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["path"] == str(tmp_path / "seven.png")  # flushed before the fast exit
    last = result.stderr.strip().splitlines()[-1]
    where = re.escape(f"{tiny_model_dir.resolve()}/data/model")
    assert re.fullmatch(rf"mnist-predict: 1 of 1 images in [0-9.]+s \({where}, keras\)", last), last
    imported = imported_modules(result.stderr)
    assert "tensorflow" in imported
    assert not {"sklearn.base", "matplotlib.figure"} & imported  # Keras would import both: see stages.leave_out


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["keras", "onnx"])
def test_either_runtime_prints_the_answer_and_one_line_nothing_of_tensorflows(default_model, runtime):
    """TensorFlow writes start-up lines to stderr (absl, oneDNN) that its log level cannot silence."""
    import subprocess
    import sys

    command = Path(sys.executable).parent / "mnist-predict"
    result = subprocess.run(
        [command, str(ROOT / "examples" / "test-digit-7.png"), "--runtime", runtime, "--model", str(default_model)],
        capture_output=True,
        text=True,
        timeout=300,
        env=user_environment(),  # not this process's: its imports set TensorFlow's variables
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[1].split()[1] == "7", result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith("mnist-predict: 1 of 1 images in ") and line.endswith(
        f", {'keras' if runtime == 'keras' else 'onnxruntime'})"
    ), line


# --- the quality gate: real MNIST test digits as photos, the default model (slow) ---------


@pytest.mark.slow
def test_quality_gate_on_photo_like_digits(default_model, tmp_path, capsys):
    from stages.lib import idx
    from stages.serving.classifier import Classifier

    raw = ROOT / "data" / "raw"
    images = idx.read(raw / "t10k-images-idx3-ubyte")[:1000]
    labels = idx.read(raw / "t10k-labels-idx1-ubyte")[:1000]
    model = Classifier(default_model, default_model.with_name("serving.json"), default_model.with_name("model.onnx"))
    clean = model.probabilities(images.astype(np.float32)).argmax(axis=1)

    # MNIST images saved as PNG files come out nearly unchanged and get the evaluate stage's answers.
    pngs = tmp_path / "png"
    pngs.mkdir()
    changes = []
    for i, image in enumerate(images[:300]):
        Image.fromarray(image).save(pngs / f"{i:04d}.png")
        changes.append(np.abs(mnist_style(image.astype(float)) - image).mean())
    # Mostly identical; a digit whose centre of mass sits half-way between pixels may move by one.
    assert np.median(changes) < 0.5 and np.mean(np.array(changes) < 2) >= 0.9
    assert predict.main([str(pngs), "--json", "--model", str(default_model)]) == 0
    answers = [json.loads(line)["digit"] for line in capsys.readouterr().out.splitlines()]
    assert np.mean(np.array(answers) == clean[:300]) >= 0.995

    # Photos and scans: dark on light, 100-400 px, off-centre, tilted, blurred or noisy, JPEG.
    write_photos(images, tmp_path / "photos")
    assert predict.main([str(tmp_path / "photos"), "--json", "--model", str(default_model)]) == 0
    answers = np.array([json.loads(line)["digit"] for line in capsys.readouterr().out.splitlines()])
    photo_accuracy, clean_accuracy = np.mean(answers == labels), np.mean(clean == labels)
    # Without the preprocessing: the photo squeezed to 28x28, as it is.
    squeezed = np.stack(
        [
            np.asarray(Image.open(p).convert("L").resize((28, 28)), dtype=np.float32)
            for p in sorted((tmp_path / "photos").iterdir())
        ]
    )
    naive_accuracy = np.mean(model.probabilities(squeezed).argmax(axis=1) == labels)
    print(
        f"quality gate: photos {photo_accuracy:.3f}, clean {clean_accuracy:.3f}, no preprocessing {naive_accuracy:.3f}"
    )
    assert photo_accuracy >= 0.96 and clean_accuracy - photo_accuracy <= 0.02
    assert naive_accuracy < 0.5


def test_in_the_inference_environment_only_the_missing_training_packages_go_unsaid():
    import logging

    def warning(*mismatches: str) -> logging.LogRecord:
        lines = "\n".join(f" - {m}" for m in mismatches)
        message = f"Detected one or more mismatches between the model's dependencies and …:\n{lines}\nTo fix …"
        return logging.LogRecord("mlflow.utils.requirements_utils", logging.WARNING, "", 0, message, None, None)

    training = [
        "tensorflow-cpu (current: uninstalled, required: tensorflow-cpu==2.21.0)",
        "keras (current: uninstalled, required: keras==3.15.1)",
    ]
    assert not predict.beyond_training_packages(warning(*training))
    assert predict.beyond_training_packages(warning(*training, "numpy (current: 1.26.0, required: numpy==2.3.4)"))
    assert predict.beyond_training_packages(
        warning("onnxruntime (current: uninstalled, required: onnxruntime==1.32.0)")
    )
    other = logging.LogRecord("mlflow", logging.WARNING, "", 0, "something else", None, None)
    assert predict.beyond_training_packages(other)
