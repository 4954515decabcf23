import copy

import pytest
import yaml

from stages.params import evaluate, fetch, model, preprocess, schema, train

SECTIONS = {s.NAME: s for s in (fetch, preprocess, model, train, evaluate)}


@pytest.fixture
def raw():
    with open("params.yaml") as f:
        return yaml.safe_load(f)


def test_committed_params_are_valid(raw):
    cleaned = schema.validate(raw, SECTIONS.values())
    assert cleaned["model"]["hidden_units"] == [128]
    assert cleaned["train"]["epochs"] == 10 and cleaned["train"]["batch_size"] == 32
    assert cleaned["preprocess"]["val_fraction"] == 0.1
    assert set(raw) == set(SECTIONS), "every section of params.yaml has a schema and vice versa"


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "epochs", 0, "train.epochs must be an integer >= 1, got 0"),
        ("train", "epochs", 2.5, "train.epochs must be an integer >= 1"),
        ("train", "epochs", True, "train.epochs must be an integer >= 1"),
        ("train", "batch_size", 0, "train.batch_size must be an integer >= 1"),
        ("train", "learning_rate", 0, r"train.learning_rate must be a number in \(0, inf\)"),
        ("train", "learning_rate", float("nan"), r"train.learning_rate must be a number in \(0, inf\), got nan"),
        ("train", "weight_decay", float("inf"), r"train.weight_decay must be a number in \[0, inf\), got inf"),
        ("fetch", "timeout_s", float("inf"), r"fetch.timeout_s must be a number in \(0, inf\), got inf"),
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
        ("model.cnn", "pooling", "min", "model.cnn.pooling must be one of max, average, stride, or a list of them"),
        ("model.cnn", "pooling", ["max", "min"], "model.cnn.pooling must be one of max, average, stride, or a list"),
        ("model.cnn", "pool_first", "no", "model.cnn.pool_first must be true or false, got 'no'"),
        ("model.cnn", "convs", 0, "model.cnn.convs must be an integer >= 1, or a list of them, got 0"),
        ("train", "optimizer", "sgd", "train.optimizer must be one of adam, adamw"),
        ("train", "weight_decay", -1e-4, r"train.weight_decay must be a number in \[0, inf\)"),
        ("train", "schedule", "step", "train.schedule must be one of constant, cosine, onecycle"),
        ("train", "warmup", 1.0, r"train.warmup must be a number in \[0, 1\)"),
        ("train", "label_smoothing", 1.0, r"train.label_smoothing must be a number in \[0, 1\)"),
        ("train", "augment", 1, "train.augment must be true or false, got 1"),
        ("train", "shift", 14, r"train.shift must be a number in \[0, 14\)"),
        ("train", "rotation", 181, r"train.rotation must be a number in \[0, 180\]"),
        ("train", "zoom", -0.1, r"train.zoom must be a number in \[0, 1\)"),
        ("train", "threads", 0, "train.threads must be one of auto, or an integer >= 1, got 0"),
        ("train", "threads", "all", "train.threads must be one of auto, or an integer >= 1, got 'all'"),
    ],
)
def test_bad_values_name_key_and_allowed(raw, section, key, value, message):
    bad = copy.deepcopy(raw)
    target = bad
    for part in section.split("."):
        target = target[part]
    target[key] = value
    section = section.split(".")[0]
    with pytest.raises(schema.ParamsError, match=message) as err:
        schema.validate(bad, [SECTIONS[section]])
    assert "\n" not in str(err.value)


def test_nested_section_missing_or_unknown_key(raw):
    bad = copy.deepcopy(raw)
    del bad["model"]["cnn"]
    with pytest.raises(schema.ParamsError, match="section 'model.cnn' is missing \\(keys: filters, kernel_size"):
        schema.validate(bad, [SECTIONS["model"]])
    raw["model"]["cnn"]["strides"] = 2
    with pytest.raises(schema.ParamsError, match="unknown key model.cnn.strides \\(allowed: filters"):
        schema.validate(raw, [SECTIONS["model"]])


def test_missing_key(raw):
    del raw["train"]["epochs"]
    with pytest.raises(schema.ParamsError, match="train.epochs is missing \\(must be an integer >= 1\\)"):
        schema.validate(raw, [SECTIONS["train"]])


def test_unknown_key_is_a_typo_not_ignored(raw):
    raw["train"]["epoch"] = 20
    with pytest.raises(
        schema.ParamsError, match="unknown key train.epoch \\(allowed: labels, optimizer, learning_rate, weight_decay"
    ):
        schema.validate(raw, [SECTIONS["train"]])


def test_missing_section(raw):
    del raw["model"]
    with pytest.raises(schema.ParamsError, match="section 'model' is missing"):
        schema.validate(raw, [SECTIONS["model"]])


def test_only_requested_sections_are_checked(raw):
    raw["train"]["epochs"] = 0
    assert schema.validate(raw, [SECTIONS["fetch"]])["fetch"]["sources"] == ["keras", "kaggle", "npm"]


def test_load_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(schema.ParamsError, match="not valid YAML"):
        schema.load(train, path=path)


def test_a_params_file_that_is_not_utf8_text_or_not_a_file_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes("train:\n  epochs: 10  # café\n".encode("latin-1"))  # saved by an editor in Latin-1
    with pytest.raises(
        schema.ParamsError, match=r"params.yaml is not UTF-8 text: invalid continuation byte at byte 26 "
    ):
        schema.load(train, path=path)
    path.write_text("train:\n  epochs: 10\f\n")  # a form feed, pasted from somewhere
    with pytest.raises(schema.ParamsError, match=r"params.yaml holds a character YAML does not allow \(#x0c\) at"):
        schema.load(train, path=path)
    path.unlink()
    path.mkdir()
    with pytest.raises(schema.ParamsError, match=r"params.yaml cannot be read: Is a directory$"):
        schema.load(train, path=path)
    path.rmdir()
    path.write_text("train:\n  epochs: 10  # café\n", encoding="utf-8")  # a UTF-8 comment is fine
    assert schema.read_raw(path) == {"train": {"epochs": 10}}


