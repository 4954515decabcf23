"""fetch.dataset idx and folder: your own data into data/raw/, checked, deterministic, and read back.

The data are made here: coloured shapes drawn with Pillow (mixed sizes, RGB, L
and RGBA, PNG and JPEG) in class folders, and small IDX sets written with
``stages.lib.idx.encode``.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from stages import fetch as fetch_stage
from stages.lib import datasets, idx, runtime
from stages.lib.datasets import DatasetError, fetch_dataset, read_manifest
from stages.params import fetch as fetch_params
from stages.params import schema
from tests.conftest import write_params

CLASSES = ["circle", "square", "triangle"]
MODES = ["RGB", "L", "RGBA"]
SIZES = [(20, 24), (32, 32), (50, 40), (28, 28)]


def shape_image(kind: str, i: int) -> tuple[bytes, str]:
    """One image of a coloured shape: its bytes and file extension (mode, size and format vary with ``i``)."""
    mode, size = MODES[i % 3], SIZES[i % 4]
    fmt = "JPEG" if i % 2 and mode != "RGBA" else "PNG"
    image = Image.new(mode, size, {"RGB": (20, 20, 60), "L": 30, "RGBA": (0, 0, 0, 0)}[mode])
    draw = ImageDraw.Draw(image)
    colour = {"RGB": (200, 40 * (i % 5), 30), "L": 220, "RGBA": (30, 200, 90, 255)}[mode]
    w, h = size
    box = (w // 5, h // 5, w - w // 5, h - h // 5)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(w // 2, h // 5), (w - w // 5, h - h // 5), (w // 5, h - h // 5)], fill=colour)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue(), ".jpg" if fmt == "JPEG" else ".png"


def make_folder(root: Path, split: bool = False, per_class: int = 4) -> Path:
    """Class folders of shapes: ``root/<class>/`` or ``root/train/<class>/`` and ``root/test/<class>/``."""
    for s in ("train", "test") if split else ("",):
        for c, kind in enumerate(CLASSES):
            folder = root / s / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if s != "test" else 2):
                data, ext = shape_image(kind, i + 7 * c)
                (folder / f"{kind}-{i}{ext}").write_bytes(data)
    return root


def make_idx(
    root: Path,
    train_labels=(0, 1, 2, 0, 1, 2, 2),
    test_labels=(0, 1, 2),
    shape=(12, 10),
    test_shape=None,
    names: dict[str, str] | None = None,
    gz: bool = False,
    classes: list[str] | None = None,
) -> Path:
    """An IDX set of ``len(labels)`` noise images, written under MNIST's names (or ``names``), raw or gzipped."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (len(train_labels), *shape), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array(train_labels, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (len(test_labels), *(test_shape or shape)), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array(test_labels, dtype=np.uint8),
    }
    for name, array in arrays.items():
        data = idx.encode(array)
        target = (names or {}).get(name, name)
        if gz:
            (root / f"{target}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / target).write_bytes(data)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Each file's bytes, mtime and inode: equal snapshots mean nothing was rewritten."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(directory.iterdir())}


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def packed(raw: Path, manifest: dict) -> list[tuple[dict, bytes]]:
    """(manifest entry, the file's bytes in images.bin) for each file, in manifest order."""
    blob = datasets.packed_images(raw, manifest).read_bytes()
    return [(entry, blob[entry["offset"] : entry["offset"] + entry["size"]]) for entry in manifest["files"]]


def quiet(_: str) -> None:
    pass


# --- a folder -------------------------------------------------------------------------------------


