"""The champion rule: highest val_accuracy wins, a tie keeps the champion, older versions are not reconsidered."""

from pathlib import Path

import pytest
import yaml

from stages.lib.registry import decide

ROOT = Path(__file__).resolve().parents[2]


def test_first_version_is_the_first_champion():
    d = decide(1, {1: 0.97}, None)
    assert d.champion == 1 and d.previous is None
    assert d.message == "version 1 (val_accuracy 0.9700) is the first champion"


def test_a_higher_score_takes_over():
    d = decide(7, {3: 0.9772, 7: 0.9788}, 3)
    assert d.champion == 7
    assert d.message == "version 7 (val_accuracy 0.9788) is the new champion, was version 3 (0.9772)"


def test_a_tie_keeps_the_champion():
    d = decide(4, {3: 0.98, 4: 0.98}, 3)
    assert d.champion == 3 and "a tie keeps the champion" in d.message


def test_on_a_tie_a_version_with_an_onnx_form_takes_over_from_one_without():
    d = decide(4, {3: 0.98, 4: 0.98}, 3, portable={4})
    assert d.champion == 4
    assert d.message == (
        "version 4 (val_accuracy 0.9800) is the new champion, was version 3 (0.9800): "
        "the same score, and it answers without TensorFlow (ONNX form)"
    )
    assert decide(4, {3: 0.98, 4: 0.98}, 3, portable={3, 4}).champion == 3  # both have one: the tie keeps it
    assert decide(4, {3: 0.98, 4: 0.97}, 3, portable={4}).champion == 3  # the score comes first
    assert decide(None, {3: 0.98, 4: 0.98}, None, portable={4}).champion == 4  # no alias: the same rule


def test_a_lower_score_does_not_take_over():
    d = decide(4, {3: 0.98, 4: 0.97}, 3)
    assert d.champion == 3 and "version 4 (val_accuracy 0.9700) is not the champion" in d.message


def test_versions_older_than_the_champion_are_not_reconsidered():
    # Version 2 scores best, but a person made version 3 champion: only newer versions can beat it.
    assert decide(4, {2: 0.99, 3: 0.97, 4: 0.96}, 3).champion == 3


def test_concurrent_registrations_settle_on_the_best():
    # Versions 5 and 6 registered at once; whichever process decides sees both.
    assert decide(5, {4: 0.97, 5: 0.975, 6: 0.98}, 4).champion == 6
    assert decide(6, {4: 0.97, 5: 0.975, 6: 0.98}, 4).champion == 6
    assert decide(5, {4: 0.97, 5: 0.98, 6: 0.98}, 4).champion == 5  # tie between newcomers: the older


def test_a_dangling_alias_counts_as_none():
    assert decide(2, {2: 0.9}, 9).champion == 2


def test_without_an_alias_every_finished_version_is_a_candidate():
    # The alias update failed after version 1 registered, or a first registration failed: version 2,
    # the worse one, must not become "the first champion".
    d = decide(2, {1: 0.99, 2: 0.90}, None)
    assert d.champion == 1
    assert d.message == "no version held the champion alias: version 1 (val_accuracy 0.9900) is the best of 2"


def test_a_deleted_champion_is_replaced_by_the_best_remaining_version():
    # Version 3 was champion (recorded as last) and was deleted: version 1 beats the newer, worse version 4.
    d = decide(4, {1: 0.9772, 2: 0.95, 4: 0.9635}, None, last=3)
    assert d.champion == 1
    assert d.message == "version 3, the champion, is gone: version 1 (val_accuracy 0.9772) is the best remaining"


def test_judging_without_a_new_version():
    assert decide(None, {1: 0.97, 2: 0.98}, 1).champion == 2  # registered, never judged: judged now
    assert decide(None, {1: 0.97, 2: 0.96}, 1).message == "version 1 (val_accuracy 0.9700) stays the champion"
    assert decide(None, {}, None).champion is None


def test_make_serve_and_the_demo_serve_the_champion_of_the_data_set_params_yaml_names(tmp_path):
    from stages.lib.registry import champion_uri
    from stages.params.schema import ParamsError

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["fetch"]["name"] = "shapes"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert champion_uri(params) == "models:/shapes-classifier@champion"
    assert champion_uri(ROOT / "params.yaml") == "models:/mnist-classifier@champion"  # this repository's
    # No silent MNIST when the file is missing or wrong: one line saying what is wrong.
    with pytest.raises(ParamsError, match=r"missing\.yaml not found"):
        champion_uri(tmp_path / "missing.yaml")
    raw["fetch"]["name"] = "Shapes Set"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"^params: fetch\.name "):
        champion_uri(params)
