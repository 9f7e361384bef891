"""Evaluation: weight grid → empirical Pareto front, hypervolume, controllability, conditioning probe.

Controllability is reported three ways per objective k, because each alone misleads on small samples:
- per response: Spearman over every response between the weight asked for k and the reward obtained on k;
- over the grid: Spearman between each grid point's w_k and the mean reward on k there (11 points for K=2: an
  exactly weight-blind model reached +0.41 by noise in our measurements, so read it beside the next two);
- null: the 95th percentile of |per-response Spearman| with the asked weights shuffled across responses, i.e.
  what a weight-blind model reaches by chance on this many responses.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import moocore
import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr, spearmanr

from meal_core import metric_keys as keys


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
    controllability_grid: dict[str, float] = field(default_factory=dict)
    controllability_null: dict[str, float] = field(default_factory=dict)
    degenerate_share: float = 0.0
    responses: int = 0
    # How the preference-weight-net's "auto" weights fit held-out prompts (auto_weight_fit); empty without a net.
    auto_weights: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The evaluation as metric points (meal_core.metric_keys.EVAL_*)."""
        values = {keys.EVAL_HYPERVOLUME: self.hypervolume, keys.EVAL_DEGENERATE_SHARE: self.degenerate_share}
        for family, figures in (
            (keys.EVAL_CONTROLLABILITY, self.controllability),
            (keys.EVAL_CONTROLLABILITY_GRID, self.controllability_grid),
            (keys.EVAL_CONTROLLABILITY_NULL, self.controllability_null),
            (keys.EVAL_PROBE, self.probe),
            (keys.EVAL_AUTO_WEIGHTS, self.auto_weights),
        ):
            values.update({family(name): value for name, value in figures.items()})
        return values


@dataclass
class HeldOutResult(EvaluationResult):
    """A run's final evaluation on a held-out prompt file, after its last iteration and outside training (an
    experiment's `held_out`, `meal experiment run --prompts`): the evaluation and what it was asked on. Never one
    of the per-step evaluations: it is stored apart from them (heldout.json in a run folder, the
    `held_out_evaluation` table in the panel), so no chart, front or report mistakes it for a training step."""

    prompts: str = ""  # the prompt file (or data spec) it was evaluated on
    samples_per_weight: int = 0

    @classmethod
    def of(cls, result: EvaluationResult, prompts: str, samples_per_weight: int) -> HeldOutResult:
        own = {f.name: getattr(result, f.name) for f in fields(EvaluationResult)}
        return cls(**own, prompts=prompts, samples_per_weight=samples_per_weight)


def shuffled_null(asked: np.ndarray, obtained: np.ndarray, seed: int, permutations: int = 200) -> float:
    """95th percentile of |Spearman(asked, obtained)| with `asked` shuffled: what no control reaches by chance."""
    rng = np.random.default_rng(seed)
    values = [abs(rank_correlation(rng.permutation(asked), obtained)) for _ in range(permutations)]
    return float(np.quantile(values, 0.95))


def auto_weight_fit(
    normalized: np.ndarray, prompt_rows: np.ndarray, net_weights: np.ndarray, temperature: float
) -> dict[str, float]:
    """Do the net's weights for held-out prompts predict the trade-off their responses achieve better than uniform?

    For each prompt x, t_x = softmax(mean calibrated reward of x's evaluation responses / τ): the trade-off its
    responses embody. Returns the mean KL(t_x ‖ f_φ(x)) and KL(t_x ‖ uniform); the net generalises where the
    first is the smaller.
    """
    k = normalized.shape[1]
    targets = np.stack([normalized[prompt_rows == x].mean(axis=0) for x in range(len(net_weights))]) / temperature
    targets = np.exp(targets - targets.max(axis=1, keepdims=True))
    targets /= targets.sum(axis=1, keepdims=True)

    def kl(predicted: np.ndarray) -> float:
        return float((targets * (np.log(targets) - np.log(np.clip(predicted, 1e-12, None)))).sum(axis=1).mean())

    return {"kl_net": kl(net_weights), "kl_uniform": kl(np.full_like(targets, 1 / k))}


def summarize(
    step: int,
    objectives: list[str],
    grid: np.ndarray,
    asked: np.ndarray,
    normalized: np.ndarray,
    raw: np.ndarray,
    reference: np.ndarray,
    probe: dict[str, float],
    valid: np.ndarray | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """asked (N, K) weights each response was generated under (rows of `grid`); normalized / raw (N, K);
    valid (N,) False for degenerate responses."""
    points = []
    for w in grid:
        rows = np.isclose(asked, w).all(axis=1)
        points.append(FrontPoint(w.tolist(), normalized[rows].mean(axis=0).tolist(), raw[rows].mean(axis=0).tolist()))
    means = np.array([p.rewards for p in points])
    for point, on_front in zip(points, pareto_mask(means), strict=True):
        point.on_front = bool(on_front)
    names = list(enumerate(objectives))
    valid = np.ones(len(asked), dtype=bool) if valid is None else valid
    return EvaluationResult(
        step=step,
        objectives=objectives,
        points=points,
        hypervolume=hypervolume(means, reference),
        reference_point=reference.tolist(),
        controllability={name: rank_correlation(asked[:, k], normalized[:, k]) for k, name in names},
        probe=probe,
        controllability_grid={name: rank_correlation(grid[:, k], means[:, k]) for k, name in names},
        controllability_null={name: shuffled_null(asked[:, k], normalized[:, k], seed + k) for k, name in names},
        degenerate_share=float(1 - valid.mean()) if len(valid) else 0.0,
        responses=len(asked),
    )
