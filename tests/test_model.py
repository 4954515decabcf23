"""The network and the training loop (TensorFlow: slow to import, so marked slow)."""

import itertools

import numpy as np
import pytest

pytestmark = pytest.mark.slow

nn = pytest.importorskip("stages.model")


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


@pytest.mark.parametrize("labels, output, loss", [
    ("sparse", "softmax", ("SparseCategoricalCrossentropy", False)),
    ("sparse", "linear", ("SparseCategoricalCrossentropy", True)),
    ("onehot", "softmax", ("CategoricalCrossentropy", False)),
    ("onehot", "linear", ("CategoricalCrossentropy", True)),
])
def test_loss_matches_labels_and_output(labels, output, loss):
    fn = nn.loss_function(labels, output)
    assert (type(fn).__name__, fn.get_config()["from_logits"]) == loss
    y = nn.encode_labels(np.array([3, 0]), labels)
    assert y.shape == ((2, 10) if labels == "onehot" else (2,))


def test_probabilities_from_logits():
    logits = np.array([[0.0, np.log(3.0)] + [-np.inf] * 8], np.float32)
    np.testing.assert_allclose(nn.probabilities(logits, "linear")[0, :2], [0.25, 0.75], rtol=1e-6)
