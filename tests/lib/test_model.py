"""The network and the training loop (TensorFlow: slow to import, so marked slow)."""

import itertools
import math

import numpy as np
import pytest

from tests.conftest import imported_on_use

pytestmark = pytest.mark.slow

nn = imported_on_use("stages.lib.model")


@pytest.mark.parametrize(
    "hidden_units, activation, dropout, output",
    list(itertools.product([[128], [64, 32]], ["relu", "sigmoid", "tanh"], [0.0, 0.2], ["softmax", "linear"])),
)
def test_build_every_combination(hidden_units, activation, dropout, output):
    model = nn.build(hidden_units, activation, dropout, output)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == hidden_units + [10]
    assert all(layer.activation.__name__ == activation for layer in dense[:-1])
    assert dense[-1].activation.__name__ == ("softmax" if output == "softmax" else "linear")
    drops = [layer for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert len(drops) == (len(hidden_units) if dropout else 0)
    out = model(np.zeros((2, 28, 28), np.float32)).numpy()
    assert out.shape == (2, 10)
    if output == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)


def test_default_network_is_the_notebooks():
    model = nn.build([128], "relu", 0.0, "softmax")
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Dense"]
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10


@pytest.mark.parametrize(
    "labels, output, loss",
    [
        ("sparse", "softmax", ("SparseCategoricalCrossentropy", False)),
        ("sparse", "linear", ("SparseCategoricalCrossentropy", True)),
        ("onehot", "softmax", ("CategoricalCrossentropy", False)),
        ("onehot", "linear", ("CategoricalCrossentropy", True)),
    ],
)
def test_loss_matches_labels_and_output(labels, output, loss):
    fn = nn.loss_function(labels, output)
    assert (type(fn).__name__, fn.get_config()["from_logits"]) == loss
    y = nn.encode_labels(np.array([3, 0]), labels)
    assert y.shape == ((2, 10) if labels == "onehot" else (2,))


def _trained_weights(x, y, order, steps_per_call):
    import keras

    keras.utils.set_random_seed(0)
    model = nn.build([8], "relu", 0.0, "softmax")
    optimizer = keras.optimizers.Adam(1e-2)
    steps = nn.Steps(model, optimizer, nn.loss_function("sparse", "softmax"), steps_per_call=steps_per_call)
    loss_sum, correct = steps.train_epoch(x, y, order)
    return model.get_weights(), int(optimizer.iterations.numpy()), float(loss_sum), float(correct)


