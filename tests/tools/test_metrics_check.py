import json
import subprocess

import pytest

from stages.tools import metrics_check as mc

COMMITTED = {"test_accuracy": 0.9787, "test_loss": 0.0794, "val_accuracy": 0.9778, "val_loss": 0.0876}


def statuses(rows):
    return {r.metric: r.status for r in rows}


def test_identical_and_within_tolerance_pass():
    assert set(statuses(mc.compare(COMMITTED, COMMITTED)).values()) == {"ok"}
    near = {**COMMITTED, "test_accuracy": 0.9787 + 0.0019, "test_loss": 0.0794 * 1.04}
    assert set(statuses(mc.compare(COMMITTED, near)).values()) == {"ok"}


def test_accuracy_outside_tolerance_drifts():
    rows = mc.compare(COMMITTED, {**COMMITTED, "test_accuracy": 0.9787 - 0.01})
    assert statuses(rows)["test_accuracy"] == "DRIFT"
    assert statuses(rows)["val_accuracy"] == "ok"


def test_tolerance_is_configurable():
    current = {**COMMITTED, "val_accuracy": 0.9778 + 0.004}
    assert statuses(mc.compare(COMMITTED, current))["val_accuracy"] == "DRIFT"
    assert statuses(mc.compare(COMMITTED, current, tolerance=0.005))["val_accuracy"] == "ok"


def test_loss_uses_relative_tolerance():
    assert statuses(mc.compare(COMMITTED, {**COMMITTED, "test_loss": 0.0794 * 1.11}))["test_loss"] == "DRIFT"
    assert statuses(mc.compare(COMMITTED, {**COMMITTED, "test_loss": 0.0794 * 1.09}))["test_loss"] == "ok"


def test_missing_metric_fails_and_extra_metric_is_new():
    current = {k: v for k, v in COMMITTED.items() if k != "val_loss"} | {"test_f1": 0.97}
    rows = statuses(mc.compare(COMMITTED, current))
    assert rows["val_loss"] == "MISSING" and rows["test_f1"] == "new"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"test_accuracy": "high"}', "test_accuracy is not a finite number"),
        ('{"test_accuracy": NaN}', "test_accuracy is not a finite number"),
    ],
)
def test_malformed_json(text, message):
    with pytest.raises(mc.MetricsError, match=message):
        mc.parse(text, "m.json")


def test_nested_metrics_are_flattened():
    assert mc.parse('{"test": {"accuracy": 0.5}}', "m.json") == {"test.accuracy": 0.5}


def test_table_reads_like_dvc_metrics_diff():
    text = mc.table(mc.compare(COMMITTED, {**COMMITTED, "test_accuracy": 0.9687}))
    header, *lines = text.splitlines()
    assert header.split() == ["Path", "Metric", "HEAD", "workspace", "Change", "Allowed", "Status"]
    assert any("test_accuracy" in line and "-0.010000" in line and "DRIFT" in line for line in lines)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")  # committed under the identity tests/conftest.py sets
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text(json.dumps(COMMITTED))
    run("add", ".")
    run("commit", "-qm", "metrics")
    return tmp_path


def test_main_passes_when_reproduced(repo, capsys):
    assert mc.main([]) == 0
    assert "reproduced within tolerance" in capsys.readouterr().out


def test_main_names_the_drifting_metric(repo, capsys):
    (repo / "reports/metrics.json").write_text(json.dumps({**COMMITTED, "test_accuracy": 0.9687}))
    assert mc.main([]) == 1
    err = capsys.readouterr().err
    assert "test_accuracy drifted: 0.9787 at HEAD, 0.9687 now" in err
    assert "val_accuracy" not in err


def test_main_reports_a_missing_committed_metric(repo, capsys):
    (repo / "reports/metrics.json").write_text(json.dumps({"test_accuracy": 0.9787}))
    assert mc.main([]) == 1
    assert "val_loss is committed at HEAD but missing" in capsys.readouterr().err


def test_main_malformed_current_file(repo, capsys):
    (repo / "reports/metrics.json").write_text("{oops")
    assert mc.main([]) == 2
    assert "reports/metrics.json: not valid JSON" in capsys.readouterr().err


def test_verdict_exact(repo, capsys):
    assert mc.main(["--verdict"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == "make repro: reproduced exactly: every metric equals the one committed at HEAD."
    )


def test_verdict_within_tolerance_explains_and_lists(repo, capsys):
    (repo / "reports/metrics.json").write_text(json.dumps({**COMMITTED, "test_accuracy": 0.9776}))
    assert mc.main(["--verdict"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("make repro: reproduced within tolerance on this machine (test_accuracy 0.9787 -> 0.9776)")
    assert "rounds differently" in out and len(out.splitlines()) == 1
    assert "Leave dvc.lock and reports/ modified" in out and "docs/reproducibility.md" in out


def test_verdict_drift_warns_but_exits_zero(repo, capsys):
    (repo / "reports/metrics.json").write_text(json.dumps({**COMMITTED, "test_accuracy": 0.95}))
    assert mc.main(["--verdict"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "make repro: WARNING: drifted beyond tolerance from HEAD: test_accuracy (drift, allowed ±0.002)"
    )


def test_cpu_model_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\n")
    assert mc.cpu_model(info) == "AMD EPYC 9R14" and mc.cpu_model(tmp_path / "none") == "this CPU"


def test_a_revision_without_the_metrics_is_one_line_in_gits_words(repo, capsys):
    assert mc.main(["--rev", "nosuchrev"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line
        == "metrics: error: nosuchrev:reports/metrics.json: not committed (fatal: invalid object name 'nosuchrev'.)"
    )
