"""`make serve`'s sizing and command (stages.tools.serve); the real server answers in tests/system/test_your_data.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stages.tools import serve


@pytest.mark.parametrize(
    ("workers", "usable", "expected"),
    [
        ("auto", 2, (2, 1)),  # a worker per core, one onnxruntime thread each
        ("auto", 1, (1, 1)),
        ("auto", 8, (8, 1)),
        ("auto", 32, (8, 4)),  # at most 8 by default: each worker holds its own model and runtime
        ("1", 2, (1, 2)),  # one worker gets every core
        ("2", 8, (2, 4)),
        ("4", 2, (4, 1)),  # more workers than cores: never fewer than one thread
    ],
)
def test_workers_and_threads_share_the_usable_cores(workers, usable, expected):
    assert serve.plan(workers, usable) == expected


@pytest.mark.parametrize("workers", ["0", "-1", "two", "1.5", ""])
def test_a_bad_worker_count_is_refused_in_one_line(workers, capsys, monkeypatch):
    monkeypatch.setattr(serve.os, "execvpe", lambda *a: pytest.fail("started a server"))
    assert serve.main(["--workers", workers]) == 2
    err = capsys.readouterr().err
    assert err == f"serve: error: WORKERS={workers}: expected auto or a whole number of at least 1\n"


def test_the_command_serves_on_loopback_with_the_workers_given():
    run = serve.command("models:/mnist-classifier@champion", 5001, 2)
    assert run[1:] == [
        "models", "serve", "-m", "models:/mnist-classifier@champion", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", "5001", "-w", "2",
    ]  # fmt: skip


def test_the_environment_keeps_what_the_user_set_and_fills_the_rest():
    env = serve.environment("onnx", 1, {"MODEL_RUNTIME": "keras", "PATH": "/bin"})
    assert env["MODEL_RUNTIME"] == "onnx"  # --runtime (make serve RUNTIME=...) decides
    # mlflow models serve starts `uvicorn` through the shell: this environment's comes first.
    assert env["MODEL_THREADS"] == "1" and env["PATH"] == f"{Path(sys.executable).parent}:/bin"
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{serve.PROJECT / 'mlflow.db'}"
    mine = serve.environment("auto", 1, {"MODEL_THREADS": "3", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert mine["MODEL_THREADS"] == "3" and mine["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    empty = serve.environment("auto", 2, {"MODEL_THREADS": "", "MLFLOW_TRACKING_URI": ""})  # as make's ${X:-...}
    assert empty["MODEL_THREADS"] == "2" and empty["MLFLOW_TRACKING_URI"].startswith("sqlite:///")


def test_the_servers_mlflow_output_is_quiet_unless_asked(monkeypatch):
    """No INFO lines from MLflow, and (off a terminal, as under CI or in a log) no progress bar for the download."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    env = serve.environment("auto", 1, {"PATH": "/bin"})
    assert env["MLFLOW_LOGGING_LEVEL"] == "WARNING" and env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    mine = serve.environment("auto", 1, {"PATH": "/bin", "MLFLOW_LOGGING_LEVEL": "INFO"})
    assert mine["MLFLOW_LOGGING_LEVEL"] == "INFO"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in serve.environment("auto", 1, {"PATH": "/bin"})


LOADABLE = serve.loadable


@pytest.fixture(autouse=True)
def loads(monkeypatch):
    """The model loads here (``serve.loadable``, which needs a store and a model: the real server's tests have
    both), described with a version."""
    monkeypatch.setattr(serve, "loadable", lambda model, env: (model, f"{model}: version 3 (cnn, val_accuracy 0.9900)"))


