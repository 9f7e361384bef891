"""Per-objective score normalisation: r_k = clip((s_k - μ_k) / σ_k, -c, c).

μ and σ are calibrated on the base policy's own responses before training and saved with the run. In "group"
mode selection instead uses z-scores within each prompt's candidates, which stay relative as the policy drifts;
the calibrated statistics still serve evaluation, so fronts of different iterations are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_MIN_STD = 1e-6


@dataclass
class Normalizer:
    names: list[str]
    mean: np.ndarray
    std: np.ndarray
    clip: float = 3.0

    @classmethod
    def calibrate(cls, names: list[str], oriented_scores: np.ndarray, clip: float) -> Normalizer:
        """oriented_scores: (N, K), higher is better."""
        return cls(names, oriented_scores.mean(axis=0), np.maximum(oriented_scores.std(axis=0), _MIN_STD), clip)

    def __call__(self, oriented_scores: np.ndarray) -> np.ndarray:
        return np.clip((oriented_scores - self.mean) / self.std, -self.clip, self.clip)

    def within_groups(self, oriented_scores: np.ndarray, group_size: int) -> np.ndarray:
        """Z-scores inside consecutive groups of `group_size` rows (one group per prompt).

        A group with no spread on an objective gets 0 there: it says nothing about that trade-off. The
        calibrated σ bounds the divisor from below, so tiny spreads are not blown up to full z-scores.
        """
        n, k = oriented_scores.shape
        grouped = oriented_scores.reshape(n // group_size, group_size, k)
        centred = grouped - grouped.mean(axis=1, keepdims=True)
        spread = np.maximum(grouped.std(axis=1, keepdims=True), 0.25 * self.std)
        return np.clip(centred / spread, -self.clip, self.clip).reshape(n, k)

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Normalizer:
        return cls(list(state["names"]), np.asarray(state["mean"]), np.asarray(state["std"]), float(state["clip"]))
