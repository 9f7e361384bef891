"""Rejection sampling: the degeneracy guard and the rules that keep candidates."""

from __future__ import annotations

from collections import Counter

import numpy as np


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of word n-grams that are repeats of an earlier one (0 for fresh text, → 1 for loops)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_degenerate(text: str, max_repeated_share: float) -> bool:
    """Empty, looping, or repeating whole lines: rewards such as readability score these well, wrongly."""
    if len(text.split()) < 2:
        return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 3 and max(Counter(lines).values()) > 1 and len(set(lines)) < 0.7 * len(lines):
        return True
    return repeated_ngram_share(text) > max_repeated_share


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
