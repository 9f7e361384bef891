"""Steering mechanisms on tiny models: experts mixed per row, the pairwise loss, adapters on disk, and the default
recipe learning to follow the weights on a synthetic pair of objectives. Each test fails if its mechanism breaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SYNTHETIC_OBJECTIVES, build_tiny_causal_lm, randomize_lora, tiny_run_config

from meal_core.config import AlgorithmConfig, LoraConfig, ModelConfig
from meal_core.policy import MIXING_FILE, Policy, Sampling, expert_adapter
from meal_core.recorder import JsonlRecorder, read_jsonl
from meal_core.trainer import CORNER, Trainer, label_advantage_correlation

NAMES = ["letters", "symbols"]
PROMPTS = ["How do I cook rice?", "Why is the sky blue?", "Name a fruit.", "Explain photosynthesis in simple words."]
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def expressive_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose logits adapters can move: wider initial weights than the default near-uniform model."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("expressive-lm"), initializer_range=0.3)


def _policy(model_dir: Path, conditioning: str = "experts", shared: bool = False) -> Policy:
    return Policy(
        ModelConfig(name_or_path=str(model_dir), device="cpu", conditioning=conditioning),
        LoraConfig(r=4, alpha=8, shared=shared),
        NAMES,
    )


def _last_logits(policy: Policy, prompts: list[str], weights: np.ndarray) -> torch.Tensor:
    """Next-token logits after each prompt under its weights, in one left-padded batch."""
    policy.model.eval()
    texts = [policy.prompt_text(p, w) for p, w in zip(prompts, weights, strict=True)]
    ids, mask = policy._left_padded([policy.encode_prompt(t) for t in texts])
    with torch.no_grad(), policy.conditioned_on(weights):
        return policy.model(input_ids=ids, attention_mask=mask).logits[:, -1]


# -- experts: per-row mixing -------------------------------------------------------------------------------------


def test_experts_policy_has_one_trainable_adapter_per_objective(tiny_model_dir: Path) -> None:
    policy = _policy(tiny_model_dir)
    assert policy.adapters == [expert_adapter(n) for n in NAMES]
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    for adapter in policy.adapters:
        assert any(f".{adapter}." in n for n in trainable), adapter
    assert all("lora_" in n for n in trainable)
    with_shared = _policy(tiny_model_dir, shared=True)
    assert with_shared.adapters == ["shared", *policy.adapters]
    # Experts read no tag: the prompt is the plain chat-formatted question.
    assert "<pref" not in policy.prompt_text("Hi", [0.3, 0.7])
    assert "<pref letters=0.30 symbols=0.70>" in _policy(tiny_model_dir, "tag+experts").prompt_text("Hi", [0.3, 0.7])


def test_each_row_gets_its_own_mixture_in_one_batch(tiny_model_dir: Path) -> None:
    """A batch that mixes the experts differently per row equals each row computed alone, and equals a model whose
    weights hold that row's mixture merged in by hand: Δ(w) = Σ_k w_k · scale · B_k A_k."""
    from transformers import AutoModelForCausalLM

    policy = _policy(tiny_model_dir)
    randomize_lora(policy, seed=1)
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.5, 0.5]])
    prompts = [PROMPTS[0]] * 4
    together = _last_logits(policy, prompts, weights)
    for row in range(4):
        alone = _last_logits(policy, prompts[row : row + 1], weights[row : row + 1])
        torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=1e-5)
    # The same prompt under different weights gives different outputs: the rows really are mixed differently.
    assert not torch.allclose(together[0], together[1], atol=1e-3)

    merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name, module in policy.model.named_modules():
            if not hasattr(module, "lora_A") or expert_adapter(NAMES[0]) not in module.lora_A:
                continue
            target = modules[name.removeprefix("base_model.model.")]
            for k, objective in enumerate(NAMES):
                adapter = expert_adapter(objective)
                delta = module.lora_B[adapter].weight @ module.lora_A[adapter].weight
                target.weight += weights[2, k] * module.scaling[adapter] * delta
    merged.eval()
    ids = torch.tensor([policy.encode_prompt(policy.prompt_text(prompts[2], weights[2]))])
    with torch.no_grad():
        expected = merged(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(together[2], expected, atol=1e-4, rtol=1e-4)


def test_generation_mixes_per_row_with_several_samples_each(tiny_model_dir: Path) -> None:
    policy = _policy(tiny_model_dir)
    randomize_lora(policy, seed=2)
    greedy = Sampling(max_new_tokens=8, do_sample=False)
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    batch = policy.generate([PROMPTS[1]] * 3, weights, 2, greedy)
    for row in range(3):
        alone = policy.generate([PROMPTS[1]], weights[row : row + 1], 1, greedy)
        assert batch.token_ids[row] == [alone.token_ids[0][0]] * 2
    assert batch.token_ids[0] != batch.token_ids[1]
    # Sampling expands each row into M sequences: the mixture follows its row.
    torch.manual_seed(0)
    sampled = policy.generate([PROMPTS[1]] * 2, weights[:2], 3, Sampling(max_new_tokens=6))
    assert [len(group) for group in sampled.token_ids] == [3, 3]


def test_a_forward_pass_without_weights_is_refused(tiny_model_dir: Path) -> None:
    policy = _policy(tiny_model_dir)
    ids = torch.tensor([policy.encode_prompt("Hi")])
    with pytest.raises(RuntimeError, match="without mixing weights"):
        policy.model(input_ids=ids)


def test_a_corner_sample_trains_only_its_own_expert(tiny_model_dir: Path) -> None:
    policy = _policy(tiny_model_dir, shared=True)
    response = policy.encode_response("Rinse the rice first.")
    loss = policy.sft_loss([PROMPTS[0]], np.array([[1.0, 0.0]]), [response])
    loss.backward()
    grads = {name: p.grad for name, p in policy.model.named_parameters() if "lora_B" in name}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".expert_letters." in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".shared." in n)
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if ".expert_symbols." in n)


