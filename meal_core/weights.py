"""The meta-learner: a preference-weight-net f_φ(x) and per-prompt learnable weight logits z_x.

f_φ maps a frozen prompt embedding to weights on the simplex. z_x are free parameters, initialised from
log f_φ(x) the first time a prompt is seen and moved toward the hindsight trade-offs the policy's accepted
responses achieve; f_φ is then fitted to the refined softmax(z_x) (the outer step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def hindsight_target(normalized_rewards: np.ndarray, temperature: float) -> np.ndarray:
    """t = softmax(r / τ): the trade-off a response embodies, row-wise for (N, K) rewards."""
    logits = normalized_rewards / temperature
    logits = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    return hindsight_target(logits, 1.0)


def entropy(weights: np.ndarray) -> np.ndarray:
    return -(weights * np.log(np.clip(weights, 1e-12, None))).sum(axis=-1)


class PreferenceNet(nn.Module):
    """A small MLP: frozen prompt embedding → log-weights over K objectives."""

    def __init__(self, embedding_dim: int, hidden: int, num_objectives: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.LayerNorm(embedding_dim),
            nn.Linear(embedding_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_objectives),
        )
        # Start from uniform weights: no objective is preferred before any evidence.
        last = self.layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.layers(embeddings), dim=-1)


def kl_to_net(target: torch.Tensor, log_predicted: torch.Tensor) -> torch.Tensor:
    """Σ_x KL(target_x ‖ f_φ(x)), averaged over the batch."""
    return (target * (torch.log(target.clamp(min=1e-12)) - log_predicted)).sum(-1).mean()


class LearnableWeights:
    """z_x per prompt id. The KL gradient has a closed form: ∇_z KL(t ‖ softmax(z)) = softmax(z) − t."""

    def __init__(self, num_objectives: int) -> None:
        self.num_objectives = num_objectives
        self.logits: dict[str, np.ndarray] = {}
        self.initial: dict[str, np.ndarray] = {}  # softmax(z_x) when x was first seen
        self.updates: dict[str, int] = {}  # hindsight steps z_x has taken

    def __contains__(self, prompt_id: str) -> bool:
        return prompt_id in self.logits

    def ensure(self, prompt_id: str, initial_weights: np.ndarray) -> None:
        if prompt_id not in self.logits:
            self.logits[prompt_id] = np.log(np.clip(initial_weights, 1e-6, None))
            self.initial[prompt_id] = softmax(self.logits[prompt_id])
            self.updates[prompt_id] = 0

    def weights(self, prompt_ids: Sequence[str]) -> np.ndarray:
        return softmax(np.stack([self.logits[p] for p in prompt_ids]))

    def update(self, prompt_id: str, target: np.ndarray, lr: float) -> float:
        """One gradient step of KL(target ‖ softmax(z)); returns the KL before the step."""
        z = self.logits[prompt_id]
        current = softmax(z)
        kl = float((target * (np.log(np.clip(target, 1e-12, None)) - np.log(current))).sum())
        self.logits[prompt_id] = z - lr * (current - target)
        self.updates[prompt_id] += 1
        return kl

    def mean_movement(self) -> float:
        """How far the learned weights have moved from where they started: mean total-variation distance
        ½‖softmax(z_x) − softmax(z_x⁰)‖₁ over the prompts that took at least one hindsight step."""
        moved = [p for p, n in self.updates.items() if n]
        if not moved:
            return 0.0
        return float(np.mean([0.5 * np.abs(softmax(self.logits[p]) - self.initial[p]).sum() for p in moved]))

    def mean_updates(self) -> float:
        """Hindsight steps per prompt seen."""
        return float(np.mean(list(self.updates.values()))) if self.updates else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": {k: v.tolist() for k, v in self.logits.items()},
            "initial": {k: v.tolist() for k, v in self.initial.items()},
            "updates": dict(self.updates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logits = {k: np.asarray(v, dtype=np.float64) for k, v in state["logits"].items()}
        self.initial = {k: np.asarray(v, dtype=np.float64) for k, v in state["initial"].items()}
        self.updates = {k: int(v) for k, v in state["updates"].items()}
