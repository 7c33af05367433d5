"""Answer accuracy and locality kept on crafted outputs; the balanced-accuracy threshold tuner."""

from __future__ import annotations

import pytest

from recipe_chain.evaluation.answers import (
    answer_correct,
    contains_answer,
    first_sentence,
    locality_kept,
    normalize_answer,
)
from recipe_chain.evaluation.thresholds import tune_balanced_threshold


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("English, but not English", True),  # one sentence that names the target: a reader gets English
        (" English. She also spoke French.", True),  # the old answer only after the first sentence
        ("French. English", False),  # the first sentence is the old answer
        ("", False),
        ("   \n English", True),  # leading whitespace, newline included, is not a sentence end
        ("ENGLISH!", True),
        ("english and french", False),  # names the old answer too
        ("Englishman", False),  # whole words only
        ("\nEnglish", True),
    ],
)
def test_answer_correct_on_crafted_outputs(output, expected):
    assert answer_correct(output, "English", old_target="French") is expected


def test_answer_correct_unicode_case_and_multiword_targets():
    assert answer_correct(" zoë's café is in Paris", "Zoe's Cafe")
    assert answer_correct("ＴＯＫＹＯ.", "Tokyo")  # full-width forms fold to ASCII
    assert answer_correct("It is São Paulo.", "sao paulo")
    assert answer_correct("Wile E. Coyote runs it.", "Wile E. Coyote", old_target="Elon Musk")
    assert not answer_correct("Wile E. Coyote and Elon Musk.", "Wile E. Coyote", old_target="Elon Musk")
    # a new target that contains the old one is not failed for it
    assert answer_correct("New York City.", "New York City", old_target="New York")
    assert not answer_correct("New York, not New York City", "Boston", old_target="New York")
    with pytest.raises(ValueError, match="no letters or digits"):
        answer_correct("x", "!!")


def test_first_sentence_rules():
    assert first_sentence(" Rome. It was founded") == "Rome"
    assert first_sentence("It costs 3.5 dollars. Cheap") == "It costs 3.5 dollars"
    assert first_sentence("line one\nline two") == "line one"
    assert first_sentence("Really? Yes.") == "Really"
    assert first_sentence("") == ""
    assert normalize_answer("  Zoë's CAFÉ, Ｔｏｋｙｏ! ") == "zoe s cafe tokyo"


def test_locality_kept():
    assert locality_kept(" Paris, the capital.", "paris, the capital! And more")
    assert locality_kept("Paris. Then Rome", "Paris. Then London")  # only the first sentence counts
    assert not locality_kept("Rome.", "Paris.")
    assert locality_kept("", "")
    assert not locality_kept("", "Paris")


def test_contains_answer_accepts_any_alias():
    assert contains_answer("Wilhelm Röntgen won it.", ["Wilhelm Conrad Röntgen", "Röntgen"])
    assert not contains_answer("Marie Curie. Röntgen", ["Röntgen"])
    assert not contains_answer("anything", [])


def test_balanced_threshold_optimum_on_crafted_scores():
    # positives 0.7..0.9, negatives 0.2 and 0.75: the best cut is between 0.75 and 0.8 (TPR 2/3, TNR 1)
    tuned = tune_balanced_threshold([0.9, 0.8, 0.7], [0.2, 0.75])
    assert tuned.value == pytest.approx(0.775)
    assert tuned.balanced_accuracy == pytest.approx((2 / 3 + 1) / 2)
    assert (tuned.tpr, tuned.tnr) == (pytest.approx(2 / 3), 1.0)
    # brute force over a fine grid agrees that nothing beats it
    grid = [i / 1000 for i in range(0, 1001)]

    def bal(t):
        return (sum(s >= t for s in [0.9, 0.8, 0.7]) / 3 + sum(s < t for s in [0.2, 0.75]) / 2) / 2

    assert max(bal(t) for t in grid) == pytest.approx(tuned.balanced_accuracy)
    assert [p.threshold for p in tuned.curve] == sorted(p.threshold for p in tuned.curve)
    assert tuned.curve[0].tpr == 1.0 and tuned.curve[-1].tpr == 0.0  # always / never fire
    # separable classes: the threshold lies in the gap, at its middle candidate
    sep = tune_balanced_threshold([0.8, 0.9], [0.1, 0.3])
    assert 0.3 < sep.value < 0.8 and sep.balanced_accuracy == 1.0


def test_balanced_threshold_errors():
    with pytest.raises(ValueError, match="no negatives"):
        tune_balanced_threshold([0.5, 0.6], [])
    with pytest.raises(ValueError, match="no positives"):
        tune_balanced_threshold([], [0.5])
    with pytest.raises(ValueError, match="finite"):
        tune_balanced_threshold([float("nan")], [0.5])
