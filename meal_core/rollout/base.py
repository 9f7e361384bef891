"""What every sampling backend takes and gives back.

A `Sampler` turns prompts that are already what the model reads (chat-templated text with the tag if the policy
uses one, or those prompts' token ids), one weight vector per prompt, a number of samples and the sampling options
into responses: token ids, text and why each one ended. The weights are there for `experts` conditioning, where they
choose how the experts mix for that row; prompt text has already carried them for `tag` conditioning.

Both backends see the very same token ids: text prompts are tokenised here, with the policy's tokenizer and its
left truncation (`Policy.encode_prompt`), and responses are decoded here too, so two backends that draw the same
tokens return the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from meal_core.policy import Generation, Sampling

if TYPE_CHECKING:
    from meal_core.policy import Policy

PromptInput: TypeAlias = str | Sequence[int]
FinishReason: TypeAlias = Literal["stop", "length"]


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]  # the generated ids, the eos token included when the response ended with it
    text: str  # decoded without special tokens, stripped
    finish_reason: FinishReason  # "stop": ended with eos; "length": ran into max_new_tokens


@dataclass
class Rollout:
    completions: list[list[Completion]]  # [prompt][sample]

    @property
    def new_tokens(self) -> int:
        return sum(len(c.token_ids) for group in self.completions for c in group)

    def texts(self) -> list[list[str]]:
        return [[c.text for c in group] for group in self.completions]

    def token_ids(self) -> list[list[list[int]]]:
        return [[c.token_ids for c in group] for group in self.completions]

    def as_generation(self) -> Generation:
        """The shape `Policy.generate` returns, for callers that have not moved to `Rollout` yet."""
        return Generation(texts=self.texts(), token_ids=self.token_ids(), new_tokens=self.new_tokens)


class Sampler(Protocol):
    """One sampling path, whatever draws the tokens."""

    def sample(
        self, prompts: Sequence[PromptInput], weights: ArrayLike, n: int, sampling: Sampling, seed: int
    ) -> Rollout:
        """`n` responses to each prompt under its row of `weights`. The same arguments give the same responses."""
        ...

    def token_logprobs(
        self, prompts: Sequence[PromptInput], weights: ArrayLike, responses: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """Teacher-forced log-probability of every token of each response (raw logits: no temperature)."""
        ...

    def released(self) -> AbstractContextManager[None]:
        """Around a policy step: the device memory the sampler can give back meanwhile (vLLM's sleep mode on GPUs:
        weights to host memory, KV cache freed), taken back at the end. Nothing, where there is nothing to free."""
        ...


def conditioned_prompts(policy: Policy, prompts: Sequence[str], weights: ArrayLike) -> list[str]:
    """What the model reads for each raw prompt under its row of weights (chat template, and the tag if the policy
    uses one): `Policy.prompt_text`, the one place prompts are built, row by row."""
    rows = weight_rows(weights, len(prompts))
    return [policy.prompt_text(p, w) for p, w in zip(prompts, rows, strict=True)]


def sample_prompts(
    sampler: Sampler, policy: Policy, prompts: Sequence[str], weights: ArrayLike, n: int, sampling: Sampling, seed: int
) -> Rollout:
    """`n` responses to each raw prompt under its row of weights: conditioned here, drawn by the sampler. Every
    caller that starts from user or data-set text (the trainer, evaluation, `meal generate`, the playground)
    samples through this."""
    rows = weight_rows(weights, len(prompts))
    return sampler.sample(conditioned_prompts(policy, prompts, rows), rows, n, sampling, seed)


def prompt_token_ids(policy: Policy, prompts: Sequence[PromptInput]) -> list[list[int]]:
    """Token ids of each prompt: text is tokenised as the policy does it (no special tokens added, left-truncated
    to `model.max_prompt_tokens`); ids are taken as they are."""
    return [policy.encode_prompt(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]


def sampling_inputs(
    policy: Policy, prompts: Sequence[PromptInput], weights: ArrayLike, n: int
) -> tuple[np.ndarray, list[list[int]]]:
    """What every backend's `sample` starts from: (weight rows, prompt token ids), checked."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return weight_rows(weights, len(prompts)), prompt_token_ids(policy, prompts)


def weight_rows(weights: ArrayLike, rows: int) -> np.ndarray:
    """(rows, K) float64, checked against the number of prompts."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if len(w) != rows:
        raise ValueError(f"{rows} prompts but {len(w)} weight vectors")
    return w


def finish_reason(token_ids: Sequence[int], eos_token_id: int) -> FinishReason:
    return "stop" if token_ids and token_ids[-1] == eos_token_id else "length"


def row_seed(seed: int, row: int) -> int:
    """The seed of one prompt's request: a function of the call's seed and the row alone, so that a prompt samples
    the same whatever else is in the batch, and rows do not share a stream."""
    return int(np.random.SeedSequence([seed, row]).generate_state(1)[0])


def decode(policy: Policy, token_ids: Sequence[Sequence[int]]) -> list[str]:
    texts = policy.tokenizer.batch_decode([list(t) for t in token_ids], skip_special_tokens=True)
    return [str(t).strip() for t in texts]


def group(items: Sequence[Completion], n: int) -> list[list[Completion]]:
    return [list(items[i : i + n]) for i in range(0, len(items), n)]
