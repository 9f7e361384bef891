"""A trained run loaded for sampling: the policy at one of its checkpoints (or the base model), the run's objectives
and normaliser, and its preference-weight-net for "auto" weights. The playground and `meal generate` sample
through it; it samples through the run's `model.rollout` sampler (`meal_core.rollout`), as the trainer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike

from meal_core import checkpoint as checkpoints
from meal_core.config import RunConfig
from meal_core.normalization import Normalizer
from meal_core.objectives import build_objectives, score_responses
from meal_core.policy import Policy, Sampling
from meal_core.rollout import Sampler, sample_prompts, sampler_for
from meal_core.weights import PreferenceNet

BASE = "base"  # the checkpoint name of the untrained policy: adapters at zero
# The longest response a loaded run is asked for (the playground's limit): a vLLM engine is sized for it.
MAX_NEW_TOKENS = 512


class CheckpointError(ValueError):
    """A checkpoint that the run does not have."""


def checkpoint_names(run_dir: Path) -> list[str]:
    """The run's complete checkpoints, oldest first ("iter-000012", …)."""
    return [path.name for path in checkpoints.list_checkpoints(run_dir)]


@dataclass
class Scored:
    raw: np.ndarray  # (N, K) as the scorers return them
    normalized: np.ndarray | None  # (N, K) with the run's calibrated statistics; None before any checkpoint


class LoadedRun:
    """One run's policy at one checkpoint, ready to sample and score.

    The run's latest checkpoint provides the normaliser and the net whatever policy is loaded, so that the base
    model's responses are scored on the same scale as the trained policy's.
    """

    def __init__(
        self, config: RunConfig, run_dir: Path, checkpoint: str | None = None, max_new_tokens: int = MAX_NEW_TOKENS
    ) -> None:
        """`max_new_tokens`: the longest response `sample` will be asked for (sizes a vLLM engine)."""
        names = checkpoint_names(run_dir)
        chosen = checkpoint or (names[-1] if names else BASE)
        if chosen != BASE and chosen not in names:
            raise CheckpointError(f"checkpoint {chosen!r}: the run has {names or 'none yet'}")
        self.config, self.checkpoint = config, chosen
        self.names = config.objective_names
        self.policy = Policy(config.model, config.lora, self.names)
        if chosen != BASE:
            self.policy.load_adapter(checkpoints.checkpoint_dir(run_dir) / chosen / "adapter")
        self.objectives = build_objectives(config.objectives, str(self.policy.device))
        max_model_len = config.model.max_prompt_tokens + max(max_new_tokens, config.algorithm.max_new_tokens) + 1
        self.sampler: Sampler = sampler_for(self.policy, config, max_model_len=max_model_len)
        self.normalizer: Normalizer | None = None
        self.net: PreferenceNet | None = None
        if names:
            state = checkpoints.load_state(checkpoints.checkpoint_dir(run_dir) / names[-1])
            if state.get("normalizer"):
                self.normalizer = Normalizer.from_state_dict(state["normalizer"])
            if state.get("net"):
                width = self.policy.model.get_input_embeddings().embedding_dim
                self.net = PreferenceNet(width, config.algorithm.net_hidden, len(self.names))
                self.net.load_state_dict(state["net"])
                self.net.eval()

    @torch.no_grad()
    def auto_weights(self, prompt: str) -> np.ndarray:
        """What the preference-weight-net proposes for this prompt (uniform for a run without a net)."""
        if self.net is None:
            return np.full(len(self.names), 1 / len(self.names))
        weights: np.ndarray = self.net(self.policy.embed_prompts([prompt])).exp().double().numpy()[0]
        return weights

    def sample(self, prompt: str, weights: ArrayLike, samples: int, sampling: Sampling, seed: int) -> list[list[str]]:
        """`samples` responses under each row of `weights`, in one batched call; the same seed, the same responses."""
        rows = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return sample_prompts(self.sampler, self.policy, [prompt] * len(rows), rows, samples, sampling, seed).texts()

    def score(self, prompt: str, responses: list[str]) -> Scored:
        raw, oriented = score_responses(self.objectives, [prompt] * len(responses), responses)
        return Scored(raw, self.normalizer(oriented) if self.normalizer is not None else None)