def test_folder_without_split_is_packed_unmodified(tmp_path):
    src = make_folder(tmp_path / "shapes")
    (src / "circle" / ".DS_Store").write_bytes(b"hidden")  # hidden: left out
    (src / "README.txt").write_text("about")  # at the top: left out
    (src / "square" / "more").mkdir()  # a sub-folder of a class folder: left out
    (src / "square" / "more" / "x.png").write_bytes(shape_image("square", 0)[0])
    raw = tmp_path / "raw"
    lines: list[str] = []
    assert fetch_dataset("folder", "shapes", src, raw, log=lines.append) is True
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.json", "images.bin"]
    manifest = read_manifest(raw)
    assert manifest["kind"] == "folder" and manifest["name"] == "shapes" and manifest["split"] == "none"
    assert manifest["classes"] == CLASSES and "source" not in manifest
    assert manifest["counts"] == {"all": dict.fromkeys(CLASSES, 4)}
    paths = [f["path"] for f in manifest["files"]]
    assert paths == sorted(p.relative_to(src).as_posix() for c in CLASSES for p in (src / c).glob("*-*"))
    assert all(f["split"] is None for f in manifest["files"])
    seen = 0
    for entry, data in packed(raw, manifest):
        assert data == (src / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert CLASSES[entry["label"]] == entry["path"].split("/")[0] and entry["offset"] == seen
        seen += entry["size"]
    assert seen == (raw / "images.bin").stat().st_size
    text = (raw / "dataset.json").read_text()
    assert text == datasets.manifest_text(manifest) and str(tmp_path) not in text
    said = "only the files directly in a class folder count"
    assert f"fetch: left out 1 sub-folder(s) of class folders, with what they hold ({said}): square/more/" in lines
    assert any("left out 1 file(s) at the top" in line for line in lines)


def test_folder_with_train_and_test_keeps_the_given_split(tmp_path):
    src = make_folder(tmp_path / "shapes", split=True)
    raw = tmp_path / "raw"
    fetch_dataset("folder", "shapes", src, raw, log=quiet)
    manifest = read_manifest(raw)
    assert manifest["split"] == "given" and manifest["classes"] == CLASSES
    assert manifest["counts"] == {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 2)}
    for entry in manifest["files"]:
        split, kind, _ = entry["path"].split("/")
        assert entry["split"] == split and CLASSES[entry["label"]] == kind
    assert [f["path"] for f in manifest["files"]] == sorted(f["path"] for f in manifest["files"])
    assert {e["path"]: d for e, d in packed(raw, manifest)} == {
        p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()
    }


def test_symlinks_inside_the_folder_are_followed(tmp_path):
    src = make_folder(tmp_path / "shapes")
    (src / "extra").mkdir()
    (src / "extra" / "a.png").write_bytes(shape_image("circle", 3)[0])
    shutil.move(src / "extra", src / ".store")  # hidden: not a class
    os.symlink(src / ".store" / "a.png", src / "circle" / "linked.png")
    raw = tmp_path / "raw"
    fetch_dataset("folder", "shapes", src, raw, log=quiet)
    entry = next(e for e in read_manifest(raw)["files"] if e["path"] == "circle/linked.png")
    assert entry["size"] == (src / ".store" / "a.png").stat().st_size


def test_the_same_files_give_byte_identical_data_raw_wherever_they_are(tmp_path):
    src = make_folder(tmp_path / "a" / "shapes", split=True)
    moved = tmp_path / "b" / "elsewhere"
    shutil.copytree(src, moved)
    fetch_dataset("folder", "shapes", src, tmp_path / "raw1", log=quiet)
    fetch_dataset("folder", "shapes", moved, tmp_path / "raw2", log=quiet)
    assert contents(tmp_path / "raw1") == contents(tmp_path / "raw2")


def test_nothing_changed_writes_nothing_and_a_change_rewrites(tmp_path):
    src = make_folder(tmp_path / "shapes")
    raw = tmp_path / "raw"
    fetch_dataset("folder", "shapes", src, raw, log=quiet)
    before = snapshot(raw)
    lines: list[str] = []
    assert fetch_dataset("folder", "shapes", src, raw, log=lines.append) is False
    assert snapshot(raw) == before
    assert lines[-1] == f"fetch: {raw} holds shapes's 12 files in 3 classes unchanged; nothing to write"
    # a changed, an added and a removed image each rewrite it
    (src / "circle" / "circle-0.png").write_bytes(shape_image("circle", 5)[0])
    assert fetch_dataset("folder", "shapes", src, raw, log=quiet) is True
    changed = contents(raw)
    assert changed != {k: v[0] for k, v in before.items()}
    (src / "square" / "new.png").write_bytes(shape_image("square", 9)[0])
    assert fetch_dataset("folder", "shapes", src, raw, log=quiet) is True
    assert read_manifest(raw)["counts"]["all"]["square"] == 5
    (src / "square" / "new.png").unlink()
    assert fetch_dataset("folder", "shapes", src, raw, log=quiet) is True
    assert contents(raw) == changed
    # a renamed data set is written again under its new name: the same images.bin bytes (the same DVC hash)
    blob = (raw / "images.bin").read_bytes()
    assert fetch_dataset("folder", "forms", src, raw, log=quiet) is True
    assert read_manifest(raw)["name"] == "forms" and (raw / "images.bin").read_bytes() == blob
    # a truncated images.bin is not taken for the same data
    (raw / "images.bin").write_bytes((raw / "images.bin").read_bytes()[:-1])
    assert fetch_dataset("folder", "forms", src, raw, log=quiet) is True


