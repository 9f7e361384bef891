"""meal_core.selection: the degeneracy guard and the rejection rules."""

from __future__ import annotations

import numpy as np
import pytest

from meal_core.config import AlgorithmConfig
from meal_core.selection import DegeneracyGuard, is_degenerate, repeated_ngram_share, select, unknown_word_share

PROSE = (
    "Rinse the rice in cold water until it runs clear. Use a little less water than the packet says, bring it "
    "to a boil, then cover the pot and let it simmer on low heat for twelve minutes."
)


# -- repeated n-grams --------------------------------------------------------------------------------------------


def test_repeated_ngram_share_hand_computed() -> None:
    # 3-grams: (a b c) (b c a) (c a b) (a b c): one repeat among four.
    assert repeated_ngram_share("a b c a b c") == pytest.approx(0.25)
    assert repeated_ngram_share("one two three four five") == 0.0
    # 8 identical words → 6 identical trigrams, 5 of them repeats.
    assert repeated_ngram_share(" ".join(["go"] * 8)) == pytest.approx(5 / 6)


def test_repeated_ngram_share_is_case_insensitive_and_whitespace_agnostic() -> None:
    assert repeated_ngram_share("A b C\na B c") == pytest.approx(0.25)


def test_repeated_ngram_share_short_text_and_other_n() -> None:
    assert repeated_ngram_share("") == 0.0
    assert repeated_ngram_share("two words") == 0.0
    # bigrams of "a b a b": (a b) (b a) (a b) → one repeat of three.
    assert repeated_ngram_share("a b a b", n=2) == pytest.approx(1 / 3)


def test_repeated_ngram_share_tends_to_one_for_loops() -> None:
    shares = [repeated_ngram_share("I think so. " * n) for n in (2, 5, 50)]
    assert shares[0] < shares[1] < shares[2] < 1.0
    assert shares[2] > 0.95


# -- degeneracy guard --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "Okay", "  word  "])
def test_empty_or_single_word_is_degenerate(text: str) -> None:
    assert is_degenerate(text, max_repeated_share=1.0)


def test_loops_are_degenerate() -> None:
    assert is_degenerate("the cat sat on the mat " * 6, max_repeated_share=0.3)
    assert is_degenerate("yes yes yes yes yes yes", max_repeated_share=0.3)


def test_repeated_lines_are_degenerate_even_without_ngram_limit() -> None:
    text = "Yes.\nYes.\nYes.\nNo thanks."
    assert repeated_ngram_share(text) == 0.0  # the n-gram rule alone would not catch it…
    assert is_degenerate(text, max_repeated_share=1.0)  # …the repeated-lines rule does


def test_a_list_with_one_repeated_line_is_fine() -> None:
    text = "Step one: rinse.\nStep two: boil the water.\nStep three: rinse.\nStep four: simmer gently."
    assert not is_degenerate(text, max_repeated_share=0.3)


def test_normal_prose_passes() -> None:
    assert not is_degenerate(PROSE, max_repeated_share=0.3)
    assert not is_degenerate("Two words", max_repeated_share=0.3)
    assert not is_degenerate("Line one here.\nLine two there.\nLine three everywhere.", max_repeated_share=0.3)


def test_threshold_is_strict() -> None:
    text = "a b c a b c"  # share exactly 0.25
    assert not is_degenerate(text, max_repeated_share=0.25)
    assert is_degenerate(text, max_repeated_share=0.24)


# -- selection rules -------------------------------------------------------------------------------------------

UTILITIES = np.array([5.0, 1.0, 2.0, 3.0, 4.0])
NORMALIZED = np.array([[0.0, 0.0], [1.0, -1.0], [2.0, -2.0], [-1.0, 3.0], [0.5, 0.5]])
ALL_VALID = np.ones(5, dtype=bool)


def test_best_picks_highest_utility() -> None:
    assert select(UTILITIES, NORMALIZED, ALL_VALID, "best").tolist() == [0]


def test_best_skips_invalid_even_when_it_is_best() -> None:
    valid = np.array([False, True, True, True, True])
    assert select(UTILITIES, NORMALIZED, valid, "best").tolist() == [4]


def test_best_ties_keep_the_first() -> None:
    assert select(np.array([1.0, 3.0, 3.0]), np.zeros((3, 2)), np.ones(3, bool), "best").tolist() == [1]


def test_nothing_valid_selects_nothing() -> None:
    none = np.zeros(5, dtype=bool)
    for rule in ("best", "top_q", "ric_quantile"):
        assert select(UTILITIES, NORMALIZED, none, rule).size == 0


