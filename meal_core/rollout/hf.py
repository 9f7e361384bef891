"""The Hugging Face backend: today's `Policy.generate`, behind the `Sampler` interface."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.nn.utils.rnn import pad_sequence

from meal_core.policy import Policy, Sampling
from meal_core.rollout.base import (
    Completion,
    PromptInput,
    Rollout,
    decode,
    finish_reason,
    group,
    prompt_token_ids,
    sampling_inputs,
    weight_rows,
)


class HFSampler:
    """Samples with the training model itself: one batched, left-padded `generate` call, experts mixed per row.

    Nothing to synchronise: the sampler reads the policy's live parameters. The seed seeds a torch stream of the
    call's own (the global stream is left as it was); unlike vLLM's per-request seeds, a prompt's samples here also
    depend on what else is in the batch.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def released(self) -> AbstractContextManager[None]:
        return nullcontext()  # the sampler is the training model: nothing of its own to free

    def sample(
        self, prompts: Sequence[PromptInput], weights: ArrayLike, n: int, sampling: Sampling, seed: int
    ) -> Rollout:
        rows, ids = sampling_inputs(self.policy, prompts, weights, n)
        device = self.policy.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            generation = self.policy.generate_ids(ids, rows, n, sampling)
        flat = [t for sampled in generation.token_ids for t in sampled]
        eos = self.policy.tokenizer.eos_token_id
        completions = [
            Completion(token_ids=t, text=text, finish_reason=finish_reason(t, eos))
            for t, text in zip(flat, decode(self.policy, flat), strict=True)
        ]
        return Rollout(group(completions, n))

    @torch.no_grad()
    def token_logprobs(
        self, prompts: Sequence[PromptInput], weights: ArrayLike, responses: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        policy = self.policy
        policy.model.eval()
        rows = weight_rows(weights, len(prompts))
        ids = prompt_token_ids(policy, prompts)
        sequences = [torch.tensor(p + list(r)) for p, r in zip(ids, responses, strict=True)]
        batch = pad_sequence(sequences, batch_first=True, padding_value=policy.tokenizer.pad_token_id)
        mask = pad_sequence([torch.ones(len(s), dtype=torch.long) for s in sequences], batch_first=True)
        with policy.conditioned_on(rows):
            logits = policy.model(input_ids=batch.to(policy.device), attention_mask=mask.to(policy.device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = []
        for row, (prompt, response) in enumerate(zip(ids, responses, strict=True)):
            # The token at position t is predicted by the logits at t − 1.
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
            out.append(logprobs[row, positions, torch.tensor(list(response), dtype=torch.long)].double().numpy())
        return out
