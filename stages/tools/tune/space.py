"""The search space of a study, and a trial's params as overrides of ``params.yaml``.

A space of ``tune.yaml`` names params keys of the model and train sections:
``fixed`` values every trial shares, and ``search`` distributions (``log``,
``float``, ``int``, ``choice``) Optuna draws from. ``load_space`` checks it
up front against the params schema, one line naming the key: every key, every
value a distribution can take, and that one TensorFlow backend serves every
trial (the backend is fixed when a worker imports TensorFlow). A draw
(``suggest``) is a dict of dotted-key overrides, applied to ``params.yaml``
as ``dvc exp run -S`` would (``trial_config``) and written back as
``dvc exp run -S key=value`` for ``tune best`` (``exp_run_command``).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stages.params import model as model_params
from stages.params import pipeline, schema
from stages.params import preprocess as preprocess_params
from stages.params import train as train_params
from stages.tools.tune import TuneError

SPACE_FILE = Path("tune.yaml")
SECTIONS = (model_params, train_params)  # what a trial may vary: the workers train on the prepared arrays
SECTION_NAMES = tuple(section.NAME for section in SECTIONS)
ALL_SECTIONS = {s.NAME for s in pipeline.SECTIONS}
DISTRIBUTIONS = ("log", "float", "int", "choice")
OBJECTIVE = "val_accuracy"  # what every study maximizes (on the validation split; the test split is never read)
DEFAULT_PRUNER = {"n_startup_trials": 4, "n_warmup_steps": 2}
DEFAULT_SAMPLER = {"n_startup_trials": 6}


@dataclass(frozen=True)
class Space:
    """A validated search space: overrides every trial shares, and distributions to draw from."""

    name: str
    fixed: dict[str, Any]
    search: dict[str, dict[str, list]]  # key -> {kind: args}
    pruner: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    sampler: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fixed": self.fixed,
            "search": self.search,
            "pruner": self.pruner,
            "sampler": self.sampler,
        }


def schema_keys() -> dict[str, schema.Spec]:
    """Every tunable params key (``model.cnn.filters`` ...) and its spec."""

    def walk(schema: dict, prefix: str) -> Iterator[tuple[str, schema.Spec]]:
        for key, spec in schema.items():
            if isinstance(spec, dict):
                yield from walk(spec, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", spec

    return {key: spec for section in SECTIONS for key, spec in walk(section.SCHEMA, f"{section.NAME}.")}


def apply(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the params tree ``base`` with dotted-key ``overrides`` set (like ``dvc exp run -S``)."""
    tree = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return tree