def test_a_large_folder_is_read_again_for_packing_and_checked(tmp_path, monkeypatch):
    """Past KEEP_BYTES the bytes are not held between the check and the packing: read again, same result."""
    src = make_folder(tmp_path / "shapes")
    fetch_dataset("folder", "shapes", src, tmp_path / "kept", log=quiet)
    monkeypatch.setattr(datasets, "KEEP_BYTES", 1000)
    fetch_dataset("folder", "shapes", src, tmp_path / "again", log=quiet)
    assert contents(tmp_path / "kept") == contents(tmp_path / "again")
    manifest = read_manifest(tmp_path / "again")
    (src / manifest["files"][3]["path"]).write_bytes(b"changed meanwhile")
    with pytest.raises(DatasetError, match=f"fetch.path: {manifest['files'][3]['path']} changed while fetch was"):
        datasets.pack_folder(src, manifest, tmp_path / "images.bin")


def test_progress_is_shown_in_plain_lines(tmp_path, capsys):
    fetch_dataset("folder", "shapes", make_folder(tmp_path / "shapes"), tmp_path / "raw", log=quiet)
    err = capsys.readouterr().err
    assert "\r" not in err and "fetch: reading 12 files:" in err and "fetch: packing images.bin:" in err


# --- an IDX set -------------------------------------------------------------------------------------


def test_idx_without_classes_names_them_by_number(tmp_path):
    src = make_idx(tmp_path / "set")
    raw = tmp_path / "raw"
    assert fetch_dataset("idx", "noise", src, raw, log=quiet) is True
    assert sorted(p.name for p in raw.iterdir()) == sorted([*datasets.IDX_FILES, "dataset.json"])
    for name in datasets.IDX_FILES:
        assert (raw / name).read_bytes() == (src / name).read_bytes()
    manifest = json.loads((raw / "dataset.json").read_text())
    assert manifest == {
        "kind": "idx",
        "name": "noise",
        "classes": ["0", "1", "2"],
        "split": "given",
        "counts": {"train": {"0": 2, "1": 2, "2": 3}, "test": {"0": 1, "1": 1, "2": 1}},
    }
    assert read_manifest(raw) == manifest


def test_idx_gzipped_dotted_names_and_classes_txt(tmp_path):
    dotted = {n: n.replace("-idx", ".idx") for n in datasets.IDX_FILES}
    src = make_idx(tmp_path / "set", names=dotted, gz=True, classes=["cat", "dog", "eel"])
    plain = make_idx(tmp_path / "plain")
    raw = tmp_path / "raw"
    fetch_dataset("idx", "pets", src, raw, log=quiet)
    for name in datasets.IDX_FILES:
        assert (raw / name).read_bytes() == (plain / name).read_bytes()  # decompressed, canonical names
    manifest = read_manifest(raw)
    assert manifest["classes"] == ["cat", "dog", "eel"]
    assert manifest["counts"]["train"] == {"cat": 2, "dog": 2, "eel": 3}


def test_idx_nothing_changed_writes_nothing(tmp_path):
    src = make_idx(tmp_path / "set", classes=["a", "b", "c"])
    raw = tmp_path / "raw"
    fetch_dataset("idx", "abc", src, raw, log=quiet)
    before = snapshot(raw)
    assert fetch_dataset("idx", "abc", src, raw, log=quiet) is False
    assert snapshot(raw) == before
    (src / "classes.txt").write_text("a\nb\nsea\n")
    assert fetch_dataset("idx", "abc", src, raw, log=quiet) is True
    assert read_manifest(raw)["classes"] == ["a", "b", "sea"]


def test_read_manifest_is_none_for_mnist(tmp_path, synthetic):
    assert read_manifest(synthetic.write(tmp_path / "raw")) is None


