"""The train stage's TensorFlow-free helpers (the training itself: test_train_evaluate)."""

import numpy as np
import pytest

from stages.lib.training import epoch_order


def test_epoch_order_is_a_shuffle_in_whole_batches():
    order = epoch_order(100, 32, np.random.default_rng(0))
    assert order.shape == (3, 32) and order.dtype == np.int32
    assert len(set(order.ravel())) == 96  # no image twice; the last partial batch (4) left out
    assert set(order.ravel()) <= set(range(100))
    assert not np.array_equal(order.ravel(), np.arange(96))


def test_epoch_order_differs_between_epochs_and_repeats_with_the_seed():
    rng = np.random.default_rng(5)
    first, second = epoch_order(64, 8, rng), epoch_order(64, 8, rng)
    assert not np.array_equal(first, second)
    assert np.array_equal(first, epoch_order(64, 8, np.random.default_rng(5)))


def test_epoch_order_needs_one_whole_batch():
    assert epoch_order(32, 32, np.random.default_rng(0)).shape == (1, 32)
    with pytest.raises(ValueError, match="cannot fill one batch of 64"):
        epoch_order(63, 64, np.random.default_rng(0))
