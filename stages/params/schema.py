"""Reading and checking ``params.yaml``: the machinery every section's rules share.

A section module (``stages.params.train``, ...) declares its keys as
``Spec``s, its cross-field rules and which keys take effect; a stage loads its
own sections with ``load(train, model)``. Validation happens before any
heavy import or work, so a typo costs a second, not a training run, and the
error is one line naming the key and what it must be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from stages.lib.paths import PARAMS_FILE


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


def either(*specs: Spec) -> Spec:
    """The first of ``specs`` that accepts the value (``either(choice("auto"), integer(1))``)."""

    def check(v: Any) -> Any:
        for spec in specs:
            try:
                return spec.check(v)
            except ValueError:
                continue
        raise ValueError

    return Spec(", or ".join(spec.describe for spec in specs), check)


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


def one_or_list(item: Spec) -> Spec:
    """One value for every entry, or a list of them (one per entry: the section's ``check`` matches lengths)."""
    many = list_of(item)

    def check(v: Any) -> Any:
        return many.check(v) if isinstance(v, list) else item.check(v)

    return Spec(f"{item.describe}, or a list of them", check)


# A section maps keys to a Spec, or to a nested mapping of the same kind
# (``model.cnn``): ``dvc exp run -S model.cnn.filters=[16,32]`` reaches it.
Schema = dict[str, "Spec | Schema"]


class Section(Protocol):
    """What a section module (``stages.params.train``, ...) provides."""

    NAME: str
    SCHEMA: Schema

    def check(self, cfg: dict[str, Any]) -> None:
        """Cross-field rules on the cleaned section; ``ParamsError`` naming the key and why."""

    def effective(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The keys of the cleaned section that can change the trained model (see ``stages.lib.identity``)."""


def validate(raw: Any, sections: Iterable[Section]) -> dict[str, dict[str, Any]]:
    """Check ``sections`` of a params mapping against their rules; return cleaned copies by section name."""
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must be a mapping of sections")
    cleaned: dict[str, dict[str, Any]] = {}
    for section in sections:
        cleaned[section.NAME] = _check(section.NAME, raw.get(section.NAME), section.SCHEMA)
        section.check(cleaned[section.NAME])
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
        with open(path, "rb") as f:  # bytes: YAML's reader judges the encoding, and bad text is a YAML error
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"params: {path} not found (run from the repository root)") from None
    except OSError as exc:
        raise ParamsError(f"params: {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.reader.ReaderError as exc:
        if exc.encoding == "unicode":  # text, but a control character YAML refuses (a NUL, an escape, a form feed)
            raise ParamsError(
                f"params: {path} holds a character YAML does not allow (#x{exc.character:02x}) at character "
                f"{exc.position}: remove it"
            ) from None
        raise ParamsError(  # bytes that are not text in YAML's encodings (UTF-8, UTF-16)
            f"params: {path} is not UTF-8 text: {exc.reason} at byte {exc.position} (save it as UTF-8)"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path} is not valid YAML: {exc}".splitlines()[0]) from None
    return raw if raw is not None else {}


def load(*sections: Section, path: Path = PARAMS_FILE) -> dict[str, dict[str, Any]]:
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