def test_a_damaged_images_bin_is_one_line(tmp_path):
    raw = tmp_path / "raw"
    fetch_dataset("folder", "shapes", make_folder(tmp_path / "shapes"), raw, log=quiet)
    manifest = read_manifest(raw)
    (raw / "images.bin").write_bytes((raw / "images.bin").read_bytes()[:-3])
    with pytest.raises(DatasetError, match=r"images.bin: \d+ bytes, but dataset.json describes \d+: run fetch again"):
        datasets.packed_images(raw, manifest)
    (raw / "images.bin").unlink()
    with pytest.raises(DatasetError, match=r"images.bin: missing: run fetch again"):
        datasets.packed_images(raw, manifest)
    (raw / "images.bin").mkdir()  # not a file
    with pytest.raises(DatasetError, match=r"images.bin: missing: run fetch again"):
        datasets.packed_images(raw, manifest)
    (raw / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json: not valid JSON"):
        read_manifest(raw)


# --- the stage: params, fetch.path resolved against the repository, the runtime record ---------------------------


def write_fetch_params(repo: Path, **fetch) -> None:
    cfg = {
        "dataset": "folder",
        "name": "shapes",
        "path": "data/external/shapes",
        "sources": ["local"],
        "local_dir": "data/external/mnist",
        "keras_url": "https://x/m.npz",
        "kaggle_url": "https://x",
        "timeout_s": 1,
        "retries": 0,
        **fetch,
    }
    write_params(repo, **cfg)


def test_a_relative_path_is_the_repository_roots_from_an_experiment_copy(tmp_path, monkeypatch, capsys):
    """`dvc exp run --queue/--temp` runs in <repo>/.dvc/tmp/exps/<...>/<copy>, which lacks git-ignored data."""
    repo = tmp_path / "repo"
    src = make_folder(repo / "data" / "external" / "shapes")
    copy_dir = repo / ".dvc" / "tmp" / "exps" / "run" / "abc123"
    write_fetch_params(copy_dir)
    monkeypatch.chdir(copy_dir)
    monkeypatch.setenv("DVC_ROOT", str(copy_dir))
    assert fetch_stage.main() == 0
    out = capsys.readouterr().out
    assert f"from {src.resolve().as_uri()}" in out
    manifest = read_manifest(copy_dir / "data" / "raw")
    assert manifest["counts"] == {"all": dict.fromkeys(CLASSES, 4)}
    record = runtime.recall("fetch", fetch_stage.dir_digest(Path("data/raw")))
    assert record["source"] == "folder" and record["origin"] == src.resolve().as_uri()
    assert not (copy_dir / "data" / "external").exists()


def test_an_absolute_path_and_an_idx_set_through_the_stage(tmp_path, monkeypatch):
    src = make_idx(tmp_path / "fashion", classes=["shirt", "shoe", "bag"])
    repo = tmp_path / "repo"
    write_fetch_params(repo, dataset="idx", name="fashion", path=str(src))
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert fetch_stage.main() == 0
    assert read_manifest(repo / "data" / "raw")["classes"] == ["shirt", "shoe", "bag"]
    assert runtime.recall("fetch", fetch_stage.dir_digest(Path("data/raw")))["source"] == "idx"


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"dataset": "csv"}, "fetch.dataset must be one of mnist, idx, folder, got 'csv'"),
        (
            {"name": "My Data"},
            "fetch.name must be a name of lowercase letters, digits, - and _, starting with a letter",
        ),
        ({"name": "1st"}, "fetch.name must be a name of lowercase letters"),
        ({"name": "a" * 41}, "fetch.name must be a name of lowercase letters"),
        ({"path": ""}, "fetch.path must be the folder holding your data .* when fetch.dataset is folder, got ''"),
        ({"name": "mnist"}, "choose fetch.name for your data: mnist is MNIST's"),
        (
            {"dataset": "idx", "name": "mnist"},
            "fetch.dataset is idx: choose fetch.name for your data: mnist is MNIST's",
        ),
    ],
)
def test_params_are_checked_in_one_line(tmp_path, monkeypatch, capsys, edit, message):
    write_fetch_params(tmp_path, **edit)
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fetch: error: params: ") and "\n" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "data" / "raw").exists()


def test_mnist_allows_any_name_and_ignores_path():
    raw = yaml.safe_load(Path("params.yaml").read_text())
    cfg = schema.validate(raw, [fetch_params])["fetch"]
    assert (cfg["dataset"], cfg["name"], cfg["path"]) == ("mnist", "mnist", "")
    raw["fetch"].update(name="digits-2", path="anything")
    assert schema.validate(raw, [fetch_params])["fetch"]["name"] == "digits-2"
    assert fetch_params.effective(cfg) == {}


# --- bad data: one line naming the file or class, and data/raw/ as it was ------------------------------------------


def _link_outside(src: Path, tmp: Path) -> None:
    (tmp / "secret.png").write_bytes(b"x")
    os.symlink(tmp / "secret.png", src / "circle" / "leak.png")


