"""meal_core.weights: hindsight targets, the learnable weight logits and the preference-weight-net."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meal_core.weights import LearnableWeights, PreferenceNet, entropy, hindsight_target, kl_to_net, softmax


def _kl(target: np.ndarray, weights: np.ndarray) -> float:
    return float((target * np.log(target / weights)).sum())


# -- hindsight targets --------------------------------------------------------------------------------------------


def test_hindsight_target_is_a_softmax() -> None:
    rewards = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-2.0, 3.0, 0.0]])
    t = hindsight_target(rewards, temperature=1.0)
    expected = np.exp(rewards) / np.exp(rewards).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(t, expected, rtol=1e-12)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    np.testing.assert_allclose(t[1], [1 / 3] * 3)
    # The best objective of a response gets the largest share.
    assert (t.argmax(axis=1) == [0, 0, 1]).all()


def test_hindsight_target_temperature() -> None:
    r = np.array([1.0, 0.0])
    # t = softmax(r / τ): τ = 0.5 doubles the logit gap.
    np.testing.assert_allclose(hindsight_target(r, 0.5), [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    sharp, plain, flat = (hindsight_target(r, tau)[0] for tau in (0.1, 1.0, 10.0))
    assert sharp > plain > flat > 0.5
    assert sharp > 0.9999
    assert flat == pytest.approx(0.5, abs=0.03)


def test_hindsight_target_is_stable_for_large_rewards() -> None:
    t = hindsight_target(np.array([[1000.0, 999.0], [-1000.0, -1001.0]]), 1.0)
    assert np.isfinite(t).all()
    np.testing.assert_allclose(t[0], t[1])
    np.testing.assert_allclose(t[0], [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))])


def test_softmax_and_entropy() -> None:
    np.testing.assert_allclose(softmax(np.zeros(4)), 0.25)
    assert entropy(np.full(4, 0.25)) == pytest.approx(np.log(4))
    assert entropy(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.0)
    np.testing.assert_allclose(entropy(np.array([[0.5, 0.5], [1.0, 0.0]])), [np.log(2), 0.0])


# -- learnable weight logits --------------------------------------------------------------------------------------


def test_ensure_initialises_once_from_weights() -> None:
    learnable = LearnableWeights(3)
    learnable.ensure("p1", np.array([0.2, 0.3, 0.5]))
    assert "p1" in learnable
    assert "p2" not in learnable
    np.testing.assert_allclose(learnable.weights(["p1"])[0], [0.2, 0.3, 0.5])
    learnable.ensure("p1", np.array([0.9, 0.05, 0.05]))  # already known: unchanged
    np.testing.assert_allclose(learnable.weights(["p1"])[0], [0.2, 0.3, 0.5])


def test_ensure_clips_zero_weights() -> None:
    learnable = LearnableWeights(2)
    learnable.ensure("p", np.array([1.0, 0.0]))
    assert np.isfinite(learnable.logits["p"]).all()
    w = learnable.weights(["p"])[0]
    assert w[1] == pytest.approx(1e-6, rel=1e-3)


def test_weights_are_stacked_in_order() -> None:
    learnable = LearnableWeights(2)
    learnable.ensure("a", np.array([0.1, 0.9]))
    learnable.ensure("b", np.array([0.6, 0.4]))
    np.testing.assert_allclose(learnable.weights(["b", "a", "b"]), [[0.6, 0.4], [0.1, 0.9], [0.6, 0.4]])


@pytest.mark.parametrize("lr", [0.1, 1.0, 3.0])
def test_update_is_the_autograd_gradient_step(lr: float) -> None:
    rng = np.random.default_rng(int(lr * 10))
    for _ in range(20):
        k = int(rng.integers(2, 6))
        initial = rng.dirichlet(np.ones(k))
        target = rng.dirichlet(np.ones(k))
        learnable = LearnableWeights(k)
        learnable.ensure("p", initial)
        z0 = learnable.logits["p"].copy()

        z = torch.tensor(z0, dtype=torch.float64, requires_grad=True)
        t = torch.tensor(target, dtype=torch.float64)
        kl = (t * (t.log() - torch.log_softmax(z, dim=-1))).sum()
        kl.backward()
        assert z.grad is not None

        returned = learnable.update("p", target, lr)
        assert returned == pytest.approx(kl.item(), rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(learnable.logits["p"], z0 - lr * z.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_update_moves_toward_target_and_kl_decreases() -> None:
    learnable = LearnableWeights(3)
    learnable.ensure("p", np.array([0.7, 0.2, 0.1]))
    target = np.array([0.1, 0.3, 0.6])
    kls = [learnable.update("p", target, lr=1.0) for _ in range(60)]
    assert kls[0] == pytest.approx(_kl(target, np.array([0.7, 0.2, 0.1])))
    assert all(b < a for a, b in zip(kls, kls[1:], strict=False))
    final = learnable.weights(["p"])[0]
    assert _kl(target, final) < 1e-3 * kls[0]
    np.testing.assert_allclose(final, target, atol=0.02)


def test_first_step_reduces_distance_to_target() -> None:
    learnable = LearnableWeights(2)
    learnable.ensure("p", np.array([0.5, 0.5]))
    learnable.update("p", np.array([0.9, 0.1]), lr=0.5)
    w = learnable.weights(["p"])[0]
    assert 0.5 < w[0] < 0.9


def test_update_at_target_is_a_fixed_point() -> None:
    learnable = LearnableWeights(2)
    learnable.ensure("p", np.array([0.25, 0.75]))
    before = learnable.logits["p"].copy()
    assert learnable.update("p", np.array([0.25, 0.75]), lr=1.0) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(learnable.logits["p"], before, atol=1e-12)


def test_update_only_touches_its_prompt() -> None:
    learnable = LearnableWeights(2)
    learnable.ensure("a", np.array([0.5, 0.5]))
    learnable.ensure("b", np.array([0.5, 0.5]))
    learnable.update("a", np.array([1.0, 0.0]), lr=1.0)
    np.testing.assert_allclose(learnable.weights(["b"])[0], [0.5, 0.5])
    assert learnable.weights(["a"])[0][0] > 0.5


def test_learnable_state_dict_round_trip() -> None:
    learnable = LearnableWeights(3)
    learnable.ensure("x", np.array([0.2, 0.3, 0.5]))
    learnable.ensure("y", np.array([0.6, 0.2, 0.2]))
    learnable.update("x", np.array([0.0, 0.0, 1.0]), lr=0.7)
    restored = LearnableWeights(3)
    restored.load_state_dict(json.loads(json.dumps(learnable.state_dict())))
    assert set(restored.logits) == {"x", "y"}
    np.testing.assert_array_equal(restored.weights(["x", "y"]), learnable.weights(["x", "y"]))
    assert restored.logits["x"].dtype == np.float64


# -- preference-weight-net ---------------------------------------------------------------------------------------


def test_preference_net_starts_uniform() -> None:
    torch.manual_seed(0)
    net = PreferenceNet(embedding_dim=16, hidden=8, num_objectives=3)
    log_w = net(torch.randn(5, 16) * 10)
    assert log_w.shape == (5, 3)
    torch.testing.assert_close(log_w.exp(), torch.full((5, 3), 1 / 3))


def test_kl_to_net_matches_hand_computation() -> None:
    target = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    predicted = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    expected = (0.0 + (0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5))) / 2
    assert kl_to_net(target, predicted.log()).item() == pytest.approx(expected, rel=1e-6)
    assert kl_to_net(predicted, predicted.log()).item() == pytest.approx(0.0, abs=1e-7)
    # A zero in the target contributes nothing rather than NaN.
    one_hot = torch.tensor([[1.0, 0.0]])
    assert kl_to_net(one_hot, torch.tensor([[0.8, 0.2]]).log()).item() == pytest.approx(-np.log(0.8), rel=1e-6)


def test_fitting_the_net_lowers_the_loss() -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(32, 16)
    targets = torch.softmax(torch.randn(32, 3) * 2, dim=-1)
    net = PreferenceNet(embedding_dim=16, hidden=32, num_objectives=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    for _ in range(60):
        loss = kl_to_net(targets, net(embeddings))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.1  # uniform is far from these targets
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        predicted = net(embeddings).exp()
    # The net now ranks the objectives of most prompts as its targets do.
    agreement = (predicted.argmax(-1) == targets.argmax(-1)).float().mean().item()
    assert agreement > 0.8
