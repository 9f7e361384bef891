"""The reward plug-in interface: a batch of (prompt, response) pairs in, one float per response out."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class ObjectiveError(RuntimeError):
    """A scorer that cannot be built or returned unusable scores."""


class Objective(ABC):
    """One reward objective over raw text.

    Subclasses implement `score_batch`; `score` splits the input into batches of `batch_size` and checks the
    result. Scores are returned as the scorer defines them; `sign` turns them into "higher is better".
    """

    def __init__(self, name: str, direction: str = "maximize", batch_size: int = 64) -> None:
        self.name = name
        self.direction = direction
        self.batch_size = batch_size

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0

    @abstractmethod
    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]:
        """Scores for one batch, at most `batch_size` long."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(responses)} responses")
        scores: list[float] = []
        for start in range(0, len(responses), self.batch_size):
            end = start + self.batch_size
            expected = len(responses[start:end])
            batch = list(self.score_batch(prompts[start:end], responses[start:end]))
            if len(batch) != expected:
                raise ObjectiveError(f"{self.name}: returned {len(batch)} scores for {expected} responses")
            scores.extend(float(v) for v in batch)
        if any(not math.isfinite(v) for v in scores):
            raise ObjectiveError(f"{self.name}: returned a non-finite score")
        return np.asarray(scores, dtype=np.float64)