def _dir_outside(src: Path, tmp: Path) -> None:
    make_folder(tmp / "other")
    os.symlink(tmp / "other" / "circle", src / "blob")


def _huge(src: Path, tmp: Path) -> None:
    with open(src / "square" / "huge.tif", "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: no disk used


def _single(src: Path, tmp: Path) -> None:
    shutil.rmtree(src / "square")
    shutil.rmtree(src / "triangle")


def _empty_class(src: Path, tmp: Path) -> None:
    (src / "zebra").mkdir()
    (src / "zebra" / ".hidden").write_bytes(b"")


def _empty(src: Path, tmp: Path) -> None:
    shutil.rmtree(src)
    src.mkdir()


def _only_train(src: Path, tmp: Path) -> None:
    shutil.rmtree(src)
    make_folder(src, split=True)
    shutil.rmtree(src / "test")


def _train_not_test(src: Path, tmp: Path) -> None:
    shutil.rmtree(src)
    make_folder(src, split=True)
    shutil.rmtree(src / "test" / "square")


def _test_not_train(src: Path, tmp: Path) -> None:
    shutil.rmtree(src)
    make_folder(src, split=True)
    (src / "test" / "zebra").mkdir()
    (src / "test" / "zebra" / "z.png").write_bytes(b"z")


def _broken_link(src: Path, tmp: Path) -> None:
    os.symlink(src / "nowhere.png", src / "circle" / "gone.png")


FOLDER_CASES = {
    "missing": (lambda src, tmp: shutil.rmtree(src), r"fetch.path: .*/shapes does not exist"),
    "a file": (
        lambda src, tmp: (shutil.rmtree(src), src.write_text("x")),
        r"fetch.path: .*/shapes is not a directory",
    ),
    "empty": (_empty, r"fetch.path: .*/shapes is empty"),
    "empty class": (_empty_class, r"fetch.path: class folder zebra/ holds no files"),
    "single class": (_single, r"fetch.path: a single class \(circle/\): a classifier needs at least 2 class folders"),
    "link outside": (_link_outside, r"fetch.path: circle/leak.png is a symlink to .*secret.png, outside fetch.path"),
    "dir outside": (_dir_outside, r"fetch.path: blob is a symlink to .*other/circle, outside fetch.path"),
    "broken link": (_broken_link, r"fetch.path: circle/gone.png is a broken symlink"),
    "huge": (_huge, r"fetch.path: square/huge.tif is 64.0 MiB: not an image of a size this project reads"),
    "train only": (_only_train, r"fetch.path: train/ has no test/ beside it"),
    "train not test": (_train_not_test, r"fetch.path: class 'square' is in train/ but not in test/"),
    "test not train": (_test_not_train, r"fetch.path: class 'zebra' is in test/ but not in train/"),
}


def _idx_case(**kwargs):
    def make(src: Path, tmp: Path) -> None:
        shutil.rmtree(src)
        make_idx(src, **kwargs)

    return make


def _corrupt_gz(src: Path, tmp: Path) -> None:
    shutil.rmtree(src)
    make_idx(src, gz=True)
    path = src / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-6])


def _four_d(src: Path, tmp: Path) -> None:
    (src / "train-images-idx3-ubyte").write_bytes(idx.encode(np.zeros((7, 2, 3, 4), np.uint8)))


def _missing_file(src: Path, tmp: Path) -> None:
    (src / "t10k-images-idx3-ubyte").unlink()


def _classes(text: str):
    def make(src: Path, tmp: Path) -> None:
        (src / "classes.txt").write_text(text)

    return make


