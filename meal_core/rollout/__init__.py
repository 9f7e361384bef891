"""One sampling path with two backends: Hugging Face `generate` (`HFSampler`) and vLLM (`VLLMSampler`).

    sampler = build_sampler(policy, "vllm", VLLMOptions.for_run(config))
    prompts = [policy.prompt_text(p, w) for p, w in zip(raw_prompts, weights)]   # chat template + tag
    rollout = sampler.sample(prompts, weights, n=6, sampling=Sampling.of(config.algorithm), seed=step)
    rollout.completions[i][j].token_ids / .text / .finish_reason

Importing this package never imports vLLM; only building a `VLLMSampler` does.
"""

from __future__ import annotations

from typing import Literal

from meal_core.policy import Policy
from meal_core.rollout.base import Completion, FinishReason, PromptInput, Rollout, Sampler, row_seed
from meal_core.rollout.hf import HFSampler
from meal_core.rollout.vllm_backend import VLLMOptions, VLLMSampler, VLLMUnavailable, vllm_available

__all__ = [
    "Completion",
    "FinishReason",
    "HFSampler",
    "PromptInput",
    "Rollout",
    "Sampler",
    "VLLMOptions",
    "VLLMSampler",
    "VLLMUnavailable",
    "build_sampler",
    "row_seed",
    "vllm_available",
]


def build_sampler(policy: Policy, backend: Literal["hf", "vllm"] = "hf", options: VLLMOptions | None = None) -> Sampler:
    """The sampler `model.rollout` names."""
    if backend == "hf":
        return HFSampler(policy)
    if backend == "vllm":
        return VLLMSampler(policy, options)
    raise ValueError(f"model.rollout: unknown backend {backend!r}; expected 'hf' or 'vllm'")
