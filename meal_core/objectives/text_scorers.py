"""Offline scorers that need no download: sentiment, readability, brevity."""

from __future__ import annotations

from collections.abc import Sequence

import textstat
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from meal_core.objectives.base import Objective


class SentimentScorer(Objective):
    """VADER compound polarity in [-1, 1]."""

    def __init__(self, name: str, direction: str = "maximize", batch_size: int = 64) -> None:
        super().__init__(name, direction, batch_size)
        self._analyzer = SentimentIntensityAnalyzer()

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [self._analyzer.polarity_scores(text)["compound"] for text in responses]


class ReadabilityScorer(Objective):
    """Flesch reading ease, clamped: degenerate text (one-syllable repetition) saturates it."""

    def __init__(
        self, name: str, direction: str = "maximize", batch_size: int = 64, cap: float = 90.0, floor: float = -20.0
    ) -> None:
        super().__init__(name, direction, batch_size)
        self.cap, self.floor = cap, floor

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = []
        for text in responses:
            value = textstat.flesch_reading_ease(text) if text.strip() else self.floor
            scores.append(min(self.cap, max(self.floor, value)))
        return scores


class BrevityScorer(Objective):
    """Minus the response length, so that maximizing it prefers shorter answers."""

    def __init__(self, name: str, direction: str = "maximize", batch_size: int = 64, unit: str = "words") -> None:
        super().__init__(name, direction, batch_size)
        self.unit = unit

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if self.unit == "characters":
            return [-float(len(text)) for text in responses]
        return [-float(len(text.split())) for text in responses]
