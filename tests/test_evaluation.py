"""meal_core.evaluation: weight grids, Pareto fronts, hypervolume, controllability and the summary."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from meal_core.evaluation import (
    EvaluationResult,
    auto_weight_fit,
    hypervolume,
    linear_correlation,
    pareto_mask,
    rank_correlation,
    shuffled_null,
    summarize,
    weight_grid,
)

# -- weight grids ------------------------------------------------------------------------------------------------


def test_weight_grid_two_objectives() -> None:
    grid = weight_grid(2, grid_points=11, lattice_divisions=4)
    assert grid.shape == (11, 2)
    np.testing.assert_allclose(grid[:, 0], np.arange(11) / 10)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert grid[0].tolist() == [0.0, 1.0]
    assert grid[-1].tolist() == [1.0, 0.0]


def test_weight_grid_two_objectives_other_sizes() -> None:
    assert weight_grid(2, 2, 4).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    np.testing.assert_allclose(weight_grid(2, 3, 4), [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])


@pytest.mark.parametrize("divisions", [1, 2, 3, 4, 7])
def test_weight_grid_three_objective_lattice(divisions: int) -> None:
    grid = weight_grid(3, grid_points=11, lattice_divisions=divisions)
    assert len(grid) == comb(divisions + 2, 2)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert (grid >= 0).all()
    units = grid * divisions
    np.testing.assert_allclose(units, np.round(units), atol=1e-12)
    assert len({tuple(row) for row in np.round(units).astype(int)}) == len(grid)
    # The corners (one objective only) are on the lattice.
    for k in range(3):
        corner = np.eye(3)[k]
        assert np.isclose(grid, corner).all(axis=1).any()


def test_weight_grid_four_objectives() -> None:
    grid = weight_grid(4, grid_points=11, lattice_divisions=3)
    assert grid.shape == (comb(3 + 3, 3), 4)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)


# -- Pareto front ----------------------------------------------------------------------------------------------


def test_pareto_mask_hand_made() -> None:
    points = np.array(
        [
            [1.0, 3.0],  # front
            [2.0, 2.0],  # front
            [3.0, 1.0],  # front
            [1.5, 1.5],  # dominated by (2, 2)
            [1.0, 2.0],  # dominated by (1, 3): equal on one, worse on the other
            [0.0, 0.0],  # dominated by all
        ]
    )
    assert pareto_mask(points).tolist() == [True, True, True, False, False, False]


def test_pareto_mask_duplicates_and_single_point() -> None:
    assert pareto_mask(np.array([[1.0, 1.0], [1.0, 1.0]])).tolist() == [True, True]
    assert pareto_mask(np.array([[0.0, 0.0]])).tolist() == [True]


def test_pareto_mask_three_objectives() -> None:
    points = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4]])
    assert pareto_mask(points).tolist() == [True, True, True, True, False]


# -- hypervolume -------------------------------------------------------------------------------------------------


def test_hypervolume_2d_staircase() -> None:
    # Boxes [0,1]x[0,3] ∪ [1,2]x[0,2] ∪ [2,3]x[0,1]: 3 + 2 + 1 = 6.
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(points, np.array([0.0, 0.0])) == pytest.approx(6.0)


def test_hypervolume_2d_shifted_reference() -> None:
    # Relative to (-1, -1) the points become (2,4), (3,3), (4,2): 2*4 + 1*3 + 1*2 = 13.
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(points, np.array([-1.0, -1.0])) == pytest.approx(13.0)


def test_hypervolume_3d_inclusion_exclusion() -> None:
    # A = (3,2,1), B = (1,3,2), C = (2,1,3), reference 0: each box is 6.
    # Pairwise intersections (coordinate-wise minima): A∩B = (1,2,1) → 2, A∩C = (2,1,1) → 2, B∩C = (1,1,2) → 2.
    # Triple: (1,1,1) → 1.  Union = 6+6+6 − 2−2−2 + 1 = 13.
    points = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [2.0, 1.0, 3.0]])
    assert hypervolume(points, np.zeros(3)) == pytest.approx(13.0)


def test_hypervolume_3d_symmetric_case() -> None:
    # (2,1,1), (1,2,1), (1,1,2): boxes of 2 each, every intersection is the unit cube: 6 − 3 + 1 = 4.
    points = np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    assert hypervolume(points, np.zeros(3)) == pytest.approx(4.0)


def test_hypervolume_dominated_points_add_nothing() -> None:
    front = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    with_dominated = np.vstack([front, [[1.5, 1.5], [0.5, 0.5]]])
    assert hypervolume(with_dominated, np.zeros(2)) == pytest.approx(6.0)


def test_hypervolume_ignores_points_not_dominating_reference() -> None:
    front = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    outside = np.vstack([front, [[10.0, -0.5], [-1.0, 10.0], [5.0, 0.0]]])
    assert hypervolume(outside, np.zeros(2)) == pytest.approx(6.0)


def test_hypervolume_nothing_inside_is_zero() -> None:
    assert hypervolume(np.array([[-1.0, 5.0], [0.0, 0.0]]), np.zeros(2)) == 0.0
    assert hypervolume(np.empty((0, 2)), np.zeros(2)) == 0.0


def test_hypervolume_single_point_is_its_box() -> None:
    assert hypervolume(np.array([[0.5, -1.0, 2.0]]), np.array([-3.0, -3.0, -3.0])) == pytest.approx(3.5 * 2 * 5)


# -- correlations ------------------------------------------------------------------------------------------------


def test_rank_correlation() -> None:
    x = [0.0, 0.1, 0.5, 0.9, 1.0]
    assert rank_correlation(x, [v**3 for v in x]) == pytest.approx(1.0)  # monotone, not linear
    assert rank_correlation(x, [-v for v in x]) == pytest.approx(-1.0)
    assert rank_correlation(x, [1.0] * 5) == 0.0
    assert rank_correlation([0.3] * 5, x) == 0.0
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_linear_correlation() -> None:
    x = [0.0, 1.0, 2.0, 3.0]
    assert linear_correlation(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert linear_correlation(x, [v**3 for v in x]) < 0.99
    assert linear_correlation(x, [5.0] * 4) == 0.0


# -- summary -----------------------------------------------------------------------------------------------------


def test_summarize_builds_points_per_grid_weight() -> None:
    grid = weight_grid(2, grid_points=3, lattice_divisions=4)  # (0,1), (0.5,0.5), (1,0)
    asked = np.repeat(grid, 2, axis=0)  # two responses per weight
    normalized = np.array(
        [
            [-1.0, 2.0],
            [-1.0, 1.0],  # w=(0,1): mean (-1, 1.5)
            [0.0, 0.0],
            [0.5, 1.0],  # w=(0.5,0.5): mean (0.25, 0.5)
            [2.0, -1.0],
            [1.0, -1.0],  # w=(1,0): mean (1.5, -1)
        ]
    )
    raw = normalized * 10 + 100
    probe = {"correlation": 0.4}
    result = summarize(7, ["a", "b"], grid, asked, normalized, raw, np.array([-3.0, -3.0]), probe)

    assert isinstance(result, EvaluationResult)
    assert result.step == 7
    assert result.objectives == ["a", "b"]
    assert [p.weights for p in result.points] == grid.tolist()
    np.testing.assert_allclose([p.rewards for p in result.points], [[-1.0, 1.5], [0.25, 0.5], [1.5, -1.0]])
    np.testing.assert_allclose([p.raw_rewards for p in result.points], [[90.0, 115.0], [102.5, 105.0], [115.0, 90.0]])
    assert [p.on_front for p in result.points] == [True, True, True]
    # Boxes from (-3,-3): (2, 4.5) ∪ (3.25, 3.5) ∪ (4.5, 2) = 2*4.5 + 1.25*3.5 + 1.25*2 = 15.875.
    assert result.hypervolume == pytest.approx(15.875)
    assert result.reference_point == [-3.0, -3.0]
    # Asked w_a rises with obtained a; asked w_b rises with obtained b: both controllable.
    assert result.controllability["a"] == pytest.approx(rank_correlation(asked[:, 0], normalized[:, 0]))
    assert result.controllability["a"] > 0.8
    assert result.controllability["b"] > 0.8
    assert result.probe == probe
    encoded = json.loads(json.dumps(result.to_json()))
    assert encoded["points"][1]["rewards"] == [0.25, 0.5]
    assert encoded["points"][0]["on_front"] is True


def test_summarize_marks_dominated_points_and_negative_controllability() -> None:
    grid = weight_grid(2, grid_points=3, lattice_divisions=4)
    asked = grid.copy()
    # The middle weight gives a dominated point; objective a moves against its weight.
    normalized = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]])
    result = summarize(0, ["a", "b"], grid, asked, normalized, normalized, np.array([-2.0, -2.0]), {})
    assert [p.on_front for p in result.points] == [True, False, False]
    assert result.controllability["a"] == pytest.approx(-1.0)
    # Ranks of asked w_b (3, 2, 1) against ranks of b (2.5, 1, 2.5): no monotone relation, ρ = 0.
    assert result.controllability["b"] == pytest.approx(0.0, abs=1e-12)
    assert result.hypervolume == pytest.approx(9.0)  # only (1, 1) counts: 3 x 3


def test_summarize_three_objectives_lattice() -> None:
    grid = weight_grid(3, grid_points=11, lattice_divisions=2)
    rng = np.random.default_rng(0)
    asked = np.repeat(grid, 3, axis=0)
    normalized = asked * 2 - 1 + rng.normal(0, 0.01, size=asked.shape)  # obtained tracks asked
    result = summarize(1, ["a", "b", "c"], grid, asked, normalized, normalized, np.full(3, -3.0), {})
    assert len(result.points) == comb(2 + 2, 2)
    for point, w in zip(result.points, grid, strict=True):
        np.testing.assert_allclose(point.rewards, w * 2 - 1, atol=0.02)
    assert all(v > 0.8 for v in result.controllability.values())
    assert result.hypervolume > 0


def test_controllability_three_ways_on_a_policy_that_follows_and_one_that_does_not() -> None:
    grid = weight_grid(2, 11, 4)
    asked = np.repeat(grid, 24, axis=0)  # 24 responses per grid point: 264, as the demo evaluates
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, size=(len(asked), 2))
    follows = asked * 2.0 + noise  # reward rises with the weight asked for it
    blind = noise  # the weights change nothing
    valid = np.ones(len(asked), dtype=bool)
    valid[:13] = False
    ref = np.array([-3.0, -3.0])
    steering = summarize(5, ["a", "b"], grid, asked, follows, follows, ref, {}, valid, seed=1)
    for name in ("a", "b"):
        assert steering.controllability[name] > 0.4
        assert steering.controllability_grid[name] > 0.9
        assert 0.05 < steering.controllability_null[name] < 0.2  # chance level on 264 responses
    assert steering.degenerate_share == pytest.approx(13 / 264)
    assert steering.responses == 264
    weight_blind = summarize(5, ["a", "b"], grid, asked, blind, blind, ref, {}, valid, seed=1)
    for name in ("a", "b"):
        assert abs(weight_blind.controllability[name]) < weight_blind.controllability_null[name]
    metrics = steering.metrics()
    expected = {"eval/hypervolume", "eval/degenerate_share", "eval/controllability/a", "eval/controllability_grid/b"}
    assert expected | {"eval/controllability_null/a"} <= set(metrics)
    assert metrics["eval/controllability_grid/a"] == steering.controllability_grid["a"]


def test_shuffled_null_is_seeded_and_an_upper_quantile() -> None:
    asked = np.linspace(0, 1, 100)
    obtained = np.random.default_rng(3).normal(size=100)
    first, again = shuffled_null(asked, obtained, seed=4), shuffled_null(asked, obtained, seed=4)
    assert first == again
    assert 0.1 < first < 0.3  # |ρ| of 100 unrelated pairs: 95th percentile near 1.96 / √99 ≈ 0.2


def test_auto_weight_fit_hand_computed() -> None:
    # Two prompts, two responses each: prompt 0's responses do better on objective 0, prompt 1's on objective 1.
    normalized = np.array([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]])
    rows = np.array([0, 0, 1, 1])
    target = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()  # softmax((1, -1) / 1)
    net = np.array([[0.8, 0.2], [0.2, 0.8]])
    fit = auto_weight_fit(normalized, rows, net, temperature=1.0)
    kl_uniform = float((target * np.log(target / 0.5)).sum())
    kl_net = float((target * np.log(target / net[0])).sum())
    assert fit["kl_uniform"] == pytest.approx(kl_uniform)
    assert fit["kl_net"] == pytest.approx(kl_net)
    assert fit["kl_net"] < fit["kl_uniform"]  # a net that leans the right way beats uniform
