"""meal_core.policy: loading, batched generation, completion-only likelihood, prompt embeddings, adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEST_DEVICE, randomize_lora

from meal_core.config import LoraConfig, ModelConfig
from meal_core.policy import Generation, ModelLoadError, Policy, Sampling, resolve_device, resolve_model_path

NAMES = ["positivity", "readability"]
QUESTIONS = [
    "Hi",
    "How do I cook rice so it comes out fluffy instead of sticky?",
    "Explain how photosynthesis works in simple words, with an everyday example that a child would understand.",
    "Why is drinking enough water important for the body?",
]


WEIGHTS = np.array([[0.3, 0.7], [1.0, 0.0], [0.5, 0.5], [0.05, 0.95]])


def _policy(model_dir: Path, **model_options: object) -> Policy:
    """The text-tag policy: one adapter reads the weights from the prompt (experts: tests/test_steering.py)."""
    options = {"conditioning": "tag", **model_options}
    config = ModelConfig(name_or_path=str(model_dir), device=TEST_DEVICE, **options)
    return Policy(config, LoraConfig(r=4, alpha=8), NAMES)


def _logits(policy: Policy, prompt: str, weights: np.ndarray = WEIGHTS[0]) -> torch.Tensor:
    ids = torch.tensor([policy.encode_prompt(policy.prompt_text(prompt, weights))])
    policy.model.eval()
    with torch.no_grad():
        return policy.model(input_ids=ids).logits[0]


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> Policy:
    """Shared, never modified: tests that change weights build their own."""
    return _policy(tiny_model_dir)


@pytest.fixture(scope="module")
def lively(tiny_model_dir: Path) -> Policy:
    """Random adapter weights: greedy continuations then depend on the prompt (the bare tiny model repeats one
    token whatever it is given, which would make comparisons of generations trivially true)."""
    policy = _policy(tiny_model_dir)
    randomize_lora(policy, seed=5)
    return policy


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return list(QUESTIONS)


def greedy(tokens: int) -> Sampling:
    return Sampling(max_new_tokens=tokens, do_sample=False)


# -- loading -----------------------------------------------------------------------------------------------------


def test_loads_by_path_with_lora_only_trainable(policy: Policy) -> None:
    assert policy.device == torch.device("cpu")
    assert policy.tokenizer.padding_side == "left"
    assert policy.tokenizer.eos_token == "<|im_end|>"
    named = dict(policy.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable, "the adapter must have trainable parameters"
    assert all("lora_" in n for n in trainable)
    # r=4 adapters on q, k, v, o of both layers: A and B each.
    assert len(trainable) == 2 * 4 * 2
    assert len(policy.trainable_parameters()) == len(trainable)
    assert all(p.device.type == "cpu" for p in named.values())


def test_missing_path_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^model\.name_or_path: no such directory") as info:
        _policy(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_folder_without_config_json(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^model\.name_or_path: .* has no config\.json"):
        _policy(tmp_path)


def test_unreachable_hub_id_offline() -> None:
    with pytest.raises(ModelLoadError, match=r"^model\.name_or_path: cannot load 'no-such-org/no-such-model'"):
        Policy(ModelConfig(name_or_path="no-such-org/no-such-model", device="cpu"), LoraConfig(), NAMES)


def test_resolve_model_path_passes_hub_ids_through(tiny_model_dir: Path) -> None:
    assert resolve_model_path("org/model") == "org/model"
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)


def test_bad_lora_target_modules(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^lora\.target_modules: attn_c, nope not found"):
        Policy(
            ModelConfig(name_or_path=str(tiny_model_dir), device=TEST_DEVICE),
            LoraConfig(target_modules=["q_proj", "attn_c", "nope"]),
            NAMES,
        )


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_asked_for_but_absent() -> None:
    with pytest.raises(ModelLoadError, match=r"^model\.device: 'cuda:1'"):
        resolve_device("cuda:1")


# -- text ---------------------------------------------------------------------------------------------------------


def test_encode_prompt_truncates_from_the_left(tiny_model_dir: Path, policy: Policy) -> None:
    text = QUESTIONS[2]
    full = policy.encode_prompt(text)
    assert len(full) > 8
    short = _policy(tiny_model_dir, max_prompt_tokens=8)
    assert short.encode_prompt(text) == full[-8:]


def test_encode_response_appends_eos(policy: Policy) -> None:
    ids = policy.encode_response("Rinse it.")
    assert ids[-1] == policy.tokenizer.eos_token_id
    assert policy.tokenizer.decode(ids[:-1]) == "Rinse it."


# -- generation ---------------------------------------------------------------------------------------------------


def test_batched_greedy_generation_equals_one_at_a_time(lively: Policy, prompts: list[str]) -> None:
    lengths = [len(lively.encode_prompt(lively.prompt_text(p, w))) for p, w in zip(prompts, WEIGHTS, strict=True)]
    assert len(set(lengths)) == len(lengths), "prompts of different lengths exercise left padding"
    batched = lively.generate(prompts, WEIGHTS, 1, greedy(16))
    for i, prompt in enumerate(prompts):
        alone = lively.generate([prompt], WEIGHTS[i : i + 1], 1, greedy(16))
        assert batched.token_ids[i] == alone.token_ids[0], f"prompt {i} (length {lengths[i]})"
        assert batched.texts[i] == alone.texts[0]
    # Different prompts lead somewhere different, and continuations vary: the comparison is not trivially true.
    assert len({tuple(group[0]) for group in batched.token_ids}) == len(prompts)
    assert all(len(set(group[0])) > 3 for group in batched.token_ids)


def test_greedy_with_several_return_sequences_repeats_the_one_decode(lively: Policy, prompts: list[str]) -> None:
    # Regression: transformers refuses num_return_sequences > 1 without sampling (`meal generate --greedy`).
    out = lively.generate(prompts[:3], WEIGHTS[:3], 2, greedy(8))
    single = lively.generate(prompts[:3], WEIGHTS[:3], 1, greedy(8))
    assert len(out.token_ids) == 3
    for group, texts, reference in zip(out.token_ids, out.texts, single.token_ids, strict=True):
        assert group == [reference[0], reference[0]]
        assert texts[0] == texts[1]
    assert out.new_tokens == 2 * single.new_tokens


def test_generate_returns_b_groups_of_m(policy: Policy, prompts: list[str]) -> None:
    torch.manual_seed(0)
    out = policy.generate(prompts[:3], WEIGHTS[:3], 4, Sampling(max_new_tokens=6, temperature=1.5, top_p=1.0))
    assert isinstance(out, Generation)
    assert len(out.texts) == 3 and all(len(group) == 4 for group in out.texts)
    assert len(out.token_ids) == 3 and all(len(group) == 4 for group in out.token_ids)
    assert out.new_tokens == sum(len(ids) for group in out.token_ids for ids in group)
    assert all(1 <= len(ids) <= 6 for group in out.token_ids for ids in group)
    # Sampling at a high temperature from a near-uniform model: the samples of a group differ.
    assert len({tuple(ids) for ids in out.token_ids[1]}) > 1


def _eos_prone_policy(model_dir: Path) -> Policy:
    """A policy whose head adds a bias toward eos: samples stop at varied, early positions."""
    policy = _policy(model_dir)
    base = policy.model.get_base_model()
    old = base.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[policy.tokenizer.eos_token_id] = 5.0  # p(eos) ≈ e^5 / (e^5 + 399) ≈ 0.27 per step
    head.requires_grad_(False)
    base.lm_head = head
    return policy


def test_token_ids_end_at_eos_when_produced(tiny_model_dir: Path, prompts: list[str]) -> None:
    policy = _eos_prone_policy(tiny_model_dir)
    eos, pad = policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id
    torch.manual_seed(3)
    out = policy.generate(prompts, WEIGHTS, 6, Sampling(max_new_tokens=12))
    stopped_early = 0
    for texts, group in zip(out.texts, out.token_ids, strict=True):
        for text, ids in zip(texts, group, strict=True):
            if eos in ids:
                assert ids.index(eos) == len(ids) - 1  # cut right after the first eos
                stopped_early += len(ids) < 12
            else:
                assert len(ids) == 12  # no eos: ran to the limit
            assert pad not in ids
            assert "<|im_end|>" not in text and "<|endoftext|>" not in text
            assert text == policy.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert stopped_early >= 3, "the eos-biased head should stop several samples early"
    assert out.new_tokens < len(prompts) * 6 * 12


def test_min_new_tokens_suppresses_eos(tiny_model_dir: Path, prompts: list[str]) -> None:
    policy = _eos_prone_policy(tiny_model_dir)
    torch.manual_seed(3)
    out = policy.generate(prompts[:2], WEIGHTS[:2], 3, Sampling(max_new_tokens=10, min_new_tokens=10))
    assert all(len(ids) == 10 for group in out.token_ids for ids in group)
    assert out.new_tokens == 2 * 3 * 10


# -- likelihood ---------------------------------------------------------------------------------------------------


def _manual_logprobs(policy: Policy, prompt: str, weights: np.ndarray, response: list[int]) -> tuple[float, int]:
    """Sum of log p(response token | everything before it), computed on the unpadded sequence alone."""
    prompt_ids = policy.encode_prompt(policy.prompt_text(prompt, weights))
    ids = torch.tensor([prompt_ids + response])
    with torch.no_grad():
        logprobs = torch.log_softmax(policy.model(input_ids=ids).logits[0].float(), dim=-1)
    total = 0.0
    for offset, token in enumerate(response):
        position = len(prompt_ids) + offset
        total += logprobs[position - 1, token].item()
    return total, len(response)


def test_sft_loss_counts_only_response_tokens(tiny_model_dir: Path, prompts: list[str]) -> None:
    policy = _policy(tiny_model_dir)
    randomize_lora(policy, seed=1)
    responses = [
        policy.encode_response("Rinse the rice first."),
        policy.encode_response("Plants use light."),
        policy.encode_response("Yes"),
    ]
    batch_prompts = prompts[:3]
    manual = [_manual_logprobs(policy, p, w, r) for p, w, r in zip(batch_prompts, WEIGHTS, responses, strict=False)]
    expected = -sum(t for t, _ in manual) / sum(n for _, n in manual)

    loss = policy.sft_loss(batch_prompts, WEIGHTS[:3], responses)
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    sums, counts = policy.completion_logprobs(batch_prompts, WEIGHTS[:3], responses)
    assert counts.tolist() == [len(r) for r in responses]
    for value, (total, _) in zip(sums.tolist(), manual, strict=True):
        assert value == pytest.approx(total, rel=1e-5)

    # Counting prompt tokens too would give a different number.
    full_ids = torch.tensor([policy.encode_prompt(policy.prompt_text(batch_prompts[0], WEIGHTS[0])) + responses[0]])
    with torch.no_grad():
        everything = policy.model(input_ids=full_ids, labels=full_ids).loss.item()
    assert everything != pytest.approx(-manual[0][0] / manual[0][1], rel=1e-3)


def test_sft_loss_backward_reaches_only_lora(tiny_model_dir: Path, prompts: list[str]) -> None:
    policy = _policy(tiny_model_dir)
    responses = [policy.encode_response("Rinse the rice first."), policy.encode_response("Plants use light.")]
    loss = policy.sft_loss(prompts[:2], WEIGHTS[:2], responses)
    loss.backward()
    lora_b_grads = []
    for name, parameter in policy.model.named_parameters():
        if "lora_" in name:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all()
            if "lora_B" in name:
                lora_b_grads.append(parameter.grad.abs().sum().item())
        else:
            assert parameter.grad is None, name
    assert lora_b_grads and all(g > 0 for g in lora_b_grads)


def test_sft_step_lowers_the_loss(tiny_model_dir: Path, prompts: list[str]) -> None:
    policy = _policy(tiny_model_dir)
    responses = [policy.encode_response("Rinse the rice first.")] * 2
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = policy.sft_loss(prompts[:2], WEIGHTS[:2], responses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_score_logprobs_matches_completion_logprobs_in_any_batch(policy: Policy, prompts: list[str]) -> None:
    responses = [policy.encode_response(t) for t in ("A", "Rinse the rice first.", "Plants use light.", "Yes")]
    one_by_one = policy.score_logprobs(prompts, WEIGHTS, responses, batch_size=1)
    together = policy.score_logprobs(prompts, WEIGHTS, responses, batch_size=16)
    assert together == pytest.approx(one_by_one, rel=1e-5)
    for value, prompt, weights, response in zip(together, prompts, WEIGHTS, responses, strict=True):
        assert value == pytest.approx(_manual_logprobs(policy, prompt, weights, response)[0], rel=1e-5)
    assert all(v < 0 for v in together)


# -- prompt embeddings -------------------------------------------------------------------------------------------


def test_embed_prompts_shape_and_padding_independence(policy: Policy, prompts: list[str]) -> None:
    together = policy.embed_prompts(prompts)
    hidden = policy.model.get_base_model().config.hidden_size
    assert together.shape == (len(prompts), hidden)
    assert together.dtype == torch.float32
    one_by_one = torch.cat([policy.embed_prompts([p]) for p in prompts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[0], together[1])


def test_embed_prompts_ignores_lora(tiny_model_dir: Path, prompts: list[str]) -> None:
    policy = _policy(tiny_model_dir)
    before = policy.embed_prompts(prompts, batch_size=2)
    logits_before = _logits(policy, prompts[1])
    randomize_lora(policy, seed=2)
    # The adapter now changes the model's outputs…
    assert not torch.allclose(_logits(policy, prompts[1]), logits_before, atol=1e-3)
    # …but not the embeddings, which use the base model with adapters off.
    after = policy.embed_prompts(prompts, batch_size=2)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    # The adapter is active again after the embedding.
    assert not torch.allclose(_logits(policy, prompts[1]), logits_before, atol=1e-3)


# -- adapters ----------------------------------------------------------------------------------------------------


def test_save_and_load_adapter_round_trip(tiny_model_dir: Path, tmp_path: Path, prompts: list[str]) -> None:
    trained = _policy(tiny_model_dir)
    randomize_lora(trained, seed=3)
    expected = _logits(trained, prompts[2])
    greedy_ids = trained.generate(prompts[:2], WEIGHTS[:2], 1, greedy(8)).token_ids
    trained.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    fresh = _policy(tiny_model_dir)
    assert not torch.allclose(_logits(fresh, prompts[2]), expected, atol=1e-3)
    fresh.load_adapter(tmp_path / "adapter")
    torch.testing.assert_close(_logits(fresh, prompts[2]), expected, atol=1e-6, rtol=1e-6)
    assert fresh.generate(prompts[:2], WEIGHTS[:2], 1, greedy(8)).token_ids == greedy_ids
    # Still trainable after loading.
    assert all("lora_" in n for n, p in fresh.model.named_parameters() if p.requires_grad)
    assert len(fresh.trainable_parameters()) == len(trained.trainable_parameters())
