"""The champion rule: highest val_accuracy wins, a tie keeps the champion, older versions are not reconsidered."""

from stages.lib.registry import decide


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
