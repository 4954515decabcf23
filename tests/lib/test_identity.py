"""A result's identity: the served model (weights, config, code, requirements), the data, the params that count."""

from stages.lib import identity


def files(tmp_path, model=b"weights", config=b"{}"):
    (tmp_path / "model.keras").write_bytes(model)
    (tmp_path / "serving.json").write_bytes(config)
    return {"keras_model": tmp_path / "model.keras", "serving_config": tmp_path / "serving.json"}


def test_the_model_key_covers_weights_config_code_and_requirements(tmp_path):
    code = tmp_path / "mlflow_model.py"
    code.write_text("v1")
    key = identity.model_key(files(tmp_path), [code], ["keras==3"])
    assert key == identity.model_key(files(tmp_path), [code], ["keras==3"])
    assert key != identity.model_key(files(tmp_path, model=b"other"), [code], ["keras==3"])
    assert key != identity.model_key(files(tmp_path, config=b'{"output": "linear"}'), [code], ["keras==3"])
    assert key != identity.model_key(files(tmp_path), [code], ["keras==4"])
    code.write_text("v2")  # a fix to the served model's code
    assert key != identity.model_key(files(tmp_path), [code], ["keras==3"])


def test_the_result_key_covers_model_data_and_effective_params():
    key = identity.result_key("m", "d", {"train.epochs": 10})
    assert key == identity.result_key("m", "d", {"train.epochs": 10})
    assert len({key, identity.result_key("m2", "d", {"train.epochs": 10})}) == 2
    assert key != identity.result_key("m", "d2", {"train.epochs": 10})
    assert key != identity.result_key("m", "d", {"train.epochs": 11})


def test_the_served_code_is_the_serving_package():
    assert identity.SERVING_CODE.exists() and identity.CLASSIFIER_CODE.exists()
    assert {p.parent.name for p in (identity.SERVING_CODE, identity.CLASSIFIER_CODE)} == {"serving"}


def test_requirements_are_pinned():
    pins = identity.pip_requirements()
    assert pins and all("==" in p for p in pins)
    assert any(p.startswith("keras==") for p in pins)