def test_train_epoch_takes_one_step_per_row_whatever_the_steps_per_call():
    # 10 batches of 4: calls of 1 step, 3 + 3 + 3 + a partial 1, 10 exactly, and
    # one partial call of 10 out of 16 (its padding rows must not be trained on).
    rng = np.random.default_rng(1)
    x = rng.random((40, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 40).astype(np.int32)
    order = rng.permutation(40).astype(np.int32).reshape(10, 4)
    reference, iterations, loss_sum, correct = _trained_weights(x, y, order, 1)
    assert iterations == 10
    assert math.isfinite(loss_sum) and 0 <= correct <= 40
    for k in (3, 10, 16):
        weights, iterations, other_loss, other_correct = _trained_weights(x, y, order, k)
        assert iterations == 10, k
        for got, want in zip(weights, reference, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert other_loss == pytest.approx(loss_sum, rel=1e-5) and other_correct == correct


@pytest.mark.parametrize("batch_norm, pooling", [(True, "max"), (False, "average")])
def test_cnn_blocks_then_the_dense_head(batch_norm, pooling):
    cnn = {"filters": [4, 8], "kernel_size": 5, "batch_norm": batch_norm, "pooling": pooling}
    model = nn.build([16], "relu", 0.25, "softmax", kind="cnn", cnn=cnn)
    block = ["Conv2D"] + (["BatchNormalization"] if batch_norm else []) + ["Activation"]
    block += ["MaxPooling2D" if pooling == "max" else "AveragePooling2D"]
    assert [type(layer).__name__ for layer in model.layers] == (
        ["Reshape"] + block * 2 + ["Flatten", "Dense", "Dropout", "Dense"]
    )
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [4, 8] and all(c.kernel_size == (5, 5) for c in convs)
    assert all(c.use_bias is not batch_norm for c in convs), "batch norm makes the conv bias redundant"
    assert model.get_layer("flatten").output.shape[-1] == 7 * 7 * 8  # "same" padding, two 2x2 poolings
    assert model(np.zeros((3, 28, 28), np.float32)).shape == (3, 10)


def test_pool_first_pools_before_batch_norm_and_activation():
    cnn = {"filters": [4, 8], "kernel_size": 3, "batch_norm": True, "pooling": "max", "pool_first": True}
    model = nn.build([16], "relu", 0.25, "softmax", kind="cnn", cnn=cnn)
    block = ["Conv2D", "MaxPooling2D", "BatchNormalization", "Activation"]
    assert [type(layer).__name__ for layer in model.layers] == (
        ["Reshape"] + block * 2 + ["Flatten", "Dense", "Dropout", "Dense"]
    )
    assert model.get_layer("batch_norm_1").output.shape[1:] == (14, 14, 4), "normalizes the pooled values"
    assert model.get_layer("flatten").output.shape[-1] == 7 * 7 * 8
    # Without batch norm, max pooling and ReLU commute: the same network, the same outputs.
    plain = {**cnn, "batch_norm": False}
    first, last = (
        nn.build([16], "relu", 0.0, "softmax", kind="cnn", cnn={**plain, "pool_first": p}) for p in (True, False)
    )
    last.set_weights(first.get_weights())
    x = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(first(x).numpy(), last(x).numpy(), rtol=1e-5, atol=1e-7)


def test_a_stride_block_halves_the_side_with_its_convolution():
    cnn = {"filters": [4, 8], "kernel_size": 5, "batch_norm": True, "pooling": ["max", "stride"], "pool_first": True}
    model = nn.build([16], "relu", 0.25, "softmax", kind="cnn", cnn=cnn)
    assert [type(layer).__name__ for layer in model.layers] == (
        ["Reshape", "Conv2D", "MaxPooling2D", "BatchNormalization", "Activation"]
        + ["Conv2D", "BatchNormalization", "Activation", "Flatten", "Dense", "Dropout", "Dense"]
    )
    assert model.get_layer("conv_1").strides == (1, 1) and model.get_layer("conv_2").strides == (2, 2)
    assert model.get_layer("conv_2").output.shape[1:] == (7, 7, 8)
    assert model.get_layer("flatten").output.shape[-1] == 7 * 7 * 8
    # One value for every block: both convolutions stride, no pooling layer at all.
    strided = nn.build([16], "relu", 0.0, "softmax", kind="cnn", cnn={**cnn, "pooling": "stride"})
    assert not [layer for layer in strided.layers if "Pooling" in type(layer).__name__]
    assert strided.get_layer("flatten").output.shape[-1] == 7 * 7 * 8
    # A quarter of the multiply-adds of the same block followed by pooling.
    pooled = nn.build([16], "relu", 0.25, "softmax", kind="cnn", cnn={**cnn, "pooling": "max"})
    assert nn.multiply_adds(pooled) - nn.multiply_adds(model) == 14 * 14 * 8 * 25 * 4 * 3 // 4


def test_a_block_of_several_convolutions_pools_after_the_last():
    cnn = {"filters": [4, 8], "kernel_size": 3, "batch_norm": True, "pooling": ["max", "stride"], "convs": [2, 3]}
    model = nn.build([16], "relu", 0.0, "softmax", kind="cnn", cnn=cnn)
    unit = ["Conv2D", "BatchNormalization", "Activation"]
    assert [type(layer).__name__ for layer in model.layers] == (
        ["Reshape"] + unit * 2 + ["MaxPooling2D"] + unit * 3 + ["Flatten", "Dense", "Dense"]
    )
    names = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert names == ["conv_1", "conv_1_2", "conv_2", "conv_2_2", "conv_2_3"]
    assert model.get_layer("conv_1").output.shape[1:] == model.get_layer("conv_1_2").output.shape[1:] == (28, 28, 4)
    # Only the block's last convolution strides.
    assert [model.get_layer(n).strides for n in names[2:]] == [(1, 1), (1, 1), (2, 2)]
    assert model.get_layer("conv_2_3").output.shape[1:] == (7, 7, 8)
    assert model.get_layer("conv_1_2").input.shape[-1] == 4 and model.get_layer("conv_2_2").input.shape[-1] == 8
    # One convolution per block is the plain block, layer for layer and name for name.
    plain = {k: v for k, v in cnn.items() if k != "convs"}
    one, base = (nn.build([16], "relu", 0.0, "softmax", kind="cnn", cnn=c) for c in ({**cnn, "convs": 1}, plain))
    assert [layer.get_config() for layer in one.layers] == [layer.get_config() for layer in base.layers]


def test_multiply_adds_count_the_convolutions_and_dense_layers():
    assert nn.multiply_adds(nn.build([128], "relu", 0.0, "softmax")) == 784 * 128 + 128 * 10
    recipe = {"filters": [16, 32], "kernel_size": 5, "batch_norm": True, "pooling": "max"}
    cnn = nn.build([128], "relu", 0.25, "softmax", kind="cnn", cnn=recipe)
    conv = 28 * 28 * 16 * 5 * 5 * 1 + 14 * 14 * 32 * 5 * 5 * 16
    assert nn.multiply_adds(cnn) == conv + 7 * 7 * 32 * 128 + 128 * 10 == 3_024_384
    k3 = nn.build([128], "relu", 0.25, "softmax", kind="cnn", cnn={**recipe, "kernel_size": 3, "pool_first": True})
    assert nn.multiply_adds(k3) == 28 * 28 * 16 * 9 + 14 * 14 * 32 * 9 * 16 + 7 * 7 * 32 * 128 + 128 * 10
    two = nn.build([128], "relu", 0.25, "softmax", kind="cnn", cnn={**recipe, "kernel_size": 3, "convs": 2})
    extra = 28 * 28 * 16 * 9 * 16 + 14 * 14 * 32 * 9 * 32
    assert nn.multiply_adds(two) == 28 * 28 * 16 * 9 + 14 * 14 * 32 * 9 * 16 + extra + 7 * 7 * 32 * 128 + 128 * 10


def test_label_smoothing_spreads_the_targets():
    probs = np.array([[0.7, 0.3] + [0.0] * 8], np.float32)
    smooth = nn.loss_function("sparse", "softmax", 0.2)
    # Targets: 0.8 + 0.02 for class 0, 0.02 for every other class.
    want = nn.loss_function("onehot", "softmax", 0.2)(np.eye(10, dtype=np.float32)[[0]], probs)
    assert float(smooth(np.array([0]), probs)) == pytest.approx(float(want), rel=1e-6)
    assert float(smooth(np.array([0]), probs)) > float(nn.loss_function("sparse", "softmax")(np.array([0]), probs))
    assert type(nn.loss_function("sparse", "softmax", 0.0)).__name__ == "SparseCategoricalCrossentropy"


def _rate(rate, step):
    return rate if isinstance(rate, float) else float(rate(step))


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("constant", 0, 0.01),
        ("constant", 99, 0.01),
        ("cosine", 0, 0.01),
        ("cosine", 50, 0.005),
        ("cosine", 100, 0.0),
        ("onecycle", 0, 0.01 / 25),  # warm-up from peak / 25 ...
        ("onecycle", 15, (0.01 / 25 + 0.01) / 2),  # ... linearly ...
        ("onecycle", 30, 0.01),  # ... to the peak after warmup = 30 % of the steps,
        ("onecycle", 65, 0.01 * (1 + 1e-4) / 2),  # then half a cosine ...
        ("onecycle", 100, 0.01 * 1e-4),  # ... down to peak / 10^4
    ],
)
def test_schedules_at_known_steps(schedule, step, expected):
    rate = nn.learning_rate(schedule, 0.01, total_steps=100, warmup=0.3)
    assert _rate(rate, step) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_optimizer_from_params():
    cfg = {"optimizer": "adamw", "learning_rate": 0.002, "weight_decay": 0.05, "schedule": "cosine", "epochs": 2}
    opt = nn.optimizer({**cfg, "warmup": 0.0}, steps_per_epoch=10)
    assert type(opt).__name__ == "AdamW" and opt.weight_decay == pytest.approx(0.05)
    assert float(opt.learning_rate) == pytest.approx(0.002)
    assert float(opt._learning_rate(10)) == pytest.approx(0.001), "cosine: half the peak half-way through 20 steps"
    default = nn.optimizer({**cfg, "optimizer": "adam", "schedule": "constant", "warmup": 0.3}, steps_per_epoch=10)
    assert type(default).__name__ == "Adam" and float(default.learning_rate) == pytest.approx(0.002)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_augment_sees_every_training_batch_with_its_own_step_number(jit_compile):
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(2)
    x = rng.random((40, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 40).astype(np.int32)
    order = rng.permutation(40).astype(np.int32).reshape(10, 4)
    seen = tf.Variable(tf.zeros([2], tf.int64))

    def spy(batch, step):
        seen.assign_add(tf.stack([tf.constant(1, tf.int64), step]))  # batches, sum of step numbers
        return batch

    keras.utils.set_random_seed(0)
    model = nn.build([8], "relu", 0.0, "softmax")
    steps = nn.Steps(model, keras.optimizers.Adam(1e-2), nn.loss_function("sparse", "softmax"), 3, spy, jit_compile)
    steps.train_epoch(x, y, order)
    steps.train_epoch(x, y, order)
    assert seen.numpy().tolist() == [20, sum(range(20))], "one call per step, numbered 0, 1, ... across epochs"