def test_main_says_what_it_serves_and_hands_over_to_mlflow(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(serve.cores, "usable", lambda: 2)
    monkeypatch.delenv("MODEL_THREADS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a server: nothing to find on disk
    monkeypatch.setattr(serve.os, "execvpe", lambda file, args, env: calls.append((file, args, env)))
    assert serve.main(["--port", "5077", "--model", "models:/shapes-classifier@champion"]) == 0
    out = capsys.readouterr().out
    assert out == (
        "serve: models:/shapes-classifier@champion: version 3 (cnn, val_accuracy 0.9900) on "
        "http://127.0.0.1:5077/invocations (2 workers, 1 onnxruntime thread each)\n"
    )
    [(file, args, env)] = calls
    assert file == args[0] and args[-6:] == ["-h", "127.0.0.1", "-p", "5077", "-w", "2"]
    assert env["MODEL_THREADS"] == "1" and env["MODEL_RUNTIME"] == "auto"


def test_the_default_model_is_the_champion_of_params_yaml(capsys, monkeypatch, tmp_path):
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    raw["fetch"]["name"] = "pets"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(serve, "PROJECT", tmp_path)  # the project's params.yaml, wherever serve is started
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setattr(serve.os, "execvpe", lambda file, args, env: None)
    assert serve.main(["--workers", "1"]) == 0
    assert "models:/pets-classifier@champion" in capsys.readouterr().out


def test_a_missing_sqlite_store_is_one_line_before_mlflow_starts(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(serve.os, "execvpe", lambda *a: pytest.fail("started a server"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert serve.main(["--model", "models:/mnist-classifier@champion"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"serve: error: no MLflow store at sqlite:///{tmp_path / 'mlflow.db'}: run `make repro` first, "
        "or set MLFLOW_TRACKING_URI\n"
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_through_keras_the_line_says_so_and_a_store_with_options_is_found(capsys, monkeypatch, tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}?mode=ro")
    monkeypatch.setattr(serve.os, "execvpe", lambda file, args, env: None)
    assert serve.main(["--model", "models:/mnist-classifier@champion", "--runtime", "keras", "--workers", "1"]) == 0
    assert capsys.readouterr().out.endswith("(1 worker, through Keras)\n")


def test_a_model_that_cannot_load_here_is_one_line_before_any_worker(capsys, monkeypatch, tmp_path):
    """In the inference-only environment, a Keras-only version (or the Keras runtime forced) cannot answer:
    uvicorn would restart each worker as it fails, for ever. The store's password never shows."""
    from unittest import mock

    import mlflow.artifacts
    import mlflow.pyfunc

    from stages.serving.classifier import ModelUnavailable

    def unavailable(path, **kwargs):
        assert path == str(tmp_path)  # what was downloaded
        raise ModelUnavailable(f"the model from {os.environ['MLFLOW_TRACKING_URI']}: Keras is not installed here")

    monkeypatch.setattr(serve, "loadable", LOADABLE)  # the real one, on a model that cannot load here
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kwargs: str(tmp_path))  # no store here
    monkeypatch.setattr(mlflow.pyfunc, "load_model", unavailable)
    monkeypatch.setattr(serve.tracking, "refuse_pickled", lambda uri, local: None)
    monkeypatch.setattr(serve.os, "execvpe", lambda *a: pytest.fail("started a server"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:5000")
    with mock.patch.dict(os.environ):  # loadable makes this process's environment the server's: restored after
        assert serve.main(["--model", "models:/mnist-classifier/3", "--runtime", "keras"]) == 1
        assert os.environ["ORT_DISABLE_TELEMETRY"] == "1" and os.environ["MODEL_RUNTIME"] == "keras"
    captured = capsys.readouterr()
    assert captured.out == "" and "s3cret" not in captured.err
    assert captured.err.startswith("serve: error: cannot load models:/mnist-classifier/3: the model from ")
    assert captured.err.endswith(": Keras is not installed here\n")


def test_the_servers_environment_turns_onnxruntimes_usage_events_off_unless_set():
    """Every version's workers, also those whose logged code predates the project's own setting."""
    assert serve.environment("auto", 1, {"PATH": "/bin"})["ORT_DISABLE_TELEMETRY"] == "1"
    assert serve.environment("auto", 1, {"PATH": "/bin", "ORT_DISABLE_TELEMETRY": "0"})["ORT_DISABLE_TELEMETRY"] == "0"


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_broken_params_yaml_is_one_line_not_mnists_champion(command, tmp_path, monkeypatch, capsys):
    # The default model is the champion of the data set the project's params.yaml names (wherever the command
    # is started): a file that cannot say which is an error, never a silent fallback to MNIST's champion.
    from stages.tools import demo

    (tmp_path / "params.yaml").write_text("fetch: [unclosed\n")
    monkeypatch.setattr(serve, "PROJECT", tmp_path)
    monkeypatch.setattr(demo, "PROJECT", tmp_path)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # a valid params.yaml here must not be read instead
    assert (serve.main([]) if command == "serve" else demo.main([])) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{command}: error: params: {tmp_path / 'params.yaml'} is not valid YAML"), line
