"""Reading the prepared arrays back (stages.lib.data): no pickles, and the data set's facts from stats.json."""

import numpy as np
import pytest

from stages.lib import data


def test_a_split_is_read_back_and_a_pickled_array_is_refused(tmp_path):
    np.save(tmp_path / "x_val.npy", np.zeros((3, 4, 5), np.float32))
    np.save(tmp_path / "y_val.npy", np.array([0, 1, 2], np.uint8))
    x, y = data.load_split(tmp_path, "val")
    assert x.shape == (3, 4, 5) and y.tolist() == [0, 1, 2]
    np.save(tmp_path / "y_val.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        data.load_split(tmp_path, "val")


def test_the_network_is_shaped_by_the_prepared_data():
    shapes = {"x_train": [90, 16, 12, 3]}
    pets = {"name": "pets", "kind": "folder", "classes": ["cat", "dog", "hen"], "style": "plain"}
    assert data.network_shape({"shapes": shapes, "dataset": pets}) == {
        "input_shape": (16, 12, 3),
        "classes": 3,
        "name": "pets",
    }
    old = {"shapes": {"x_train": [54000, 28, 28]}}  # prepared before data sets had names: MNIST's
    assert data.dataset(old) == data.MNIST and data.dataset(old) is not data.MNIST
    assert data.network_shape(old) == {"input_shape": (28, 28), "classes": 10, "name": "mnist"}
    assert data.is_digits(data.MNIST["classes"]) and not data.is_digits(pets["classes"])