# -- the pairwise loss -----------------------------------------------------------------------------------------------


def test_pairwise_loss_starts_at_ln2_and_learns_the_preference_under_each_weight(tiny_model_dir: Path) -> None:
    policy = _policy(tiny_model_dir)
    a, b = policy.encode_response("Rinse the rice first."), policy.encode_response("Plants use light.")
    prompts = [PROMPTS[0], PROMPTS[0]]
    weights = np.array([[1.0, 0.0], [0.0, 1.0]])
    # a over b under e_letters, b over a under e_symbols: the order flips with the weight.
    chosen, rejected = [a, b], [b, a]
    loss, margin = policy.pairwise_loss(prompts, weights, chosen, rejected, beta=0.1)
    # B = 0 at the start: the policy is the reference, every margin is 0, the loss is ln 2.
    assert loss.item() == pytest.approx(np.log(2), abs=1e-6)
    assert margin.item() == pytest.approx(0.0, abs=1e-4)

    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    for _ in range(15):
        loss, _ = policy.pairwise_loss(prompts, weights, chosen, rejected, beta=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < np.log(2) - 0.05

    def preference(w: np.ndarray) -> float:
        """log π(a|w) − log π(b|w) relative to the reference: > 0 means a is preferred under w."""
        mine = policy.score_logprobs(prompts, np.stack([w, w]), [a, b])
        reference = policy.reference_logprobs(prompts, np.stack([w, w]), [a, b]).tolist()
        return (mine[0] - reference[0]) - (mine[1] - reference[1])

    assert preference(weights[0]) > 0.5
    assert preference(weights[1]) < -0.5


# -- adapters on disk ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conditioning", "shared"), [("experts", False), ("experts", True), ("tag+experts", False)])
def test_save_load_gives_identical_logits(
    tiny_model_dir: Path, tmp_path: Path, conditioning: str, shared: bool
) -> None:
    trained = _policy(tiny_model_dir, conditioning, shared)
    randomize_lora(trained, seed=3)
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    prompts = PROMPTS[:3]
    expected = _last_logits(trained, prompts, weights)
    trained.save_adapter(tmp_path / "adapter")
    rule = json.loads((tmp_path / "adapter" / MIXING_FILE).read_text())
    assert rule["adapters"] == trained.adapters and rule["objectives"] == NAMES
    assert rule["conditioning"] == conditioning

    fresh = _policy(tiny_model_dir, conditioning, shared)
    assert not torch.allclose(_last_logits(fresh, prompts, weights), expected, atol=1e-3)
    fresh.load_adapter(tmp_path / "adapter")
    torch.testing.assert_close(_last_logits(fresh, prompts, weights), expected, atol=1e-6, rtol=1e-6)


def test_saved_experts_are_plain_peft_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Any peft user loads an expert with PeftModel.from_pretrained; at w = e_k the policy is that expert alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trained = _policy(tiny_model_dir)
    randomize_lora(trained, seed=4)
    trained.save_adapter(tmp_path / "adapter")
    corner = np.array([[0.0, 1.0]])
    expected = _last_logits(trained, PROMPTS[:1], corner)[0]
    folder = tmp_path / "adapter" / expert_adapter("symbols")
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
    ids = torch.tensor([trained.encode_prompt(trained.prompt_text(PROMPTS[0], corner[0]))])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits[0, -1], expected, atol=1e-5, rtol=1e-5)


def test_loading_adapters_of_another_layout_names_both(tiny_model_dir: Path, tmp_path: Path) -> None:
    from meal_core.policy import ModelLoadError

    _policy(tiny_model_dir, shared=True).save_adapter(tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match=r"adapters \['shared', 'expert_letters', 'expert_symbols'\] were saved"):
        _policy(tiny_model_dir).load_adapter(tmp_path / "adapter")


# -- the loop --------------------------------------------------------------------------------------------------------