def test_flatten():
    assert schema.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


@pytest.mark.parametrize(
    "section, edit, message",
    [
        (
            "preprocess",
            {"val_fraction": 0.0001},
            r"preprocess.val_fraction 0.0001 splits 60000 images into 59994 train / 6 validation",
        ),
        ("preprocess", {"val_fraction": 0.99999}, r"a stratified split needs at least 10 on each side"),
        ("fetch", {"kaggle_url": "http://www.kaggle.com/api/v1"}, r"fetch.kaggle_url must be an https:// URL"),
        ("fetch", {"kaggle_url": "kaggle.com"}, r"fetch.kaggle_url must be an https:// URL"),
        ("fetch", {"keras_url": "ftp://x/mnist.npz"}, r"fetch.keras_url must be an http\(s\) URL"),
        (
            "model",
            {"kind": "cnn", "cnn": {"filters": [4, 8], "pooling": ["max"]}},
            r"model.cnn.pooling lists 1 entries for 2 blocks.*one of max, average, stride for every block",
        ),
        (
            "model",
            {"kind": "cnn", "cnn": {"filters": [4, 8], "convs": [2, 2, 1]}},
            r"model.cnn.convs lists 3 entries for 2 blocks.*an integer >= 1 for every block, or one per block",
        ),
    ],
)
def test_cross_field_checks_name_the_key_and_why(raw, section, edit, message):
    bad = copy.deepcopy(raw)
    for key, value in edit.items():
        bad[section][key] = {**bad[section][key], **value} if isinstance(value, dict) else value
    with pytest.raises(schema.ParamsError, match=message) as err:
        schema.validate(bad, [SECTIONS[section]])
    assert "\n" not in str(err.value)


def test_plain_http_is_allowed_for_a_server_on_this_machine(raw):
    raw["fetch"]["kaggle_url"] = "http://127.0.0.1:8080/api/v1"
    assert schema.validate(raw, [fetch])["fetch"]["kaggle_url"] == "http://127.0.0.1:8080/api/v1"
    raw["model"]["cnn"]["filters"] = [4] * 4
    raw["model"]["kind"] = "cnn"
    assert schema.validate(raw, [model])["model"]["cnn"]["filters"] == [4] * 4  # 28 -> 14 -> 7 -> 3 -> 1


def test_only_the_params_that_take_effect_count(raw):
    cleaned = schema.validate(raw, SECTIONS.values())
    assert fetch.effective(cleaned["fetch"]) == {} and evaluate.effective(cleaned["evaluate"]) == {}
    assert "cnn" not in model.effective(cleaned["model"])  # dense
    used = train.effective(cleaned["train"])  # adam, constant, no augmentation
    assert not {"weight_decay", "warmup", "shift", "rotation", "zoom"} & set(used) and "seed" in used
    cleaned["train"].update(optimizer="adamw", schedule="onecycle", augment=True)
    assert {"weight_decay", "warmup", "shift", "rotation", "zoom"} <= set(train.effective(cleaned["train"]))
    cleaned["model"]["kind"] = "cnn"
    assert model.effective(cleaned["model"])["cnn"] == cleaned["model"]["cnn"]


@pytest.mark.parametrize("recipe", ["cnn", "cnn-fast", "cnn-best", "dense-best"])
def test_makefile_recipes_are_valid_params(raw, recipe):
    """Each recipe target is one `dvc exp run` whose -S flags give valid params."""
    from tests.recipes import exp_run_command

    args = exp_run_command(recipe, seed=3)
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
    cleaned = schema.validate(raw, SECTIONS.values())
    assert cleaned["train"]["seed"] == 3 and cleaned["train"]["augment"] is True


def test_reading_a_recipe_installs_nothing_even_when_the_lock_is_newer(tmp_path, monkeypatch):
    """make brings a makefile up to date even under -n: reading a recipe must not reach the install rule."""
    import os
    import shutil

    from tests.recipes import ROOT, exp_run_command

    monkeypatch.setenv("PYTHON", "false")  # an install that starts fails at once (the Makefile's `PYTHON ?=`)

    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    makefile_mtime = (tmp_path / "Makefile").stat().st_mtime_ns
    for name in ("requirements.lock", "pyproject.toml"):  # as a fresh clone's checkout order can leave them
        os.utime(tmp_path / name, ns=(makefile_mtime + 10**9, makefile_mtime + 10**9))
    assert exp_run_command("cnn-fast", seed=2, root=tmp_path)[:5] == ["dvc", "exp", "run", "-n", "cnn-fast-seed2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "pyproject.toml", "requirements.lock"]
    assert (tmp_path / "Makefile").stat().st_mtime_ns == makefile_mtime


def test_conv_blocks_are_checked_against_the_image_size():
    cnn = {"kind": "cnn", "cnn": {"filters": [4] * 5}}
    with pytest.raises(schema.ParamsError, match=r"model.cnn.filters has 5 blocks, but 28x28 images .*only 4 times"):
        model.check_image(cnn)
    model.check_image(cnn, 32, 40)  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
    with pytest.raises(schema.ParamsError, match=r"but 16x64 images can be halved only 4 times"):
        model.check_image(cnn, 16, 64)
    model.check_image({"kind": "dense", "cnn": {"filters": [4] * 9}}, 8, 8)  # a dense network builds no blocks