def trial_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The validated model and train params of a trial: ``params.yaml`` with its overrides."""
    return schema.validate(apply(base, overrides), SECTIONS)


def load_space(name: str, base: Mapping[str, Any], path: Path = SPACE_FILE) -> Space:
    """Space ``name`` of ``path``, checked against the params schema (one-line errors naming the key)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TuneError(f"{path} not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise TuneError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    spaces = (raw or {}).get("spaces") if isinstance(raw, dict) else None
    if not isinstance(spaces, dict) or not spaces:
        raise TuneError(f"{path}: expected a mapping 'spaces' of named search spaces")
    if name not in spaces:
        raise TuneError(f"{path}: no space '{name}' (spaces: {', '.join(spaces)})")
    return validate_space(name, spaces[name], base, str(path))


def validate_space(name: str, raw: Any, base: Mapping[str, Any], where: str = "tune.yaml") -> Space:
    """Check a space's structure, every key and every value it can take, and that one backend serves it."""
    at = f"{where}: spaces.{name}"
    if not isinstance(raw, dict):
        raise TuneError(f"{at} must be a mapping with 'search' (and optionally 'fixed', 'pruner', 'sampler')")
    unknown = sorted(set(raw) - {"fixed", "search", "pruner", "sampler"})
    if unknown:
        raise TuneError(f"{at}: unknown entry '{unknown[0]}' (allowed: fixed, search, pruner, sampler)")
    fixed, search = raw.get("fixed") or {}, raw.get("search") or {}
    if not isinstance(fixed, dict) or not isinstance(search, dict):
        raise TuneError(f"{at}: 'fixed' and 'search' must be mappings of params keys")
    if not search:
        raise TuneError(f"{at}.search is empty: nothing to tune")
    keys = schema_keys()
    for key in [*fixed, *search]:
        if key not in keys:
            section = str(key).split(".")[0]
            why = "not a params key"
            if section in ALL_SECTIONS and section not in SECTION_NAMES:
                why = "not tunable (only model.* and train.* keys: the workers train on the prepared arrays)"
            raise TuneError(f"{at}: {key} is {why}")
    both = sorted(set(fixed) & set(search))
    if both:
        raise TuneError(f"{at}: {both[0]} is both fixed and searched")
    if "train.threads" in search:
        raise TuneError(f"{at}: train.threads cannot vary between trials (a worker sets TensorFlow's threads once)")
    candidates: dict[str, list] = {}
    for key, dist in search.items():
        candidates[key] = _distribution_values(f"{at}.search.{key}", key, dist, keys[key])
    for key, value in fixed.items():
        _check_value(f"{at}.fixed.{key}", key, value, keys[key])
    # Every value of every key, each with everything else at its first value: each is a valid params override.
    first = {key: values[0] for key, values in candidates.items()}
    image_size = schema.validate(base, [preprocess_params])["preprocess"]["image_size"]
    for key, values in candidates.items():
        for value in values:
            try:
                config = trial_config(base, {**fixed, **first, key: value})
                model_params.check_image(config["model"], *image_size)  # a CNN's blocks fit the images
            except schema.ParamsError as exc:
                raise TuneError(f"{at}: {key}={value!r} gives invalid params ({exc})") from None
    backends = _backends(base, fixed, candidates)
    if len(backends) > 1:
        raise TuneError(
            f"{at}: trials would need different TensorFlow backends (dense without dropout: XLA; "
            "cnn or dropout > 0: oneDNN graph); fix model.kind, and model.dropout at 0 or above 0"
        )
    pruner = _settings(f"{at}.pruner", raw.get("pruner"), DEFAULT_PRUNER)
    sampler = _settings(f"{at}.sampler", raw.get("sampler"), DEFAULT_SAMPLER)
    return Space(name, dict(fixed), {k: dict(v) for k, v in search.items()}, pruner, sampler)


def _check_value(at: str, key: str, value: Any, spec: schema.Spec) -> None:
    try:
        spec.check(value)
    except (ValueError, TypeError):
        raise TuneError(f"{at}: {key} must be {spec.describe}, got {value!r}") from None


def _distribution_values(at: str, key: str, dist: Any, spec: schema.Spec) -> list:
    """The values a distribution can take that decide validity: a choice's values, a range's ends."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise TuneError(
            f"{at} must be one of {{log: [low, high]}}, {{float: [low, high]}}, {{int: [low, high]}}, "
            "{choice: [values]}"
        )
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise TuneError(f"{at}: choice needs a non-empty list of values")
        for value in args:
            _check_value(at, key, value, spec)
        if len({json.dumps(v, sort_keys=True) for v in args}) != len(args):
            raise TuneError(f"{at}: choice lists a value twice")
        return list(args)
    if not (isinstance(args, list) and len(args) == 2):
        raise TuneError(f"{at}: {kind} needs [low, high]")
    low, high = args
    for value in args:
        if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise TuneError(f"{at}: int bounds must be integers, got {value!r}")
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value):
            raise TuneError(f"{at}: bounds must be numbers, got {value!r}")
        _check_value(at, key, int(value) if kind == "int" else float(value), spec)
    if not low < high:
        raise TuneError(f"{at}: low must be below high, got [{low}, {high}]")
    if kind == "log" and low <= 0:
        raise TuneError(f"{at}: log needs low > 0, got {low}")
    return [int(low), int(high)] if kind == "int" else [float(low), float(high)]


def _settings(at: str, raw: Any, default: dict[str, int]) -> dict[str, int]:
    if raw is None:
        return dict(default)
    if not isinstance(raw, dict):
        raise TuneError(f"{at} must be a mapping ({', '.join(default)})")
    for key, value in raw.items():
        if key not in default:
            raise TuneError(f"{at}: unknown setting '{key}' (allowed: {', '.join(default)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TuneError(f"{at}.{key} must be an integer >= 0, got {value!r}")
    return {**default, **raw}


def _backends(base: Mapping[str, Any], fixed: dict[str, Any], candidates: dict[str, list]) -> set[str]:
    """The TensorFlow set-ups (``training.backend_settings``) the space's model params can need."""
    from stages.lib.training import backend_settings  # noqa: PLC0415 - no TensorFlow; only when validating

    model_keys = [key for key in candidates if key.startswith("model.")]
    saved = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    seen = set()
    try:
        for values in itertools.product(*(candidates[key] for key in model_keys)):
            os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
            model = trial_config(base, {**fixed, **dict(zip(model_keys, values, strict=True))})["model"]
            settings = backend_settings(model)
            seen.add(json.dumps({**settings, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}, sort_keys=True))
    finally:
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
        if saved is not None:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = saved
    return seen


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values are scalars: a list choice travels as its JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode_choice(value: Any, choices: list) -> Any:
    for choice in choices:
        if encode_choice(choice) == value:
            return copy.deepcopy(choice)
    raise TuneError(f"value {value!r} is not one of the space's choices")


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """One draw from the space (Optuna's sampler decides), as params overrides: fixed values included."""
    overrides = dict(space.fixed)
    for key, dist in space.search.items():
        kind, args = next(iter(dist.items()))
        if kind == "log":
            overrides[key] = trial.suggest_float(key, args[0], args[1], log=True)
        elif kind == "float":
            overrides[key] = trial.suggest_float(key, args[0], args[1])
        elif kind == "int":
            overrides[key] = trial.suggest_int(key, args[0], args[1])
        else:
            overrides[key] = decode_choice(trial.suggest_categorical(key, [encode_choice(c) for c in args]), args)
    return overrides


def cli_value(value: Any) -> str:
    """A value as ``dvc exp run -S key=<value>`` takes it (YAML) and params.yaml reads it back the same.

    Floats are written positionally: YAML 1.1 (PyYAML, which the stages use) reads ``1e-05`` as a string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return np.format_float_positional(value, unique=True, trim="0")
    if isinstance(value, list):
        return "[" + ",".join(cli_value(v) for v in value) + "]"
    return str(value)


def exp_run_command(study_name: str, overrides: Mapping[str, Any]) -> list[str]:
    """``dvc exp run -n tune-<study> -S key=value ...`` with exactly the trial's overrides."""
    command = ["dvc", "exp", "run", "-n", f"tune-{study_name}"]
    for key, value in overrides.items():
        command += ["-S", f"{key}={cli_value(value)}"]
    return command
