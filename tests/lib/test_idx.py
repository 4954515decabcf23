import struct

import numpy as np
import pytest

from stages.lib import idx


def test_round_trip_images_and_labels(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    (tmp_path / "images").write_bytes(idx.encode(images))
    (tmp_path / "labels").write_bytes(idx.encode(labels))
    got_images, got_labels = idx.read_pair(tmp_path / "images", tmp_path / "labels")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_header_layout_matches_lecun():
    data = idx.encode(np.zeros((60000, 28, 28), dtype=np.uint8))
    assert data[:16] == struct.pack(">IIII", 0x00000803, 60000, 28, 28)
    assert len(data) == 16 + 60000 * 28 * 28


def test_writer_rejects_non_uint8():
    with pytest.raises(idx.IdxError, match="uint8"):
        idx.encode(np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "no header"),
        (struct.pack(">I", 0x00000D01) + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),
        (struct.pack(">I", 0x12340801) + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),
        (struct.pack(">I", 0x00000803) + struct.pack(">I", 2), "truncated IDX header"),
        (struct.pack(">II", 0x00000801, 5) + b"\x01\x02", "header says \\(5,\\) = 5 bytes of data, found 2"),
        (struct.pack(">II", 0x00000801, 1) + b"\x01\x02", "1 trailing bytes"),
    ],
)
def test_malformed_files_are_named_errors(tmp_path, data, message):
    path = tmp_path / "bad-labels-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(idx.IdxError, match=message) as err:
        idx.read(path)
    assert str(path) in str(err.value)


def test_wrong_kind_of_file(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx.encode(np.zeros((2, 2, 2), dtype=np.uint8)))
    with pytest.raises(idx.IdxError, match="3 dimensions, expected 1"):
        idx.read(path, ndim=1)


def test_count_mismatch_names_both_files(tmp_path):
    (tmp_path / "imgs").write_bytes(idx.encode(np.zeros((3, 2, 2), dtype=np.uint8)))
    (tmp_path / "lbls").write_bytes(idx.encode(np.zeros(2, dtype=np.uint8)))
    with pytest.raises(idx.IdxError, match=r"imgs has 3 images but .*lbls has 2 labels"):
        idx.read_pair(tmp_path / "imgs", tmp_path / "lbls")