IDX_CASES = {
    "counts differ": (
        lambda src, tmp: (src / "train-labels-idx1-ubyte").write_bytes(
            idx.encode(np.array([0, 1, 2, 0, 1, 2], np.uint8))
        ),
        r"fetch.path: train-images-idx3-ubyte has 7 images but train-labels-idx1-ubyte has 6 labels",
    ),
    "label outside": (
        _idx_case(test_labels=(0, 1, 2, 3), classes=["a", "b", "c"]),
        r"fetch.path: t10k-labels-idx1-ubyte: label 3 \(item 3\) is outside 0..2 \(classes.txt names 3 classes\)",
    ),
    "class missing in train": (
        _idx_case(train_labels=(0, 2, 0, 2, 2, 0, 2), test_labels=(0, 1, 2)),
        r"fetch.path: train-labels-idx1-ubyte: class '1' \(label 1\) has no image",
    ),
    "class missing in test": (
        _idx_case(test_labels=(0, 2, 2)),
        r"fetch.path: t10k-labels-idx1-ubyte: class '1' \(label 1\) is in train but not in test",
    ),
    "classes.txt class unused": (
        _classes("a\nb\nc\nd\n"),
        r"fetch.path: train-labels-idx1-ubyte: class 'd' \(label 3\) has no image",
    ),
    "single class": (
        _idx_case(train_labels=(0, 0, 0), test_labels=(0,)),
        r"fetch.path: train-labels-idx1-ubyte: a single class \('0'\): a classifier needs at least 2",
    ),
    "4-D images": (_four_d, r"fetch.path: train-images-idx3-ubyte: IDX file has 4 dimensions, expected 3"),
    "corrupt gz": (_corrupt_gz, r"fetch.path: t10k-labels-idx1-ubyte.gz: not a valid gzip file"),
    "sizes differ": (
        _idx_case(test_shape=(10, 12)),
        r"fetch.path: t10k-images-idx3-ubyte holds 10x12 images but train-images-idx3-ubyte 12x10",
    ),
    "missing file": (_missing_file, r"fetch.path: no t10k-images-idx3-ubyte in .*/shapes \(also looked for"),
    "empty line in classes.txt": (_classes("a\n\nc\n"), r"fetch.path: classes.txt: line 2 is empty"),
    "duplicate class": (_classes("a\nb\na\n"), r"fetch.path: classes.txt: 'a' on lines 1 and 3"),
}


@pytest.mark.parametrize("kind, case", [("folder", c) for c in FOLDER_CASES] + [("idx", c) for c in IDX_CASES])
def test_bad_data_is_one_line_and_data_raw_stays(tmp_path, monkeypatch, capsys, kind, case):
    edit, message = (FOLDER_CASES if kind == "folder" else IDX_CASES)[case]
    repo = tmp_path / "repo"
    src = repo / "data" / "external" / "shapes"
    make_folder(src) if kind == "folder" else make_idx(src)
    write_fetch_params(repo, dataset=kind)
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert fetch_stage.main() == 0
    before = snapshot(repo / "data" / "raw")
    capsys.readouterr()
    edit(src, tmp_path)
    assert fetch_stage.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fetch: error: fetch.path"), err
    assert re.search(message, err), err
    assert snapshot(repo / "data" / "raw") == before
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["external", "raw"]  # no staging left behind


def test_the_checks_run_before_anything_is_read(tmp_path, monkeypatch):
    """A bad class folder fails the scan: no file is opened, nothing is written."""
    src = make_folder(tmp_path / "shapes")
    (src / "zebra").mkdir()
    before = sorted(tmp_path.rglob("*"))

    def no_reading(*args, **kwargs):
        pytest.fail(f"a file was opened: {args[:1]}")

    monkeypatch.setattr("builtins.open", no_reading)
    monkeypatch.setattr(Path, "open", no_reading)
    with pytest.raises(DatasetError, match="class folder zebra/ holds no files"):
        datasets.scan_folder(src, log=quiet)
    monkeypatch.undo()
    assert sorted(tmp_path.rglob("*")) == before


def test_a_manifest_read_is_a_copy_and_an_offset_that_disagrees_is_malformed(tmp_path):
    """read_manifest hands back a plain dict: preprocess may change it, the file stays as written; a dataset.json
    whose offsets do not follow from the sizes is refused."""
    raw = tmp_path / "raw"
    fetch_dataset("folder", "shapes", make_folder(tmp_path / "shapes"), raw, log=quiet)
    written = (raw / "dataset.json").read_bytes()
    manifest = read_manifest(raw)
    edited = copy.deepcopy(manifest)
    manifest["files"].clear()
    assert (raw / "dataset.json").read_bytes() == written and read_manifest(raw) == edited
    edited["files"][0]["offset"] = 5
    (raw / "dataset.json").write_text(json.dumps(edited))
    with pytest.raises(DatasetError, match="is malformed: run fetch again"):
        read_manifest(raw)


def test_a_fetch_path_that_cannot_be_resolved_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match=r"^fetch.path: ~nosuchuser-x/pets: Could not determine home directory"):
        datasets.resolve_path("~nosuchuser-x/pets", tmp_path)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(DatasetError, match=r"^fetch.path: a/pets: Symlink loop"):
        datasets.resolve_path("a/pets", tmp_path)
    assert datasets.resolve_path("pets", tmp_path) == tmp_path.resolve() / "pets"
