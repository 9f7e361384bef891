"""One sampling path with two backends: Hugging Face `generate` (`HFSampler`) and vLLM (`VLLMSampler`).

    sampler = sampler_for(policy, config)                    # model.rollout: hf | vllm
    rollout = sample_prompts(sampler, policy, raw_prompts, weights, n=6, sampling=Sampling.of(config.algorithm),
                             seed=step)                       # chat template + tag: Policy.prompt_text
    rollout.completions[i][j].token_ids / .text / .finish_reason

Importing this package never imports vLLM; only building a `VLLMSampler` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from meal_core.policy import Policy
from meal_core.rollout.base import (
    Completion,
    FinishReason,
    PromptInput,
    Rollout,
    Sampler,
    conditioned_prompts,
    row_seed,
    sample_prompts,
)
from meal_core.rollout.hf import HFSampler
from meal_core.rollout.vllm_backend import VLLMOptions, VLLMSampler, VLLMUnavailable, vllm_available

if TYPE_CHECKING:
    from meal_core.config import RunConfig

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
    "conditioned_prompts",
    "row_seed",
    "sample_prompts",
    "sampler_for",
    "vllm_available",
]


def build_sampler(policy: Policy, backend: Literal["hf", "vllm"] = "hf", options: VLLMOptions | None = None) -> Sampler:
    """The sampler `model.rollout` names."""
    if backend == "hf":
        return HFSampler(policy)
    if backend == "vllm":
        return VLLMSampler(policy, options)
    raise ValueError(f"model.rollout: unknown backend {backend!r}; expected 'hf' or 'vllm'")


def sampler_for(policy: Policy, config: RunConfig, **engine: Any) -> Sampler:
    """The sampler a run's `model.rollout` names, its vLLM engine (if any) sized from the run's config;
    `engine` overrides `VLLMOptions` fields (e.g. a longer max_model_len for the playground's limits)."""
    backend = config.model.rollout
    return build_sampler(policy, backend, VLLMOptions.for_run(config, **engine) if backend == "vllm" else None)
