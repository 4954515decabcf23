"""Augmentation inside the training loop: exact shifts, seeded draws, shapes (TensorFlow: slow)."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow

augment = pytest.importorskip("stages.lib.augment")
tf = augment.tf


def images(n=4, seed=0):
    x = np.zeros((n, 28, 28), np.float32)
    rng = np.random.default_rng(seed)
    x[:, 8:20, 10:18] = rng.random((n, 12, 8), dtype=np.float32)  # ink in the middle, margins empty
    return x


def moved(x, dx=0.0, dy=0.0, angle=0.0, scale=1.0):
    n = len(x)
    full = lambda v: tf.fill([n], float(v))  # noqa: E731
    return augment.affine(tf.constant(x), full(dx), full(dy), full(angle), full(scale)).numpy()


def test_nothing_asked_nothing_changed():
    x = images()
    np.testing.assert_array_equal(moved(x), x)


@pytest.mark.parametrize("dx, dy", [(3, 0), (0, -2), (-1, 4)])
def test_a_shift_of_k_pixels_moves_the_ink_by_k(dx, dy):
    x = images()
    want = np.roll(x, (dy, dx), axis=(1, 2))  # the margins are empty: rolling is shifting
    np.testing.assert_allclose(moved(x, dx, dy), want, atol=1e-6)


def test_quarter_turn_and_zoom_keep_the_ink_about_the_centre():
    x = images()
    np.testing.assert_allclose(moved(x, angle=np.pi / 2), np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)
    bigger = moved(x, scale=1.2)
    assert bigger.sum() == pytest.approx(x.sum() * 1.2**2, rel=0.05)  # area grows by the square


def test_random_draws_depend_on_the_seed_and_step_only():
    x = tf.constant(np.repeat(images(1), 8, axis=0))  # eight copies of one image
    a = augment.random_affine(x, tf.constant([1, 5], tf.int64), 2, 10, 0.1).numpy()
    b = augment.random_affine(x, tf.constant([1, 5], tf.int64), 2, 10, 0.1).numpy()
    c = augment.random_affine(x, tf.constant([1, 6], tf.int64), 2, 10, 0.1).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c), "the next step draws new transformations"
    assert not np.allclose(a[0], a[1]), "each image its own transformation"


def test_the_background_stays_background_after_zscore():
    background = -0.42  # an empty pixel after z-score normalization
    x = np.full((2, 28, 28), background, np.float32)
    out = augment.random_affine(tf.constant(x), tf.constant([0, 0], tf.int64), 4, 30, 0.2, background=background)
    np.testing.assert_allclose(out.numpy(), x, atol=1e-6)


@pytest.mark.parametrize("background", [0.0, -0.42])
def test_the_fused_kernel_moves_the_same_pixels(background):
    """``augment_kernel: fused`` (TensorFlow's resampling op) and ``gather`` draw the same transformations
    and produce the same images up to float rounding; only their bits may differ."""
    x = tf.constant(images(16, seed=3) + background)
    seed = tf.constant([7, 11], tf.int64)
    gather = augment.random_affine(x, seed, 3, 25, 0.2, background=background).numpy()
    fused = augment.random_affine(x, seed, 3, 25, 0.2, background=background, kernel="fused").numpy()
    assert not np.allclose(gather, x.numpy(), atol=1e-3), "something moved"
    np.testing.assert_allclose(fused, gather, atol=2e-5)
    n = 4
    full = lambda v: tf.fill([n], float(v))  # noqa: E731
    shifted = augment.affine_fused(tf.constant(images(n)), full(3), full(-2), full(0), full(1)).numpy()
    np.testing.assert_allclose(shifted, np.roll(images(n), (-2, 3), axis=(1, 2)), atol=1e-6)
