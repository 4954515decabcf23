"""Digits drawn as on the demo page's sketchpad: polylines of the ten digits, a few writers' styles each.

Each digit has three styles (an open or closed 4, a 1 with or without a flag
and a base, a 7 with or without a crossbar, ...), drawn with random slant,
rotation, proportions, size, position and a little wobble, then rendered as the
sketchpad renders a stroke: a round pen of the page's radius, black on a
transparent canvas of the page's size, anti-aliased. ``accuracy`` runs them
through the page's own prediction function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stages.lib.data import load_split
from stages.tools.demo import BRUSH, CANVAS, answer_drawing

Stroke = list[tuple[float, float]]  # points in a unit box: x to the right, y down


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 28) -> Stroke:
    """An elliptic arc from angle ``start`` to ``end`` in degrees (0 = right, 90 = down)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in np.linspace(start, end, n)
    ]


def smooth(points: Stroke, rounds: int = 2) -> Stroke:
    """Chaikin's corner cutting: a hand's curve through the given points (the ends stay)."""
    for _ in range(rounds):
        cut = [points[0]]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            cut += [(0.75 * x0 + 0.25 * x1, 0.75 * y0 + 0.25 * y1), (0.25 * x0 + 0.75 * x1, 0.25 * y0 + 0.75 * y1)]
        points = [*cut, points[-1]]
    return points


STYLES: dict[int, list[list[Stroke]]] = {
    0: [
        [arc(0.5, 0.5, 0.28, 0.42, -90, 275)],
        [arc(0.5, 0.5, 0.33, 0.43, -120, 250)],
        [arc(0.5, 0.5, 0.2, 0.42, -80, 290)],
    ],
    1: [
        [[(0.5, 0.08), (0.5, 0.92)]],
        [[(0.33, 0.24), (0.52, 0.08), (0.52, 0.92)]],
        [[(0.36, 0.22), (0.55, 0.08), (0.55, 0.92)], [(0.36, 0.92), (0.74, 0.92)]],
    ],
    2: [
        [[*arc(0.5, 0.3, 0.25, 0.22, 200, 380), (0.24, 0.9), (0.8, 0.9)]],
        [[*arc(0.5, 0.32, 0.27, 0.24, 180, 400), (0.22, 0.88), (0.82, 0.86)]],
        [smooth([*arc(0.5, 0.28, 0.24, 0.2, 210, 360)[::4], (0.62, 0.55), (0.38, 0.74), (0.22, 0.9), (0.8, 0.9)])],
    ],
    3: [
        [[*arc(0.5, 0.28, 0.24, 0.2, 200, 450), *arc(0.5, 0.7, 0.27, 0.22, 270, 520)]],
        [[(0.25, 0.1), (0.75, 0.1), (0.45, 0.42), *arc(0.5, 0.68, 0.27, 0.24, 250, 520)]],
        [[*arc(0.48, 0.27, 0.2, 0.19, 190, 450), *arc(0.48, 0.7, 0.3, 0.23, 270, 515)]],
    ],
    4: [
        [[(0.6, 0.08), (0.2, 0.62), (0.85, 0.62)], [(0.65, 0.3), (0.65, 0.95)]],
        [[(0.3, 0.08), (0.25, 0.55), (0.8, 0.55)], [(0.68, 0.1), (0.68, 0.95)]],
        [[(0.65, 0.95), (0.65, 0.08), (0.2, 0.62), (0.85, 0.62)]],
    ],
    5: [
        [[(0.75, 0.1), (0.32, 0.1), (0.28, 0.45), *arc(0.48, 0.66, 0.27, 0.24, 240, 510)]],
        [[(0.32, 0.1), (0.28, 0.45), *arc(0.48, 0.66, 0.27, 0.24, 240, 510)], [(0.32, 0.1), (0.76, 0.08)]],
        [[(0.72, 0.1), (0.34, 0.1), (0.3, 0.42), *arc(0.5, 0.66, 0.3, 0.27, 235, 500)]],
    ],
    6: [
        [[*smooth([(0.7, 0.08), (0.48, 0.22), (0.33, 0.42), (0.28, 0.66)]), *arc(0.5, 0.7, 0.22, 0.2, 180, 540)]],
        [[(0.62, 0.08), (0.3, 0.62), *arc(0.5, 0.7, 0.22, 0.2, 190, 540)]],
        [[*smooth([(0.66, 0.08), (0.42, 0.3), (0.32, 0.55), (0.32, 0.72)]), *arc(0.48, 0.75, 0.16, 0.16, 180, 530)]],
    ],
    7: [
        [[(0.22, 0.12), (0.78, 0.12), (0.42, 0.92)]],
        [[(0.22, 0.12), (0.78, 0.12), (0.42, 0.92)], [(0.36, 0.52), (0.72, 0.52)]],
        [[(0.2, 0.22), (0.25, 0.12), (0.78, 0.12), *smooth([(0.78, 0.12), (0.56, 0.5), (0.46, 0.92)])]],
    ],
    8: [
        [[*arc(0.5, 0.28, 0.2, 0.2, 90, 450), *arc(0.5, 0.7, 0.25, 0.22, 270, 630)]],
        [[*arc(0.5, 0.26, 0.16, 0.18, 90, 450), *arc(0.5, 0.68, 0.28, 0.24, 270, 630)]],
        [
            smooth(
                [(0.7, 0.18), (0.5, 0.06), (0.3, 0.2), (0.5, 0.46), (0.72, 0.7), (0.5, 0.94), (0.28, 0.7), (0.5, 0.46)]
                + [(0.7, 0.2)],
                3,
            )
        ],
    ],
    9: [
        [[*arc(0.47, 0.3, 0.23, 0.2, 0, 360), (0.7, 0.3), (0.68, 0.92)]],
        [[*arc(0.47, 0.3, 0.23, 0.2, 10, 370), *smooth([(0.7, 0.3), (0.66, 0.7), (0.5, 0.92)])]],
        [[*arc(0.45, 0.28, 0.25, 0.2, -20, 345), (0.7, 0.3), (0.7, 0.92)]],
    ],
}


