"""Augmentation inside the training loop: exact shifts, seeded draws, shapes (TensorFlow: slow)."""

import numpy as np
import pytest

from tests.conftest import imported_on_use

pytestmark = pytest.mark.slow

augment = imported_on_use("stages.lib.augment")
tf = imported_on_use("tensorflow")


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


# --- colour images: one transformation per image, every channel alike -----------------------------


def colour(n=4, seed=0, size=(20, 24)):
    """Colour images (N, H, W, 3) whose channels differ: ink in different places per channel."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, *size, 3), np.float32)
    x[:, 5:14, 6:16, 0] = rng.random((n, 9, 10), dtype=np.float32)
    x[:, 7:15, 9:18, 1] = rng.random((n, 8, 9), dtype=np.float32)
    x[:, 4:12, 8:14, 2] = rng.random((n, 8, 6), dtype=np.float32)
    return x


@pytest.mark.parametrize("kernel", ["gather", "fused"])
def test_each_channel_of_a_colour_image_moves_exactly_as_a_gray_image_would(kernel):
    x = colour(6, seed=1)
    seed = tf.constant([3, 9], tf.int64)
    out = augment.random_affine(tf.constant(x), seed, 3, 25, 0.2, background=-0.3, kernel=kernel).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    assert not np.allclose(out, x, atol=1e-3), "something moved"
    for k in range(3):  # the same draws (they depend on the batch's size, the seed and the step only)
        gray = augment.random_affine(tf.constant(x[..., k]), seed, 3, 25, 0.2, background=-0.3, kernel=kernel)
        np.testing.assert_array_equal(out[..., k], gray.numpy())


def test_a_colour_shift_and_turn_move_every_channel_together():
    x = colour(size=(24, 24))
    n = len(x)
    full = lambda v: tf.fill([n], float(v))  # noqa: E731
    shifted = augment.affine(tf.constant(x), full(3), full(-2), full(0), full(1)).numpy()
    np.testing.assert_allclose(shifted, np.roll(x, (-2, 3), axis=(1, 2)), atol=1e-6)
    turned = augment.affine(tf.constant(x), full(0), full(0), full(np.pi / 2), full(1)).numpy()
    np.testing.assert_allclose(turned, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)


def test_the_fused_kernel_moves_colour_images_like_gather():
    x = tf.constant(colour(8, seed=4))
    seed = tf.constant([5, 2], tf.int64)
    gather = augment.random_affine(x, seed, 3, 25, 0.2).numpy()
    fused = augment.random_affine(x, seed, 3, 25, 0.2, kernel="fused").numpy()
    np.testing.assert_allclose(fused, gather, atol=2e-5)


def test_colour_augmentation_compiles_with_xla():
    """The training loop compiles the gather kernel with XLA (the dense network's steps); XLA draws its own
    random numbers, so compiled colour images are compared with compiled gray ones."""
    x = tf.constant(colour(8, seed=2))
    seed = tf.constant([1, 3], tf.int64)
    compiled = tf.function(lambda x, s: augment.random_affine(x, s, 2, 10, 0.1), jit_compile=True)
    out = compiled(x, seed).numpy()
    assert out.shape == x.shape and not np.allclose(out, x.numpy(), atol=1e-3)
    for k in range(3):
        np.testing.assert_allclose(out[..., k], compiled(x[..., k], seed).numpy(), atol=1e-6)


def test_gray_images_move_as_before():
    """The gray path is the one it always was: a fixed batch moves to the same values as recorded before
    colour images were supported (to float rounding: the exact bits are the CPU's)."""
    rng = np.random.default_rng(123)
    x = rng.random((3, 28, 28), dtype=np.float32)
    out = augment.random_affine(tf.constant(x), tf.constant([1, 7], tf.int64), 2, 10, 0.1).numpy()
    expected = {(0, 14, 14): 0.31532466, (1, 3, 20): 0.5749901, (2, 20, 7): 0.32933757, (2, 27, 0): 0.0}
    for index, value in expected.items():
        assert out[index] == pytest.approx(value, abs=1e-5)
    assert out.sum() == pytest.approx(1026.93896, rel=1e-6)


@pytest.mark.parametrize("kind", ["dense", "cnn"])
def test_a_network_on_colour_images_trains_with_augmentation(kind):
    from stages.lib import model as nn
    from stages.lib import training

    nn.configure(0)
    rng = np.random.default_rng(0)
    x = rng.random((64, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 3, 64).astype(np.uint8)
    cnn = {"filters": [4], "kernel_size": 3, "batch_norm": False, "pooling": "max", "pool_first": False}
    model = nn.build([8], "relu", 0.0, "softmax", kind=kind, cnn=cnn, input_shape=(16, 16, 3), classes=3)
    cfg = {
        "labels": "sparse",
        "optimizer": "adam",
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup": 0.3,
        "label_smoothing": 0.0,
        "epochs": 2,
        "batch_size": 16,
        "seed": 1,
        "early_stopping_patience": 0,
        "augment": True,
        "shift": 2,
        "rotation": 10,
        "zoom": 0.1,
        "augment_kernel": "gather",
    }
    jit = kind == "dense"  # as training.backend_settings says: XLA for the dense network, a graph for the CNN
    history = training.fit(model, (x, y), (x[:16], y[:16]), cfg, "softmax", log=lambda line: None, jit_compile=jit)
    assert len(history) == 2 and all(np.isfinite(row["loss"]) for row in history)
