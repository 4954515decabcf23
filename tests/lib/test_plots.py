"""The report figures' layout (matplotlib, no TensorFlow)."""

import itertools

import numpy as np
import pytest

from tests.conftest import imported_on_use

# matplotlib and seaborn (2-3 s) are imported by the first test that draws, not when the suite is collected.
plots = imported_on_use("stages.lib.plots")


def digits(n, size=5):
    """``n`` distinct images on a background of 0: image i has value i + 1 on its diagonal."""
    images = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        images[i][np.eye(size, dtype=bool)] = i + 1
    return images


def test_tile_puts_each_image_in_its_cell_row_by_row():
    images = digits(11)
    canvas, anchors = plots.tile(images, columns=4)
    cell_w, cell_h = 5 + plots.GAP, 5 + plots.CAPTION
    assert canvas.shape == (3 * cell_h, 4 * cell_w)
    for i, image in enumerate(images):
        row, column = divmod(i, 4)
        top, left = row * cell_h + plots.CAPTION, column * cell_w + plots.GAP // 2
        assert np.array_equal(canvas[top : top + 5, left : left + 5], image), i
        assert anchors[i] == ((column + 0.5) * cell_w, top - 1)  # centred just above the image
    # Nothing else: every image's ink appears exactly once, the rest is background.
    assert sorted(canvas[canvas > 0].tolist()) == sorted(images[images > 0].tolist())


def test_tile_fills_with_the_images_background():
    images = digits(3) - 2.5  # e.g. z-scored: an empty pixel is negative
    canvas, _ = plots.tile(images, columns=8)
    assert canvas.shape == (5 + plots.CAPTION, 8 * (5 + plots.GAP))
    assert (canvas == -2.5).sum() == canvas.size - 3 * 5


@pytest.mark.parametrize("n", [0, 1, 25])
def test_image_grid_writes_a_png(tmp_path, n):
    path = tmp_path / "grid.png"
    plots.image_grid(digits(n, 28), [f"true {i}\npred {i}" for i in range(n)], path, "title", [True] * n)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_tile_of_colour_images_is_white_around_them_for_the_black_captions():
    rng = np.random.default_rng(0)
    images = rng.uniform(0.1, 0.9, (3, 6, 6, 3)).astype(np.float32)
    canvas, _ = plots.tile(images, columns=2)
    assert canvas.shape == (2 * (6 + plots.CAPTION), 2 * (6 + plots.GAP), 3)
    assert (canvas == images.max()).all(axis=2).sum() == canvas.shape[0] * canvas.shape[1] - 3 * 36


def caption_boxes(monkeypatch, tmp_path, images, captions, columns):
    """The drawn captions' boxes on the page (display units), in the order given."""
    from stages.lib import plots as module  # the module itself, to patch (``plots`` stands for it)

    figures = []
    monkeypatch.setattr(module, "_save", lambda fig, path: figures.append(fig))
    module.image_grid(images, captions, tmp_path / "grid.png", "title", [False] * len(captions), columns=columns)
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in fig.axes[0].texts]
    module.plt.close(fig)
    return boxes


@pytest.mark.parametrize(
    ("names", "side"),
    [
        (["0", "1"], 28),
        (["owl", "rat"], 28),  # captions just narrower than a 28-pixel image's cell
        (["red circle", "blue-square", "green_triangle_with_a_long_name"], 32),
    ],
    ids=["digits", "about-a-cell", "long"],
)
def test_captions_never_run_into_their_neighbours(monkeypatch, tmp_path, names, side):
    images = np.random.default_rng(1).uniform(0, 1, (8, side, side, 3)).astype(np.float32)
    captions = [f"true {names[i % len(names)]} / pred {names[(i + 1) % len(names)]}\n97%" for i in range(8)]
    boxes = caption_boxes(monkeypatch, tmp_path, images, captions, columns=4)
    for row in (boxes[:4], boxes[4:]):
        for left, right in itertools.pairwise(row):
            assert left.x1 < right.x0, (left, right)


def test_short_captions_keep_the_usual_gap():
    assert plots.caption_gap(["true 6 / pred 0\n97%"], 28, plots.IMAGE_INCHES / (28 + plots.GAP)) == plots.GAP
    assert plots.caption_gap(["true green_triangle / pred red circle"], 28, 1.3 / 36) > plots.GAP
