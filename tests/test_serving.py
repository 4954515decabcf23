"""The served model's input checks: every bad request is a clear error that the server maps to HTTP 400."""

import numpy as np
import pandas as pd
import pytest

serving = pytest.importorskip("stages.serving")


def test_accepts_images_and_flat_vectors():
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28))
    assert serving.check_pixels(batch).shape == (3, 28, 28)
    assert serving.check_pixels(batch.reshape(3, 784).tolist()).dtype == np.float32
    assert serving.check_pixels(pd.DataFrame(batch.reshape(3, 784))).shape == (3, 28, 28)


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.zeros((1, 27, 28)), "expected a batch of 28x28 images"),
        (np.zeros((28, 28)), "expected a batch of 28x28 images"),
        (np.zeros((0, 28, 28)), "the batch is empty"),
        (np.full((1, 28, 28), 256.0), "pixel values must be in [0, 255]"),
        (np.full((1, 28, 28), -1.0), "pixel values must be in [0, 255]"),
        (np.full((1, 28, 28), np.nan), "pixel values must be in [0, 255]"),
        ([[["a"] * 28] * 28], "pixels must be numbers"),
    ],
)
def test_bad_batches_are_rejected_with_a_400_error(batch, message):
    with pytest.raises(serving.BadInput, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        serving.check_pixels(batch)
    assert info.value.get_http_status_code() == 400


def test_softmax_rows_sum_to_one():
    probs = serving.softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, 0.0]]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[1].argmax() == 0