def test_top_q_keeps_share_of_the_group_in_utility_order() -> None:
    assert select(UTILITIES, NORMALIZED, ALL_VALID, "top_q", top_q=0.4).tolist() == [0, 4]
    assert select(UTILITIES, NORMALIZED, ALL_VALID, "top_q", top_q=0.6).tolist() == [0, 4, 3]
    assert select(UTILITIES, NORMALIZED, ALL_VALID, "top_q", top_q=1.0).tolist() == [0, 4, 3, 2, 1]
    # Never fewer than one.
    assert select(UTILITIES, NORMALIZED, ALL_VALID, "top_q", top_q=0.01).tolist() == [0]


def test_top_q_never_keeps_invalid() -> None:
    valid = np.array([False, True, True, False, True])
    selected = select(UTILITIES, NORMALIZED, valid, "top_q", top_q=1.0)
    assert selected.tolist() == [4, 2, 1]
    selected = select(UTILITIES, NORMALIZED, valid, "top_q", top_q=0.4)
    assert selected.tolist() == [4, 2]


def test_ric_quantile_hand_computed() -> None:
    # Column 0 sorted: -1, 0, 0.5, 1, 2 → 0.7-quantile at position 2.8 = 0.9.
    # Column 1 sorted: -2, -1, 0, 0.5, 3 → 0.7-quantile = 0.4.
    # Above either: rows 1 (1 > 0.9), 2 (2 > 0.9), 3 (3 > 0.4), 4 (0.5 > 0.4); row 0 is above neither.
    selected = select(UTILITIES, NORMALIZED, ALL_VALID, "ric_quantile", quantile=0.7)
    assert selected.tolist() == [4, 3, 2, 1]  # utility order
    assert selected.dtype == np.int64


def test_ric_quantile_thresholds_come_from_valid_candidates_only() -> None:
    # Without row 3: column 0 over (0, 1, 2, 0.5) → 1.1; column 1 over (0, -1, -2, 0.5) → 0.05.
    # Row 1 (1 < 1.1, -1 < 0.05) now drops out; row 3 is invalid though it tops objective 1.
    valid = np.array([True, True, True, False, True])
    selected = select(UTILITIES, NORMALIZED, valid, "ric_quantile", quantile=0.7)
    assert selected.tolist() == [4, 2]


def test_ric_quantile_zero_keeps_all_but_row_minimal_everywhere() -> None:
    normalized = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    selected = select(np.array([3.0, 2.0, 1.0]), normalized, np.ones(3, bool), "ric_quantile", quantile=0.0)
    assert selected.tolist() == [1, 2]


def test_random_groups_never_select_invalid() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(2, 9))
        utilities = rng.normal(size=m)
        normalized = rng.normal(size=(m, 3))
        valid = rng.random(m) < 0.5
        for rule in ("best", "top_q", "ric_quantile"):
            selected = select(utilities, normalized, valid, rule, top_q=0.5, quantile=0.5)
            assert valid[selected].all()
            assert len(set(selected.tolist())) == len(selected)
            if valid.any() and rule != "ric_quantile":
                assert selected[0] == np.flatnonzero(valid)[np.argmax(utilities[valid])]


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown selection rule 'worst'"):
        select(UTILITIES, NORMALIZED, ALL_VALID, "worst")


def test_made_up_words_are_degenerate_plain_prose_is_not() -> None:
    made_up = "La vagabund, mena alle, per marten, kakiferakan. How can I tell when I'm on holiday?"
    assert unknown_word_share(made_up) == pytest.approx(3 / 15)  # vagabund, alle, kakiferakan
    assert is_degenerate(made_up, max_repeated_share=1.0, max_unknown_share=0.15)
    gibberish = 'La légale absérieuse, malangineé, dapak "Adeleleben" (1925), empange "banannas" in Teléalens.'
    assert unknown_word_share(gibberish) > 0.5
    assert is_degenerate(gibberish, max_repeated_share=1.0, max_unknown_share=0.15)
    assert not is_degenerate(gibberish, max_repeated_share=1.0)  # off unless asked for
    assert unknown_word_share(PROSE) == 0.0
    assert not is_degenerate(PROSE, max_repeated_share=0.3, max_unknown_share=0.15)
    assert unknown_word_share("") == 0.0


def test_guard_applies_both_thresholds() -> None:
    guard = DegeneracyGuard(max_repeated_share=0.3, max_unknown_share=0.15)
    texts = [PROSE, "yes yes yes yes yes yes", "Blorft zanquix vromble snerk, plinth of glorp."]
    assert guard.valid(texts).tolist() == [True, False, False]
    assert DegeneracyGuard.of(AlgorithmConfig()) == DegeneracyGuard(0.3, 0.15)