def pose(strokes: list[Stroke], rng: np.random.Generator) -> list[np.ndarray]:
    """The strokes slanted, rotated, squeezed, wobbled, sized and placed on the canvas (pixel coordinates)."""
    angle = math.radians(rng.uniform(-12, 12))
    shear = rng.uniform(-0.25, 0.15)  # most hands slant to the right
    sx, sy = rng.uniform(0.7, 1.1), rng.uniform(0.9, 1.1)
    matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) @ np.array(
        [[sx, shear], [0, sy]]
    )
    height = rng.uniform(0.45, 0.8) * CANVAS
    posed = []
    for stroke in strokes:
        points = (np.asarray(stroke) - 0.5) @ matrix.T
        t = np.linspace(0, 1, len(points))[:, None]
        wobble = 0.015 * np.sin(2 * math.pi * (t * rng.uniform(0.5, 1.5) + rng.uniform(0, 1, size=2)))
        posed.append((points + wobble) * height)
    every = np.concatenate(posed)
    low, high = every.min(axis=0), every.max(axis=0)
    margin = BRUSH + 2
    offset = [rng.uniform(margin - lo, CANVAS - margin - hi) for lo, hi in zip(low, high, strict=True)]
    return [p + offset for p in posed]


def render(strokes: list[np.ndarray], radius: float = BRUSH, size: int = CANVAS, scale: int = 4) -> Image.Image:
    """Black round-pen strokes on a transparent canvas, anti-aliased (drawn ``scale`` times larger, then reduced)."""
    mask = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(mask)
    r = radius * scale
    for stroke in strokes:
        points = [(float(x * scale), float(y * scale)) for x, y in stroke]
        draw.line(points, fill=255, width=round(2 * r), joint="curve")
        for x, y in (points[0], points[-1]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.putalpha(mask.resize((size, size), Image.Resampling.LANCZOS))
    return canvas


def drawings(per_style: int = 10, seed: int = 0) -> list[tuple[int, int, Image.Image]]:
    """(digit, style, canvas) for every digit and style, ``per_style`` writers each."""
    rng = np.random.default_rng(seed)
    return [
        (digit, style, render(pose(strokes, rng)))
        for digit, styles in STYLES.items()
        for style, strokes in enumerate(styles)
        for _ in range(per_style)
    ]


def accuracy(model: Callable[[np.ndarray], np.ndarray], per_style: int = 10, seed: int = 0) -> tuple[float, dict]:
    """The share of drawings the page answers correctly, and per digit, through the page's own function."""
    right: dict[int, list[bool]] = {d: [] for d in STYLES}
    for digit, _, canvas in drawings(per_style, seed):
        right[digit].append(answer_drawing(model, canvas).digit == digit)
    every = [r for rs in right.values() for r in rs]
    return float(np.mean(every)), {d: float(np.mean(rs)) for d, rs in right.items()}


# --- a real model to judge them: the train stage's functions on the prepared MNIST data --------


def recipe_overrides(recipe: str) -> list[tuple[str, object]]:
    """The ``-S key=value`` settings of a Makefile recipe (``make cnn``) without the seed, as DVC parses them;
    none for "dense"."""
    import yaml

    from tests.recipes import recipe_settings

    if recipe == "dense":  # params.yaml as it is: the pipeline's default model
        return []
    return [(key, yaml.safe_load(value)) for key, value in (s.split("=", 1) for s in recipe_settings(recipe))]


def train(prepared: Path, directory: Path, recipe: str = "dense", params_file: Path = Path("params.yaml")) -> Path:
    """Train ``recipe`` on the prepared data as the train stage does; the model file (serving.json beside it)."""
    import yaml

    from stages import train as stage
    from stages.lib import training
    from stages.params import model as model_params
    from stages.params import schema
    from stages.params import train as train_params

    raw = schema.read_raw(params_file)
    for key, value in recipe_overrides(recipe):
        *path, last = key.split(".")
        target = raw
        for part in path:
            target = target[part]
        target[last] = value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(raw))
    cfg = schema.load(model_params, train_params, path=directory / "params.yaml")
    backend = training.backend_settings(cfg["model"], cfg["train"]["threads"])
    from stages.lib import model as nn  # TensorFlow, after the backend settings

    nn.configure(cfg["train"]["seed"], threads=backend["threads"])
    model = nn.build(**cfg["model"])
    training.fit(
        model,
        load_split(prepared, "train"),
        load_split(prepared, "val"),
        cfg["train"],
        cfg["model"]["output"],
        background=training.background_value(prepared / "stats.json"),
        jit_compile=backend["jit_compile"],
    )
    path = directory / "model.keras"
    nn.save_model(model, path)
    output = cfg["model"]["output"]
    form, refused = stage.make_portable(model, load_split(prepared, "val")[0], output, directory / "model.onnx")
    config = directory / "serving.json"
    stage.write_serving_config(output, form, refused, stats_path=prepared / "stats.json", path=config)
    return path
