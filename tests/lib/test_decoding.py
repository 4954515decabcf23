"""Decoding a packed image collection into one shape, and the preprocess stage on your own images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import preprocess
from stages.lib import datasets, decoding, images
from stages.lib.images import ImageError
from stages.params.schema import ParamsError


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def pack(path: Path, blobs: list[bytes]) -> list[tuple[int, int]]:
    entries, offset = [], 0
    with open(path, "wb") as f:
        for blob in blobs:
            f.write(blob)
            entries.append((offset, len(blob)))
            offset += len(blob)
    return entries


def test_every_mode_becomes_the_requested_shape(tmp_path):
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # composited onto white
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # 16-bit: scaled to 255
    palette = red.convert("P")
    blobs = [encoded(red), encoded(transparent), encoded(sixteen), encoded(palette), encoded(red, "JPEG")]
    entries = pack(tmp_path / "images.bin", blobs)
    rgb, failed = decoding.decode_packed(tmp_path / "images.bin", entries, decoding.Shape(6, 5, 3), workers=1)
    assert failed == {} and rgb.shape == (5, 6, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[0] == [255, 0, 0]).all() and (rgb[1] == 255).all() and (rgb[2] == 255).all()
    assert (rgb[3] == [255, 0, 0]).all() and abs(int(rgb[4, 3, 2, 0]) - 254) <= 2
    gray, _ = decoding.decode_packed(tmp_path / "images.bin", entries, decoding.Shape(4, 4, 1), workers=1)
    assert gray.shape == (5, 4, 4) and abs(int(gray[0, 0, 0]) - 76) <= 1  # ITU-R 601-2 luma of pure red


def test_processes_decode_the_same_pixels_as_one_and_report_bad_files_by_index(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [encoded(Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))) for _ in range(600)]
    blobs[7] = blobs[7][:-400]  # truncated: a valid header, half its data
    blobs[300] = b"not an image at all"
    entries = pack(tmp_path / "images.bin", blobs)
    shape = decoding.Shape(12, 12, 3)
    one, failed_one = decoding.decode_packed(tmp_path / "images.bin", entries, shape, workers=1)
    two, failed_two = decoding.decode_packed(tmp_path / "images.bin", entries, shape, workers=2)
    assert np.array_equal(one, two) and failed_one.keys() == failed_two.keys() == {7, 300}
    assert "not an image" in failed_two[300] and "cannot decode" in failed_two[7]


def test_the_decoding_processes_follow_the_cores_this_process_may_use(tmp_path, monkeypatch):
    # Affinity within the cgroup's quota (stages.serving.cores): `docker --cpus=1` on a many-core host means one.
    blobs = [encoded(Image.new("L", (8, 8), i % 256)) for i in range(2 * decoding.CHUNK + 1)]  # three chunks
    entries = pack(tmp_path / "images.bin", blobs)
    monkeypatch.setattr(decoding.cores, "usable", lambda: 1)

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool where one core may be used")

    monkeypatch.setattr("multiprocessing.get_context", no_pool)
    gray, failed = decoding.decode_packed(tmp_path / "images.bin", entries, decoding.Shape(8, 8, 1))
    assert failed == {} and [int(gray[i, 0, 0]) for i in (5, 256, 300, 512)] == [5, 0, 44, 0]


def test_a_bad_file_gets_the_same_words_from_preprocess_as_from_predict_and_the_demo(tmp_path):
    """One reason per kind of bad file, whichever decoder meets it: an empty file, bytes that are no image, a
    truncated PNG."""
    png = encoded(Image.new("L", (40, 40), 128))
    bad = {"empty": b"", "text": b"just some notes", "cut": png[: len(png) // 2]}
    entries = pack(tmp_path / "images.bin", list(bad.values()))
    _, failed = decoding.decode_packed(tmp_path / "images.bin", entries, decoding.Shape(8, 8, 1), workers=1)
    assert failed[0] == images.EMPTY_FILE == "empty file (0 bytes)"
    assert failed[1] == "not an image (or a format Pillow cannot read)"
    assert failed[2].startswith("cannot decode (")
    for index, name in [(1, "text"), (2, "cut")]:
        with pytest.raises(ImageError) as raised:
            images.decode(io.BytesIO(bad[name]))
        assert str(raised.value) == failed[index], name


def test_a_decoders_surprise_is_that_files_error_in_the_same_words_everywhere(monkeypatch):
    import struct

    def surprised(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(Image, "open", surprised)
    with pytest.raises(ImageError, match=r"^cannot decode \(IndexError: list index out of range\)$"):
        images.decode(io.BytesIO(b"whatever"))
    with pytest.raises(ImageError, match=r"^cannot decode \(IndexError: list index out of range\)$"):
        decoding.to_array(io.BytesIO(b"whatever"), decoding.Shape(4, 4, 1))
    assert str(images.unreadable(struct.error("unpack requires a buffer of 4 bytes"))) == (
        "cannot decode (error: unpack requires a buffer of 4 bytes)"
    )
    assert images.unreadable(MemoryError()) is None  # not a file's fault: raised as it is


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)  # the one cap, predict's and training's
    with pytest.raises(ImageError, match=r"image too large \(20x20; at most 100 pixels\)"):
        decoding.to_array(io.BytesIO(encoded(Image.new("L", (20, 20)))), decoding.Shape(4, 4, 1))


def test_idx_arrays_keep_their_bytes_at_their_own_size():
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert decoding.resize_arrays(images, decoding.Shape(28, 28, 1)) is images
    assert decoding.resize_arrays(images, decoding.Shape(14, 10, 3)).shape == (2, 14, 10, 3)


def make_folder(root: Path, broken: bool = False) -> Path:
    rng = np.random.default_rng(1)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.full((9 + i, 11, 3), 40 + 150 * c, dtype=np.uint8) + rng.integers(0, 20, (9 + i, 11, 3)).astype(
                np.uint8
            )
            (root / name / f"{i:02d}.png").write_bytes(encoded(Image.fromarray(pixels)))
    if broken:
        (root / "dog" / "05.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def prepared(tmp_path: Path, broken: bool = False, **kwargs):
    raw = tmp_path / "raw"
    datasets.fetch_dataset("folder", "pets", make_folder(tmp_path / "pets", broken), raw, log=lambda line: None)
    return prepared_from(raw, tmp_path / "prepared", **kwargs)


def prepared_from(raw: Path, out: Path, **kwargs):
    return preprocess.prepare(raw, out, 0.25, 0, "minmax", image_size=(8, 6), channels=3, test_fraction=0.25, **kwargs)


def test_a_folder_is_split_stratified_and_described(tmp_path):
    stats = prepared(tmp_path)
    assert stats["dataset"] == {
        "name": "pets",
        "kind": "folder",
        "classes": ["cat", "dog"],
        "image_shape": [8, 6, 3],
        "style": "digits",
        "skipped": [],
    }
    assert stats["shapes"]["x_test"] == [6, 8, 6, 3] and stats["class_counts"]["test"] == {"0": 3, "1": 3}
    x_train = np.load(tmp_path / "prepared" / "x_train.npy", allow_pickle=False)
    assert x_train.dtype == np.float32 and x_train.min() >= 0 and x_train.max() <= 1
    assert json.loads((tmp_path / "prepared" / "stats.json").read_text())["dataset"]["classes"] == ["cat", "dog"]


def test_an_unreadable_file_is_named_or_skipped_and_counted(tmp_path):
    with pytest.raises(ImageError, match=r"^dog/05.png: cannot decode .*set preprocess.skip_unreadable: true$"):
        prepared(tmp_path / "strict", broken=True)
    assert not (tmp_path / "strict" / "prepared").exists()  # nothing half-written
    lines = []
    stats = prepared(tmp_path / "lenient", broken=True, skip_unreadable=True, log=lines.append)
    kept = sum(sum(counts.values()) for counts in stats["class_counts"].values())
    assert stats["dataset"]["skipped"] == ["dog/05.png"] and kept == 23
    assert len(lines) == 1 and lines[0].startswith(
        "preprocess: skipped 1 unreadable file(s) (preprocess.skip_unreadable): dog/05.png: cannot decode ("
    )


def test_the_skipped_files_are_named_up_to_a_few_with_their_reasons(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets")
    for name in ["cat/00.png", "cat/01.png", "dog/02.png"]:
        (root / name).write_bytes(b"")
    (root / "dog" / "03.png").write_text("notes")
    raw, lines = tmp_path / "raw", []
    datasets.fetch_dataset("folder", "pets", root, raw, log=lambda line: None)
    monkeypatch.setattr(preprocess, "SKIPS_NAMED", 3)
    stats = preprocess.prepare(
        raw,
        tmp_path / "prepared",
        0.25,
        0,
        "minmax",
        image_size=(8, 6),
        channels=3,
        test_fraction=0.25,
        skip_unreadable=True,
        log=lines.append,
    )
    assert stats["dataset"]["skipped"] == ["cat/00.png", "cat/01.png", "dog/02.png", "dog/03.png"]
    assert lines == [
        "preprocess: skipped 4 unreadable file(s) (preprocess.skip_unreadable): cat/00.png: empty file (0 bytes); "
        "cat/01.png: empty file (0 bytes); dog/02.png: empty file (0 bytes); and 1 more"
    ]


def test_a_data_set_larger_than_memory_trains_is_refused_in_one_line():
    with pytest.raises(ParamsError, match=r"^params: 1000 images of 64x64x3 are 12,288,000 values, more than"):
        preprocess.check_memory(1000, decoding.Shape(64, 64, 3), limit=10_000_000)
    preprocess.check_memory(1000, decoding.Shape(64, 64, 3), limit=20_000_000)


def test_a_cut_off_images_bin_is_a_fetch_problem_not_the_users_images(tmp_path):
    """A copy of data/raw that lost its end would decode its last files as 'not an image': preprocess says to
    fetch again instead (whatever skip_unreadable says), before decoding anything."""
    raw = tmp_path / "raw"
    datasets.fetch_dataset("folder", "pets", make_folder(tmp_path / "pets"), raw, log=lambda line: None)
    (raw / "images.bin").write_bytes((raw / "images.bin").read_bytes()[:-100])
    for skip in (False, True):
        with pytest.raises(datasets.DatasetError, match=r"images.bin: \d+ bytes, but dataset.json describes \d+: run"):
            prepared_from(raw, tmp_path / "prepared", skip_unreadable=skip)
    assert not (tmp_path / "prepared").exists()


def test_the_memory_limit_follows_the_machine(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree: 1 kB\n")
    assert preprocess.max_values(meminfo) == 25165824 * 1024 // 10  # 24 GiB: about 2.5 billion values


def test_a_class_with_a_single_image_is_one_line_naming_it(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "bird").mkdir()
    (root / "bird" / "only.png").write_bytes(encoded(Image.new("RGB", (9, 9), (9, 9, 9))))
    datasets.fetch_dataset("folder", "pets", root, tmp_path / "raw", log=lambda line: None)
    with pytest.raises(ParamsError, match=r"^params: preprocess.test_fraction: class bird has 1 image\(s\); a strat"):
        preprocess.prepare(tmp_path / "raw", tmp_path / "prepared", 0.25, 0, "minmax", image_size=(8, 6), channels=3)
