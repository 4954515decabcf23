"""Load and validate ``params.yaml``: one schema, one-line errors naming the key.

Each stage asks for its own sections; validation happens before any heavy
import or work, so a typo costs a second, not a training run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.config import PARAMS_FILE


class ParamsError(ValueError):
    """A parameter is missing, unknown or has a value that is not allowed."""


@dataclass(frozen=True)
class Spec:
    """What a parameter accepts: a check returning the cleaned value, and a description."""

    describe: str
    check: Callable[[Any], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(minimum: int | None = None) -> Spec:
    text = "an integer" + (f" >= {minimum}" if minimum is not None else "")

    def check(v: Any) -> int:
        if not _is_int(v) or (minimum is not None and v < minimum):
            raise ValueError
        return int(v)

    return Spec(text, check)


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = True) -> Spec:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    text = f"a number in {lo}{low}, {'inf' if high is None else high}{hi}"

    def check(v: Any) -> float:
        if not _is_number(v):
            raise ValueError
        if v < low or (low_open and v == low):
            raise ValueError
        if high is not None and (v > high or (high_open and v == high)):
            raise ValueError
        return float(v)

    return Spec(text, check)


def choice(*allowed: str) -> Spec:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError
        return v

    return Spec("one of " + ", ".join(allowed), check)


def of_type(kind: type, describe: str) -> Spec:
    def check(v: Any) -> Any:
        if not isinstance(v, kind):
            raise ValueError
        return v

    return Spec(describe, check)


def text() -> Spec:
    return of_type(str, "a string")


def boolean() -> Spec:
    return of_type(bool, "true or false")


def list_of(item: Spec, *, min_len: int = 1, unique: bool = False) -> Spec:
    describe = f"a list of {min_len}+ {'distinct ' if unique else ''}items, each {item.describe}"

    def check(v: Any) -> list:
        if not isinstance(v, list) or len(v) < min_len:
            raise ValueError
        cleaned = [item.check(x) for x in v]
        if unique and len(set(cleaned)) != len(cleaned):
            raise ValueError
        return cleaned

    return Spec(describe, check)


SOURCES = ("keras", "kaggle", "npm", "local")

# A section maps keys to a Spec, or to a nested mapping of the same kind
# (``model.cnn``): ``dvc exp run -S model.cnn.filters=[16,32]`` reaches it.
Schema = dict[str, "Spec | Schema"]

SCHEMA: dict[str, Schema] = {
    "fetch": {
        "sources": list_of(choice(*SOURCES), unique=True),
        "local_dir": text(),
        "keras_url": text(),
        "kaggle_url": text(),
        "timeout_s": number(0, low_open=True),
        "retries": integer(0),
    },
    "preprocess": {
        "val_fraction": number(0, 1, low_open=True, high_open=True),
        "seed": integer(0),
        "normalize": choice("minmax", "zscore"),
    },
    "model": {
        "kind": choice("dense", "cnn"),
        "hidden_units": list_of(integer(1)),
        "activation": choice("relu", "sigmoid", "tanh"),
        "dropout": number(0, 1),
        "output": choice("softmax", "linear"),
        "cnn": {
            "filters": list_of(integer(1)),
            "kernel_size": integer(1),
            "batch_norm": boolean(),
            "pooling": choice("max", "average"),
            "pool_first": boolean(),
        },
    },
    "train": {
        "labels": choice("sparse", "onehot"),
        "optimizer": choice("adam", "adamw"),
        "learning_rate": number(0, low_open=True),
        "weight_decay": number(0),
        "schedule": choice("constant", "cosine", "onecycle"),
        "warmup": number(0, 1),
        "label_smoothing": number(0, 1),
        "epochs": integer(1),
        "batch_size": integer(1),
        "seed": integer(0),
        "early_stopping_patience": integer(0),
        "augment": boolean(),
        "shift": number(0, 14),
        "rotation": number(0, 180, high_open=False),
        "zoom": number(0, 1),
    },
    "evaluate": {
        "batch_size": integer(1),
        "top_confusions": integer(1),
        "gallery_size": integer(1),
        "sample_size": integer(1),
    },
}


def validate(raw: Any, sections: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Check ``sections`` of a params mapping against the schema; return cleaned copies."""
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must be a mapping of sections")
    cleaned: dict[str, dict[str, Any]] = {}
    for section in sections:
        cleaned[section] = _check(section, raw.get(section), SCHEMA[section])
    return cleaned


def _check(name: str, values: Any, schema: Schema) -> dict[str, Any]:
    """One (possibly nested) section: every key present, known and allowed."""
    if not isinstance(values, dict):
        raise ParamsError(f"params: section '{name}' is missing (keys: {', '.join(schema)})")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ParamsError(f"params: unknown key {name}.{unknown[0]} (allowed: {', '.join(schema)})")
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out[key] = _check(f"{name}.{key}", values.get(key), spec)
            continue
        if key not in values:
            raise ParamsError(f"params: {name}.{key} is missing (must be {spec.describe})")
        try:
            out[key] = spec.check(values[key])
        except (ValueError, TypeError):
            raise ParamsError(f"params: {name}.{key} must be {spec.describe}, got {values[key]!r}") from None
    return out


def read_raw(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"params: {path} not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path} is not valid YAML: {exc}".splitlines()[0]) from None
    return raw if raw is not None else {}


def load(*sections: str, path: Path = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Read ``params.yaml`` and return the validated ``sections``."""
    return validate(read_raw(path), sections)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 10}}`` -> ``{"train.epochs": 10}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
