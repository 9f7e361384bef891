"""Evaluation: weight grid → empirical Pareto front, hypervolume, controllability, conditioning probe."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import moocore
import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr, spearmanr


def weight_grid(num_objectives: int, grid_points: int, lattice_divisions: int) -> np.ndarray:
    """K=2: w1 = 0, 1/(n-1), …, 1. K≥3: every point of the simplex lattice with the given divisions."""
    if num_objectives == 2:
        w1 = np.linspace(0.0, 1.0, grid_points)
        return np.stack([w1, 1.0 - w1], axis=1)
    points = [
        c for c in itertools.product(range(lattice_divisions + 1), repeat=num_objectives) if sum(c) == lattice_divisions
    ]
    return np.asarray(points, dtype=np.float64) / lattice_divisions


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (all objectives maximised)."""
    mask = np.ones(len(points), dtype=bool)
    for i, p in enumerate(points):
        dominated_by = (points >= p).all(axis=1) & (points > p).any(axis=1)
        mask[i] = not dominated_by.any()
    return mask


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by `points` (maximised) and bounded below by `reference`. moocore minimises: negate."""
    inside = points[(points > reference).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(moocore.hypervolume(-inside, ref=-reference))


def rank_correlation(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman ρ, 0 where either side is constant (no evidence either way)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def linear_correlation(x: ArrayLike, y: ArrayLike) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(pearsonr(x, y).statistic)


@dataclass
class FrontPoint:
    weights: list[float]
    rewards: list[float]  # mean normalised reward per objective
    raw_rewards: list[float]  # mean raw score per objective
    on_front: bool = False


@dataclass
class EvaluationResult:
    step: int
    objectives: list[str]
    points: list[FrontPoint]
    hypervolume: float
    reference_point: list[float]
    controllability: dict[str, float]
    probe: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    step: int,
    objectives: list[str],
    grid: np.ndarray,
    asked: np.ndarray,
    normalized: np.ndarray,
    raw: np.ndarray,
    reference: np.ndarray,
    probe: dict[str, float],
) -> EvaluationResult:
    """asked (N, K) weights each response was generated under (rows of `grid`); normalized / raw (N, K)."""
    points = []
    for w in grid:
        rows = np.isclose(asked, w).all(axis=1)
        points.append(FrontPoint(w.tolist(), normalized[rows].mean(axis=0).tolist(), raw[rows].mean(axis=0).tolist()))
    means = np.array([p.rewards for p in points])
    for point, on_front in zip(points, pareto_mask(means), strict=True):
        point.on_front = bool(on_front)
    controllability = {name: rank_correlation(asked[:, k], normalized[:, k]) for k, name in enumerate(objectives)}
    return EvaluationResult(
        step=step,
        objectives=objectives,
        points=points,
        hypervolume=hypervolume(means, reference),
        reference_point=reference.tolist(),
        controllability=controllability,
        probe=probe,
    )
