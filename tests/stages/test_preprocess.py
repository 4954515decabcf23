import json

import numpy as np
import pytest

from stages.lib import idx
from stages.lib.data import load_split
from stages.preprocess import fit_normalization, normalize, prepare, split_train_val
from tests.conftest import make_synthetic


@pytest.fixture
def raw_dir(tmp_path):
    return make_synthetic(n_train_per_class=20, n_test_per_class=3).write(tmp_path / "raw")


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    images = np.arange(500)  # identity stands in for images: lets us check overlap
    x_tr, y_tr, x_val, y_val = split_train_val(images, labels, 0.1, seed=1)
    assert len(x_val) == 50 and len(x_tr) == 450
    assert np.bincount(y_val).tolist() == [5] * 10
    assert not set(x_tr) & set(x_val)
    assert set(x_tr) | set(x_val) == set(images)
    again = split_train_val(images, labels, 0.1, seed=1)
    np.testing.assert_array_equal(again[2], x_val)
    other = split_train_val(images, labels, 0.1, seed=2)
    assert not np.array_equal(other[2], x_val)


def test_minmax_maps_to_unit_interval():
    x = np.array([[0, 128, 255]], dtype=np.uint8)
    out = normalize(x, fit_normalization(x, "minmax"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 128 / 255, 1.0]], rtol=1e-6)


def test_zscore_fitted_on_train_only(raw_dir, tmp_path):
    out = tmp_path / "prepared"
    stats = prepare(raw_dir, out, 0.2, seed=0, method="zscore")
    x_train, _ = load_split(out, "train")
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-4
    x_test_raw = idx.read(raw_dir / "t10k-images-idx3-ubyte").astype(np.float64)
    x_test, _ = load_split(out, "test")
    c = stats["normalization"]
    np.testing.assert_allclose(x_test, (x_test_raw - c["offset"]) / c["scale"], rtol=1e-5, atol=1e-5)
    # constants are not the full training set's (train+val) nor the test set's
    full = idx.read(raw_dir / "train-images-idx3-ubyte").astype(np.float64)
    assert c["offset"] != pytest.approx(full.mean(), abs=1e-9)
    assert c["offset"] != pytest.approx(x_test_raw.mean(), abs=1e-9)


def test_prepare_writes_cached_arrays_and_stats(raw_dir, tmp_path):
    out = tmp_path / "prepared"
    stats = prepare(raw_dir, out, 0.1, seed=42, method="minmax")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{a}_{s}.npy" for a in "xy" for s in ("train", "val", "test")] + ["stats.json"]
    )
    x_train, y_train = load_split(out, "train")
    x_val, y_val = load_split(out, "val")
    x_test, y_test = load_split(out, "test")
    assert x_train.shape == (180, 28, 28) and x_val.shape == (20, 28, 28) and x_test.shape == (30, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype.kind == "i"
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == stats
    assert on_disk["class_counts"]["val"] == {str(d): 2 for d in range(10)}
    assert on_disk["class_counts"]["test"] == {str(d): 3 for d in range(10)}
    assert len(on_disk["sha256"]) == 64


def test_arrays_load_without_pickles(raw_dir, tmp_path):
    out = tmp_path / "prepared"
    prepare(raw_dir, out, 0.1, seed=0, method="minmax")
    np.save(out / "y_val.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_split(out, "val")


def test_bad_raw_file_fails_naming_it_and_keeps_previous_output(raw_dir, tmp_path):
    out = tmp_path / "prepared"
    prepare(raw_dir, out, 0.1, seed=0, method="minmax")
    before = (out / "x_train.npy").read_bytes()
    labels = raw_dir / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(idx.IdxError, match="train-labels-idx1-ubyte: truncated"):
        prepare(raw_dir, out, 0.1, seed=0, method="minmax")
    assert (out / "x_train.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]
