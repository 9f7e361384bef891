"""Helpers the tests share: tiny models built on the spot and run configs that train in seconds. Nothing is
downloaded. (Fixtures live in conftest.py; helpers are imported from here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meal_core.config import RunConfig, parse_config
from meal_core.data import load_prompts

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(directory: Path) -> Any:
    """A byte-level BPE tokenizer trained on the shipped prompts, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [p.text for p in load_prompts("builtin:train")] + [p.text for p in load_prompts("builtin:eval")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def tiny_llama_config(tokenizer: Any, **extra: Any) -> Any:
    """A two-layer, 32-wide Llama config over `tokenizer`: small enough to train in a test."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **extra,
    )


def build_tiny_causal_lm(directory: Path, seed: int = 0, **config: Any) -> Path:
    """`config` overrides the Llama config, e.g. initializer_range: the default 0.02 gives a near-uniform next-token
    distribution that attention adapters alone can hardly sharpen (the final norm bounds the logits)."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(directory)
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, tie_word_embeddings=True, **config)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def tiny_run_config(model_dir: Path, **overrides: Any) -> RunConfig:
    """A whole run that takes seconds on a CPU: cheap objectives, few prompts, short responses."""
    data: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "lora": {"r": 4, "alpha": 8},
        "objectives": [{"name": "positivity", "type": "sentiment"}, {"name": "readability", "type": "readability"}],
        "data": {"prompts_per_iteration": 4, "max_train_prompts": 12},
        "algorithm": {
            "samples_per_prompt": 3,
            "max_new_tokens": 12,
            "calibration_prompts": 4,
            "policy_lr": 5e-3,
            "micro_batch_size": 4,
            "max_policy_steps": 3,
            "weight_lr": 1.0,
            "meta_lr": 1e-2,
            # The tiny model writes byte soup: the degeneracy guard would reject all of it.
            "max_repeated_ngram_share": 1.0,
            "max_unknown_word_share": 1.0,
        },
        "eval": {"every": 2, "prompts": 2, "grid_points": 3, "probe_pairs": 3},
        "checkpoint": {"every": 2, "keep_last": 3},
        "iterations": 4,
        "seed": 7,
    }
    for dotted, value in overrides.items():
        *path, leaf = dotted.split("__")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(data)


def randomize_lora(policy: Any, seed: int) -> None:
    """LoRA B starts at zero (a no-op adapter); random values in every adapter weight make each adapter (each
    expert) change the model's output, and differently."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


# -- a synthetic pair of objectives for the tiny model ---------------------------------------------------------------
# Used as `python` objectives ("helpers:letters"). The tiny model's byte-level vocabulary holds letter tokens and
# symbol tokens; with a fixed token budget every letter is room not given to a symbol, so the pair conflicts
# strongly, and a tiny model can learn either side within seconds.


def letters(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(sum(c.isascii() and c.isalpha() for c in r)) for r in responses]


def symbols(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(sum(not (c.isascii() and c.isalpha()) and not c.isspace() for c in r)) for r in responses]


SYNTHETIC_OBJECTIVES = [
    {"name": "letters", "type": "python", "function": "helpers:letters"},
    {"name": "symbols", "type": "python", "function": "helpers:symbols"},
]
