"""meal_core.rollout without vLLM: the HF sampler, the mixed adapters any peft reader can load, engine sizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEST_DEVICE, randomize_lora, tiny_run_config

from meal_core.config import LoraConfig, ModelConfig
from meal_core.policy import Policy, Sampling
from meal_core.rollout import HFSampler, VLLMOptions, build_sampler, row_seed
from meal_core.rollout.adapters import mixed_rank, mixing_coefficients, mixing_key, write_mixed_adapter
from meal_core.rollout.vllm_backend import (
    EngineKey,
    MiB,
    VLLMUnavailable,
    cpu_kv_cache_bytes,
    engine_arguments,
    lora_rank_limit,
)

NAMES = ["positivity", "readability"]
QUESTIONS = ["Hi", "How do I cook rice so it comes out fluffy instead of sticky?", "Why drink water?"]
WEIGHTS = np.array([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]])


def _policy(model_dir: Path, conditioning: str = "experts", shared: bool = True) -> Policy:
    config = ModelConfig(name_or_path=str(model_dir), device=TEST_DEVICE, conditioning=conditioning)  # type: ignore[arg-type]
    policy = Policy(config, LoraConfig(r=4, alpha=16, shared=shared), NAMES)
    randomize_lora(policy, seed=1)
    return policy


@pytest.fixture(scope="module")
def experts(tiny_model_dir: Path) -> Policy:
    return _policy(tiny_model_dir)


def test_a_mixed_adapter_is_the_row_mixed_experts_for_any_peft_reader(
    experts: Policy, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([experts.encode_prompt(experts.prompt_text(QUESTIONS[1], WEIGHTS[1]))])
    experts.model.eval()
    for row, weights in enumerate(WEIGHTS):
        folder = write_mixed_adapter(experts, mixing_coefficients(experts, weights)[0], tmp_path / f"w{row}")
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        mixed = PeftModel.from_pretrained(base, str(folder)).eval()
        with torch.no_grad(), experts.conditioned_on(weights):
            expected = experts.model(input_ids=ids).logits
        with torch.no_grad():
            got = mixed(input_ids=ids).logits
        # fp32, summed in another order (one rank-12 product instead of three rank-4 ones): measured ≤ 1.8e-5.
        assert torch.allclose(got, expected, atol=1e-4), (weights, (got - expected).abs().max())
    # Shared adapter + two experts of rank 4: one adapter of rank 12, alpha = rank (scaling 1, folded into B).
    assert mixed_rank(experts) == 12
    assert '"lora_alpha": 12' in (tmp_path / "w0" / "adapter_config.json").read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_rows_that_mix_alike_share_a_key_and_a_tag_policy_has_one(tiny_model_dir: Path) -> None:
    experts = _policy(tiny_model_dir, shared=False)
    grid = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [2.0, 2.0]])  # the last is (0.5, 0.5) unnormalised
    keys = [mixing_key(c) for c in mixing_coefficients(experts, grid)]
    assert keys[0] == keys[2] and keys[1] == keys[3] and keys[0] != keys[1]
    tag = _policy(tiny_model_dir, conditioning="tag", shared=False)
    assert {mixing_key(c) for c in mixing_coefficients(tag, grid)} == {(1.0,)}


def test_hf_sampler_is_seeded_and_says_why_each_response_ended(experts: Policy) -> None:
    sampler = build_sampler(experts, "hf")
    assert isinstance(sampler, HFSampler)
    prompts = [experts.prompt_text(q, w) for q, w in zip(QUESTIONS, WEIGHTS, strict=True)]
    sampling = Sampling(max_new_tokens=10, temperature=1.0)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    first = sampler.sample(prompts, WEIGHTS, 3, sampling, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state), "the global stream is left as it was"
    assert first.token_ids() == sampler.sample(prompts, WEIGHTS, 3, sampling, seed=5).token_ids()
    assert first.token_ids() != sampler.sample(prompts, WEIGHTS, 3, sampling, seed=6).token_ids()
    eos = experts.tokenizer.eos_token_id
    for group in first.completions:
        assert len(group) == 3
        for c in group:
            assert c.finish_reason == ("stop" if c.token_ids[-1] == eos else "length")
            assert c.finish_reason == "stop" or len(c.token_ids) == 10
    # Token ids in, the same responses out; and the Policy.generate shape for callers not moved yet.
    ids = [experts.encode_prompt(p) for p in prompts]
    assert sampler.sample(ids, WEIGHTS, 3, sampling, seed=5).token_ids() == first.token_ids()
    generation = first.as_generation()
    assert generation.token_ids == first.token_ids() and generation.new_tokens == first.new_tokens


def test_hf_sampler_greedy_matches_policy_generate(experts: Policy) -> None:
    greedy = Sampling(max_new_tokens=8, do_sample=False)
    prompts = [experts.prompt_text(q, w) for q, w in zip(QUESTIONS, WEIGHTS, strict=True)]
    rollout = HFSampler(experts).sample(prompts, WEIGHTS, 2, greedy, seed=0)
    expected = experts.generate(QUESTIONS, WEIGHTS, 2, greedy)
    assert rollout.token_ids() == expected.token_ids
    assert rollout.texts() == expected.texts


def test_hf_token_logprobs_sum_to_the_policy_completion_logprobs(experts: Policy) -> None:
    responses = [experts.encode_response(text) for text in ("yes", "a longer answer here", "no")]
    prompts = [experts.prompt_text(q, w) for q, w in zip(QUESTIONS, WEIGHTS, strict=True)]
    per_token = HFSampler(experts).token_logprobs(prompts, WEIGHTS, responses)
    assert [len(t) for t in per_token] == [len(r) for r in responses]
    experts.model.eval()
    expected = experts.score_logprobs(QUESTIONS, WEIGHTS, responses)
    assert np.allclose([t.sum() for t in per_token], expected, atol=1e-4)


def test_sampler_arguments_are_checked(experts: Policy) -> None:
    sampler = HFSampler(experts)
    with pytest.raises(ValueError, match="3 prompts but 2 weight vectors"):
        sampler.sample(QUESTIONS, WEIGHTS[:2], 1, Sampling(max_new_tokens=2), seed=0)
    with pytest.raises(ValueError, match="n must be at least 1"):
        sampler.sample(QUESTIONS, WEIGHTS, 0, Sampling(max_new_tokens=2), seed=0)
    with pytest.raises(ValueError, match="model.rollout"):
        build_sampler(experts, "sglang")  # type: ignore[arg-type]


def test_row_seeds_depend_on_the_call_seed_and_the_row_only() -> None:
    assert row_seed(3, 0) == row_seed(3, 0)
    assert len({row_seed(3, row) for row in range(100)} | {row_seed(4, 0)}) == 101
    assert all(0 <= row_seed(s, r) < 2**32 for s in (0, 2**40) for r in (0, 7))


def test_engine_sizing(tiny_model_dir: Path) -> None:
    assert [lora_rank_limit(r) for r in (1, 8, 12, 16, 24, 48)] == [1, 8, 16, 16, 32, 64]
    with pytest.raises(VLLMUnavailable):
        lora_rank_limit(1024)
    options = VLLMOptions(max_model_len=256, max_num_seqs=100)
    per_token = 1024
    # All sequences fit in a quarter of 1 GiB free: exactly what they need (in whole MiB, at least 64 MiB).
    assert cpu_kv_cache_bytes(options, per_token, free=1 << 30) == 64 * MiB
    big = VLLMOptions(max_model_len=4096, max_num_seqs=256)
    assert cpu_kv_cache_bytes(big, per_token, free=1 << 30) == 256 * MiB  # capped at the share of free memory
    with pytest.raises(VLLMUnavailable, match="at least"):
        cpu_kv_cache_bytes(big, per_token, free=8 * MiB)
    config = tiny_run_config(tiny_model_dir, algorithm__max_new_tokens=40, eval__max_new_tokens=64)
    sized = VLLMOptions.for_run(config, max_loras=4)
    assert sized.max_model_len == config.model.max_prompt_tokens + 64 + 1
    assert sized.max_loras == 4
    assert sized.gpu_memory_utilization == 0.5 and sized.sleep_during_update
    shared = tiny_run_config(tiny_model_dir, model__vllm_gpu_memory_utilization=0.3, model__vllm_sleep=False)
    assert (VLLMOptions.for_run(shared).gpu_memory_utilization, VLLMOptions.for_run(shared).sleep_during_update) == (
        0.3,
        False,
    )


def test_a_gpu_engine_sleeps_through_policy_steps_and_a_cpu_engine_cannot(tiny_model_dir: Path) -> None:
    options = VLLMOptions(max_model_len=256, max_num_seqs=8)
    cuda = EngineKey(str(tiny_model_dir), "bfloat16", "cuda", False, 16, options)
    arguments = engine_arguments(cuda, torch.bfloat16, free_memory=0)
    assert arguments["enable_sleep_mode"] is True and arguments["gpu_memory_utilization"] == 0.5
    assert "kv_cache_memory_bytes" not in arguments  # the device share sizes it
    awake = EngineKey(str(tiny_model_dir), "bfloat16", "cuda", False, 16, VLLMOptions(sleep_during_update=False))
    assert "enable_sleep_mode" not in engine_arguments(awake, torch.bfloat16, free_memory=0)
    cpu = EngineKey(str(tiny_model_dir), "float32", "cpu", False, 16, options)
    arguments = engine_arguments(cpu, torch.float32, free_memory=1 << 30)
    assert "enable_sleep_mode" not in arguments and arguments["kv_cache_memory_bytes"] >= 64 * MiB
    # An engine serves a sampler that asks for no more than it has (shorter sequences, lower ranks), nothing else.
    assert cuda.serves(EngineKey(str(tiny_model_dir), "bfloat16", "cuda", False, 8, VLLMOptions(max_model_len=128)))
    assert not cuda.serves(EngineKey(str(tiny_model_dir), "bfloat16", "cuda", False, 32, options))
    assert not cuda.serves(
        EngineKey(str(tiny_model_dir), "bfloat16", "cuda", False, 16, VLLMOptions(max_model_len=512))
    )
    assert not cuda.serves(cpu)


def test_the_trainer_takes_policy_steps_while_the_sampler_has_released_its_memory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every optimizer step of an iteration falls inside `Sampler.released()` (where vLLM sleeps on GPUs), and no
    sampling does."""
    from contextlib import contextmanager

    from meal_core.recorder import NullRecorder
    from meal_core.trainer import Trainer

    trainer = Trainer(tiny_run_config(tiny_model_dir), tmp_path / "run", NullRecorder())
    events: list[str] = []
    sampler = trainer.sampler
    sample = sampler.sample

    @contextmanager
    def released():  # type: ignore[no-untyped-def]
        events.append("release")
        yield
        events.append("take back")

    def sampling(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("sample")
        return sample(*args, **kwargs)

    step = trainer.policy_optimizer.step

    def stepping(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("step")
        return step(*args, **kwargs)

    sampler.released, sampler.sample = released, sampling  # type: ignore[method-assign]
    trainer.policy_optimizer.step = stepping  # type: ignore[method-assign]
    trainer.calibrate()
    events.clear()
    trainer.run_iteration()
    assert events[0] == "sample" and "step" in events
    inside = events[events.index("release") : events.index("take back")]
    assert "sample" not in inside and inside.count("step") == events.count("step")
