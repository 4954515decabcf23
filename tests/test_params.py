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
        ("model", "kind", "resnet", "model.kind must be one of dense, cnn, got 'resnet'"),
        ("model.cnn", "filters", [32, 0], "model.cnn.filters must be a list of 1\\+ items, each an integer >= 1"),
        ("model.cnn", "kernel_size", 0, "model.cnn.kernel_size must be an integer >= 1"),
        ("model.cnn", "batch_norm", "yes", "model.cnn.batch_norm must be true or false, got 'yes'"),
        ("model.cnn", "pooling", "min", "model.cnn.pooling must be one of max, average"),
        ("model.cnn", "pool_first", "no", "model.cnn.pool_first must be true or false, got 'no'"),
        ("train", "optimizer", "sgd", "train.optimizer must be one of adam, adamw"),
        ("train", "weight_decay", -1e-4, r"train.weight_decay must be a number in \[0, inf\)"),
        ("train", "schedule", "step", "train.schedule must be one of constant, cosine, onecycle"),
        ("train", "warmup", 1.0, r"train.warmup must be a number in \[0, 1\)"),
        ("train", "label_smoothing", 1.0, r"train.label_smoothing must be a number in \[0, 1\)"),
        ("train", "augment", 1, "train.augment must be true or false, got 1"),
        ("train", "shift", 14, r"train.shift must be a number in \[0, 14\)"),
        ("train", "rotation", 181, r"train.rotation must be a number in \[0, 180\]"),
        ("train", "zoom", -0.1, r"train.zoom must be a number in \[0, 1\)"),
    ],
)
def test_bad_values_name_key_and_allowed(raw, section, key, value, message):
    bad = copy.deepcopy(raw)
    target = bad
    for part in section.split("."):
        target = target[part]
    target[key] = value
    section = section.split(".")[0]
    with pytest.raises(params.ParamsError, match=message) as err:
        params.validate(bad, [section])
    assert "\n" not in str(err.value)


def test_nested_section_missing_or_unknown_key(raw):
    bad = copy.deepcopy(raw)
    del bad["model"]["cnn"]
    with pytest.raises(params.ParamsError, match="section 'model.cnn' is missing \\(keys: filters, kernel_size"):
        params.validate(bad, ["model"])
    raw["model"]["cnn"]["strides"] = 2
    with pytest.raises(params.ParamsError, match="unknown key model.cnn.strides \\(allowed: filters"):
        params.validate(raw, ["model"])


def test_missing_key(raw):
    del raw["train"]["epochs"]
    with pytest.raises(params.ParamsError, match="train.epochs is missing \\(must be an integer >= 1\\)"):
        params.validate(raw, ["train"])


def test_unknown_key_is_a_typo_not_ignored(raw):
    raw["train"]["epoch"] = 20
    with pytest.raises(
        params.ParamsError, match="unknown key train.epoch \\(allowed: labels, optimizer, learning_rate, weight_decay"
    ):
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


@pytest.mark.parametrize("recipe", ["cnn", "cnn-fast", "dense-best"])
def test_makefile_recipes_are_valid_params(raw, recipe):
    """Each recipe target is one `dvc exp run` whose -S flags give valid params."""
    import shlex
    import subprocess

    out = subprocess.run(
        ["make", "-s", "-n", recipe, "SEED=3", "STAMP=Makefile"], capture_output=True, text=True, check=True
    ).stdout
    (command,) = [line for line in out.splitlines() if line.startswith("dvc exp run")]
    args = shlex.split(command)
    assert args[:5] == ["dvc", "exp", "run", "-n", f"{recipe}-seed3"]
    flags = args[5:]
    assert flags[::2] == ["-S"] * (len(flags) // 2)
    for setting in flags[1::2]:
        key, value = setting.split("=", 1)
        *path, last = key.split(".")
        target = raw
        for part in path:
            target = target[part]
        assert last in target, f"{recipe}: {key} is not a param"
        target[last] = yaml.safe_load(value)  # as DVC parses -S values
    cleaned = params.validate(raw, list(params.SCHEMA))
    assert cleaned["train"]["seed"] == 3 and cleaned["train"]["augment"] is True
