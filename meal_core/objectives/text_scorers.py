"""Offline scorers that need no download: sentiment, readability, brevity, coverage."""

from __future__ import annotations

import re
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


# Function words carry no content: a response does not cover more ground by using more of them.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


class CoverageScorer(Objective):
    """How much ground a response covers: the number of distinct content words in it (function words and words
    shorter than `min_letters` left out). It rewards saying more, so it trades off against brevity."""

    def __init__(self, name: str, direction: str = "maximize", batch_size: int = 64, min_letters: int = 3) -> None:
        super().__init__(name, direction, batch_size)
        self.min_letters = min_letters

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [
            float(len({w for w in _WORD.findall(text.lower()) if len(w) >= self.min_letters and w not in STOPWORDS}))
            for text in responses
        ]
