import copy

import pytest
import yaml

from stages import params


@pytest.fixture
def raw():
    with open("params.yaml") as f:
        return yaml.safe_load(f)


def test_committed_params_are_valid(raw):
    cleaned = params.validate(raw, list(params.SCHEMA))
    assert cleaned["model"]["hidden_units"] == [128]
    assert cleaned["train"]["epochs"] == 10 and cleaned["train"]["batch_size"] == 32
    assert cleaned["preprocess"]["val_fraction"] == 0.1
    assert set(raw) == set(params.SCHEMA), "every section of params.yaml has a schema and vice versa"


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "epochs", 0, "train.epochs must be an integer >= 1, got 0"),
        ("train", "epochs", 2.5, "train.epochs must be an integer >= 1"),
        ("train", "epochs", True, "train.epochs must be an integer >= 1"),
        ("train", "batch_size", 0, "train.batch_size must be an integer >= 1"),
        ("train", "learning_rate", 0, r"train.learning_rate must be a number in \(0, inf\)"),
        ("train", "labels", "dense", "train.labels must be one of sparse, onehot"),
        ("model", "activation", "gelu", "model.activation must be one of relu, sigmoid, tanh, got 'gelu'"),
        ("model", "dropout", 1.0, r"model.dropout must be a number in \[0, 1\)"),
        ("model", "dropout", -0.1, r"model.dropout must be a number in \[0, 1\)"),
        ("model", "hidden_units", [], "model.hidden_units must be a list of 1\\+ items"),
        ("model", "hidden_units", [128, 0], "model.hidden_units must be a list"),
        ("model", "output", "sigmoid", "model.output must be one of softmax, linear"),
        ("preprocess", "val_fraction", 1, r"preprocess.val_fraction must be a number in \(0, 1\)"),
        ("preprocess", "normalize", "robust", "preprocess.normalize must be one of minmax, zscore"),
        (
            "fetch",
            "sources",
            ["keras", "pypi"],
            "fetch.sources must be a list of 1\\+ distinct items, each one of keras",
        ),
        ("fetch", "sources", ["npm", "npm"], "fetch.sources must be a list of 1\\+ distinct"),
    ],
)
def test_bad_values_name_key_and_allowed(raw, section, key, value, message):
    bad = copy.deepcopy(raw)
    bad[section][key] = value
    with pytest.raises(params.ParamsError, match=message) as err:
        params.validate(bad, [section])
    assert "\n" not in str(err.value)


def test_missing_key(raw):
    del raw["train"]["epochs"]
    with pytest.raises(params.ParamsError, match="train.epochs is missing \\(must be an integer >= 1\\)"):
        params.validate(raw, ["train"])


def test_unknown_key_is_a_typo_not_ignored(raw):
    raw["train"]["epoch"] = 20
    with pytest.raises(params.ParamsError, match="unknown key train.epoch \\(allowed: labels, learning_rate, epochs"):
        params.validate(raw, ["train"])


def test_missing_section(raw):
    del raw["model"]
    with pytest.raises(params.ParamsError, match="section 'model' is missing"):
        params.validate(raw, ["model"])


def test_only_requested_sections_are_checked(raw):
    raw["train"]["epochs"] = 0
    assert params.validate(raw, ["fetch"])["fetch"]["sources"] == ["keras", "kaggle", "npm"]


def test_load_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(params.ParamsError, match="not valid YAML"):
        params.load("train", path=path)


def test_flatten():
    assert params.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