def test_corner_rows_train_their_own_expert_on_their_own_best(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_run_config(
        tiny_model_dir, objectives=SYNTHETIC_OBJECTIVES, data__prompts_per_iteration=4, algorithm__corner_share=0.5
    )
    trainer = Trainer(config, tmp_path)
    trainer.calibrate()
    batch = trainer.propose()
    assert batch.kinds[:2] == [CORNER, CORNER]
    assert {tuple(batch.weights[0]), tuple(batch.weights[1])} == {(1.0, 0.0), (0.0, 1.0)}
    scores = trainer.score(trainer.generate(batch), batch)
    accepted = trainer.reject(batch, scores)
    trainer.hindsight(batch, scores, accepted)
    m = config.algorithm.samples_per_prompt
    for a in accepted:
        if a.group < 2:
            assert a.kind == CORNER and np.array_equal(a.refined, batch.weights[a.group])
            k = int(np.argmax(batch.weights[a.group]))
            group = scores.relative[a.group * m : (a.group + 1) * m, k]
            assert scores.relative[a.candidate, k] == group[scores.valid[a.group * m : (a.group + 1) * m]].max()
    # The next batch starts its corners where this one stopped: every objective gets its share.
    assert trainer.propose().kinds[:2] == [CORNER, CORNER]


def test_corner_labelling_labels_every_group_for_every_corner(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_run_config(
        tiny_model_dir,
        objectives=SYNTHETIC_OBJECTIVES,
        algorithm__labels="corners",
        algorithm__corner_share=0.0,
        algorithm__extra_labels_per_group=0,
    )
    trainer = Trainer(config, tmp_path)
    trainer.calibrate()
    batch = trainer.propose()
    scores = trainer.score(trainer.generate(batch), batch)
    accepted = trainer.reject(batch, scores)
    trainer.hindsight(batch, scores, accepted)
    for g in range(len(batch.prompts)):
        labels = [tuple(a.refined) for a in accepted if a.group == g and a.kind == CORNER]
        assert sorted(labels) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    correlation = label_advantage_correlation(trainer.names, scores, accepted)
    assert set(correlation) == {f"train/label_advantage_corr/{n}" for n in NAMES}
    # Corner labels go to the response that won on that corner: the labels carry the weight.
    assert all(v > 0.3 for v in correlation.values())


def test_pairwise_base_loss_trains_on_pairs_that_flip_between_corners(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_run_config(
        tiny_model_dir, objectives=SYNTHETIC_OBJECTIVES, algorithm__base_loss="pairwise", iterations=2
    )
    trainer = Trainer(config, tmp_path, JsonlRecorder(tmp_path))
    assert trainer.train() == "succeeded"
    assert trainer.pair_replay, "groups whose best responses differ per corner give pairs"
    for pair in trainer.pair_replay:
        assert pair.weights in ([1.0, 0.0], [0.0, 1.0]) and pair.chosen_ids != pair.rejected_ids
    keys = {row["key"] for row in read_jsonl(tmp_path / "metrics.jsonl")}
    assert {"loss/pairwise", "train/pairwise_margin"} <= keys
    assert "loss/sft" not in keys  # pairwise alone: no SFT part to report


def test_the_default_recipe_learns_to_follow_the_weights(expressive_model_dir: Path, tmp_path: Path) -> None:
    """On a synthetic pair (letters vs symbols), 40 iterations of the default recipe (experts, corner rows, own
    labels, SFT + pairwise) make sampled rewards follow the asked weights: far beyond what a weight-blind policy
    reaches."""
    config = tiny_run_config(
        expressive_model_dir,
        algorithm__base_loss=AlgorithmConfig().base_loss,  # tiny_run_config pins sft
        objectives=SYNTHETIC_OBJECTIVES,
        iterations=40,
        data__prompts_per_iteration=8,
        algorithm__samples_per_prompt=6,
        algorithm__micro_batch_size=8,
        algorithm__policy_lr=0.02,
        lora__target_modules=ALL_MODULES,
        eval__every=0,
        eval__at_start=False,
        checkpoint__every=0,
    )
    defaults = type(config.algorithm)()
    assert (config.model.conditioning, config.algorithm.labels, config.algorithm.base_loss) == (
        type(config.model)().conditioning,
        defaults.labels,
        defaults.base_loss,
    )
    assert config.algorithm.corner_share == defaults.corner_share
    trainer = Trainer(config, tmp_path)
    before = trainer.policy.generate(PROMPTS, np.tile([1.0, 0.0], (4, 1)), 2, Sampling(max_new_tokens=12))
    assert before.new_tokens > 0
    trainer.train()
    result = trainer.evaluation(trainer.eval_prompts[:8], 4, step=999)
    for name in NAMES:
        assert result.controllability[name] > result.controllability_null[name] + 0.2, result.controllability
        assert result.controllability_grid[name] == 1.0
    letters_at = {tuple(p.weights): p.raw_rewards[0] for p in result.points}
    assert letters_at[(1.0, 0.0)] > 2 * letters_at[(0.0, 1.0)]
