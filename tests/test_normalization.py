"""meal_core.normalization: calibrated z-scores with clipping, and z-scores within each prompt's group."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meal_core.normalization import Normalizer


def test_calibrate_uses_column_mean_and_population_std() -> None:
    scores = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [6.0, 10.0]])
    normalizer = Normalizer.calibrate(["a", "b"], scores, clip=3.0)
    assert normalizer.names == ["a", "b"]
    np.testing.assert_allclose(normalizer.mean, [3.0, 10.0])
    np.testing.assert_allclose(normalizer.std[0], np.sqrt((4 + 1 + 0 + 9) / 4))
    # A constant objective gets the tiny floor, not zero: no division by zero later.
    assert normalizer.std[1] == pytest.approx(1e-6)
    assert normalizer.clip == 3.0


def test_call_standardises_and_clips() -> None:
    normalizer = Normalizer(["a", "b"], mean=np.array([1.0, -2.0]), std=np.array([2.0, 0.5]), clip=2.5)
    out = normalizer(np.array([[1.0, -2.0], [3.0, -1.5], [-10.0, 10.0], [2.0, -2.25]]))
    np.testing.assert_allclose(out, [[0.0, 0.0], [1.0, 1.0], [-2.5, 2.5], [0.5, -0.5]])


def test_calibrated_scores_of_the_calibration_set_are_standard() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal([5.0, -3.0, 100.0], [2.0, 0.1, 30.0], size=(500, 3))
    normalizer = Normalizer.calibrate(["a", "b", "c"], scores, clip=100.0)
    z = normalizer(scores)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-9)


def test_call_does_not_modify_input() -> None:
    normalizer = Normalizer(["a"], mean=np.array([1.0]), std=np.array([1.0]), clip=1.0)
    scores = np.array([[5.0], [-5.0]])
    normalizer(scores)
    assert scores.tolist() == [[5.0], [-5.0]]


def test_within_groups_hand_computed() -> None:
    normalizer = Normalizer(["a", "b"], mean=np.zeros(2), std=np.array([0.1, 0.1]), clip=3.0)
    scores = np.array(
        [
            # group 1: objective a spreads 1, 2, 3; objective b is constant
            [1.0, 5.0],
            [2.0, 5.0],
            [3.0, 5.0],
            # group 2: the same shape shifted by 100 on a: the shift is removed
            [101.0, 0.0],
            [103.0, 1.0],
            [102.0, 2.0],
        ]
    )
    z = normalizer.within_groups(scores, group_size=3)
    step = 1.0 / np.sqrt(2.0 / 3.0)  # population std of (1, 2, 3) is sqrt(2/3)
    np.testing.assert_allclose(z[:3, 0], [-step, 0.0, step])
    np.testing.assert_allclose(z[:3, 1], 0.0)  # zero spread → 0
    np.testing.assert_allclose(z[3:, 0], [-step, step, 0.0])
    np.testing.assert_allclose(z[3:, 1], [-step, 0.0, step])


def test_within_groups_zero_spread_is_exactly_zero_even_with_tiny_std() -> None:
    normalizer = Normalizer.calibrate(["a", "b"], np.array([[1.0, 1.0], [1.0, 1.0]]), clip=3.0)
    z = normalizer.within_groups(np.array([[7.0, -3.0], [7.0, -3.0], [7.0, -3.0], [7.0, -3.0]]), group_size=2)
    assert np.array_equal(z, np.zeros((4, 2)))
    assert np.isfinite(z).all()


def test_within_groups_floor_is_quarter_of_calibrated_std() -> None:
    # Calibrated σ = 8 → the divisor is at least 2, so a group spread of ±0.5 gives ±0.25, not ±1.
    normalizer = Normalizer(["a"], mean=np.zeros(1), std=np.array([8.0]), clip=3.0)
    z = normalizer.within_groups(np.array([[0.0], [1.0]]), group_size=2)
    np.testing.assert_allclose(z[:, 0], [-0.25, 0.25])
    # A wide group is not affected by the floor.
    z = normalizer.within_groups(np.array([[0.0], [10.0]]), group_size=2)
    np.testing.assert_allclose(z[:, 0], [-1.0, 1.0])


def test_within_groups_clips() -> None:
    normalizer = Normalizer(["a"], mean=np.zeros(1), std=np.array([1e-6]), clip=1.5)
    scores = np.array([[0.0]] * 9 + [[100.0]])  # one outlier: z = 3 before clipping
    z = normalizer.within_groups(scores, group_size=10)
    assert z[-1, 0] == 1.5
    np.testing.assert_allclose(z[:-1, 0], -1.0 / 3.0)


def test_within_groups_group_size_one_and_shape() -> None:
    normalizer = Normalizer(["a", "b", "c"], mean=np.zeros(3), std=np.ones(3), clip=3.0)
    scores = np.arange(12, dtype=float).reshape(4, 3)
    assert np.array_equal(normalizer.within_groups(scores, group_size=1), np.zeros((4, 3)))
    assert normalizer.within_groups(scores, group_size=2).shape == (4, 3)
    with pytest.raises(ValueError):
        normalizer.within_groups(scores, group_size=3)  # 4 rows do not split into groups of 3


def test_state_dict_round_trip_through_json() -> None:
    rng = np.random.default_rng(1)
    normalizer = Normalizer.calibrate(["a", "b"], rng.normal(size=(20, 2)), clip=2.0)
    state = json.loads(json.dumps(normalizer.state_dict()))
    restored = Normalizer.from_state_dict(state)
    assert restored.names == ["a", "b"]
    assert restored.clip == 2.0
    assert np.array_equal(restored.mean, normalizer.mean)
    assert np.array_equal(restored.std, normalizer.std)
    probe = rng.normal(size=(6, 2)) * 3
    assert np.array_equal(restored(probe), normalizer(probe))
    assert np.array_equal(restored.within_groups(probe, 3), normalizer.within_groups(probe, 3))
