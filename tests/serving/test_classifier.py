"""The classifier's input checks: every bad batch is a clear error (the served model answers it with HTTP 400)."""

import numpy as np
import pandas as pd
import pytest

from stages.serving import classifier


def test_accepts_images_and_flat_vectors():
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28))
    assert classifier.check_pixels(batch).shape == (3, 28, 28)
    assert classifier.check_pixels(batch.reshape(3, 784).tolist()).dtype == np.float32
    assert classifier.check_pixels(pd.DataFrame(batch.reshape(3, 784))).shape == (3, 28, 28)


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.zeros((1, 27, 28)), "expected a batch of 28x28 images"),
        (np.zeros((28, 28)), "expected a batch of 28x28 images"),
        (np.zeros((0, 28, 28)), "the batch is empty"),
        (np.full((1, 28, 28), 256.0), "pixel values must be in [0, 255]"),
        (np.full((1, 28, 28), -1.0), "pixel values must be in [0, 255]"),
        (np.full((1, 28, 28), np.nan), "pixel values must be numbers in [0, 255], got NaN or infinity"),
        ([[["a"] * 28] * 28], "pixels must be numbers"),
    ],
)
def test_bad_batches_are_rejected_with_a_400_error(batch, message):
    with pytest.raises(classifier.BadInput, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        classifier.check_pixels(batch)
    assert "\n" not in str(info.value)


def test_softmax_rows_sum_to_one():
    probs = classifier.softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, 0.0]]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[1].argmax() == 0
    logits = np.array([[0.0, np.log(3.0)] + [-np.inf] * 8], np.float32)
    np.testing.assert_allclose(classifier.softmax(logits)[0, :2], [0.25, 0.75], rtol=1e-6)
