"""meal_core.conditioning: the `<pref …>` tag format, its parser, and where the tag lands in a prompt."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meal_core.conditioning import (
    build_prompt,
    conditioned_prompt,
    format_tag,
    parse_tag,
    parse_weight_list,
    quantize_weights,
)

NAMES = ["helpful", "harmless"]

NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ m['role'] }}]{{ m['content'] }}[/{{ m['role'] }}]\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# -- quantisation and the tag ------------------------------------------------------------------------------------


def test_format_tag_exact_text() -> None:
    assert format_tag(NAMES, [0.3, 0.7]) == "<pref helpful=0.30 harmless=0.70>"
    assert format_tag(["a", "b", "c"], [1, 1, 2]) == "<pref a=0.25 b=0.25 c=0.50>"


def test_format_tag_normalises_unnormalised_weights() -> None:
    assert format_tag(NAMES, [3, 7]) == format_tag(NAMES, [0.3, 0.7])


def test_format_tag_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 objectives but 3 weights"):
        format_tag(NAMES, [0.2, 0.3, 0.5])


def test_quantize_residue_goes_to_largest_weight() -> None:
    # Thirds round to 0.33 each (0.99 in total); the missing 0.01 goes to the largest (the first on ties).
    q = quantize_weights([1, 1, 1])
    assert (np.round(q * 100).astype(int) == [34, 33, 33]).all()
    q = quantize_weights([0.2, 0.5, 0.3])
    assert (np.round(q * 100).astype(int) == [20, 50, 30]).all()
    # 1/6, 1/6, 2/3 → 17 + 17 + 67 = 101: the largest gives one unit back.
    q = quantize_weights([1, 1, 4])
    assert (np.round(q * 100).astype(int) == [17, 17, 66]).all()


def test_quantize_clips_negative_and_rejects_zero_sum() -> None:
    assert quantize_weights([-1.0, 1.0]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="positive sum"):
        quantize_weights([0.0, 0.0])
    with pytest.raises(ValueError, match="positive sum"):
        quantize_weights([-1.0, 0.0])


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_round_trip_over_random_simplex_weights(k: int) -> None:
    rng = np.random.default_rng(k)
    names = [f"obj_{i}" for i in range(k)]
    for alpha in (0.1, 1.0, 10.0):
        for w in rng.dirichlet(np.full(k, alpha), size=200):
            tag = format_tag(names, w)
            parsed = parse_tag(tag)
            q = quantize_weights(w)
            assert list(parsed) == names
            assert np.array_equal(np.array(list(parsed.values())), q)
            units = np.round(q * 100).astype(int)
            assert units.sum() == 100, (w, q)
            assert (units >= 0).all()
            assert round(sum(parsed.values()), 2) == 1.0
            # Quantisation moves no weight by more than the rounding step plus the residue it may absorb.
            assert np.abs(q - w).max() <= 0.005 + 0.005 * k + 1e-12
            # The same weight always gives the same tokens, also after a parse/format round trip.
            assert format_tag(names, list(parsed.values())) == tag


def test_parse_tag_finds_first_tag_inside_text() -> None:
    text = "system: <pref a=0.10 b_2=0.90> hello <pref a=0.50 b_2=0.50>"
    assert parse_tag(text) == {"a": 0.1, "b_2": 0.9}


def test_parse_tag_accepts_integers_and_extra_space() -> None:
    assert parse_tag("<pref  a=1 b=0 >") == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize("text", ["no tag here", "<pref>", "<pref a=>", "<pref A=0.5>", "<pref a=-0.5>", "<pre a=1>"])
def test_parse_tag_without_tag_raises(text: str) -> None:
    with pytest.raises(ValueError, match="no <pref"):
        parse_tag(text)


# -- a user's weight list -----------------------------------------------------------------------------------------


def test_parse_weight_list_positional() -> None:
    assert np.allclose(parse_weight_list("0.3,0.7", NAMES), [0.3, 0.7])
    assert np.allclose(parse_weight_list(" 1 , 3 ", NAMES), [0.25, 0.75])
    assert np.allclose(parse_weight_list("0,1", NAMES), [0.0, 1.0])


def test_parse_weight_list_named_in_any_order() -> None:
    assert np.allclose(parse_weight_list("harmless=0.7,helpful=0.3", NAMES), [0.3, 0.7])
    assert np.allclose(parse_weight_list("helpful = 2 , harmless = 2", NAMES), [0.5, 0.5])


def test_parse_weight_list_named_missing_defaults_to_zero() -> None:
    assert np.allclose(parse_weight_list("harmless=1", NAMES), [0.0, 1.0])
    assert np.allclose(parse_weight_list("b=1,c=3", ["a", "b", "c"]), [0.0, 0.25, 0.75])


def test_parse_weight_list_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown objective\(s\) honest; expected "):
        parse_weight_list("helpful=0.5,honest=0.5", NAMES)


@pytest.mark.parametrize("text", ["0.5", "0.2,0.3,0.5", "", " , "])
def test_parse_weight_list_wrong_count(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected 2 weights \(helpful, harmless\)"):
        parse_weight_list(text, NAMES)


def test_parse_weight_list_not_numbers() -> None:
    with pytest.raises(ValueError, match="must be numbers"):
        parse_weight_list("0.5,lots", NAMES)
    with pytest.raises(ValueError, match="must be numbers"):
        parse_weight_list("helpful=x,harmless=1", NAMES)


@pytest.mark.parametrize("text", ["-0.5,1.5", "0,0", "helpful=0,harmless=0"])
def test_parse_weight_list_negative_or_zero_sum(text: str) -> None:
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        parse_weight_list(text, NAMES)


def test_parse_weight_list_mixed_syntax_is_rejected() -> None:
    # One named and one bare part: treated as positional, where "helpful=0.3" is not a number.
    with pytest.raises(ValueError, match="must be numbers"):
        parse_weight_list("helpful=0.3,0.7", NAMES)


# -- building the prompt ----------------------------------------------------------------------------------------


def test_build_prompt_puts_tag_in_system_turn(tokenizer: Any) -> None:
    tag = format_tag(NAMES, [0.3, 0.7])
    text = build_prompt(tokenizer, "How do I cook rice?", tag)
    assert text == (
        f"<|im_start|>system\n{tag}<|im_end|>\n<|im_start|>user\nHow do I cook rice?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert parse_tag(text) == {"helpful": 0.3, "harmless": 0.7}


def test_build_prompt_falls_back_to_user_turn_when_system_role_rejected(tokenizer: Any) -> None:
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(Exception, match="System role not supported"):
        strict.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)
    tag = format_tag(NAMES, [0.9, 0.1])
    text = build_prompt(strict, "Why is the sky blue?", tag)
    assert text == f"[user]{tag}\nWhy is the sky blue?[/user]\n[assistant]"
    assert "[system]" not in text
    assert parse_tag(text) == {"helpful": 0.9, "harmless": 0.1}


def test_build_prompt_without_template(tokenizer: Any) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    tag = "<pref a=0.50 b=0.50>"
    assert build_prompt(plain, "Hi there", tag) == f"{tag}\nHi there\n"


def test_build_prompt_template_switched_off(tokenizer: Any) -> None:
    tag = "<pref a=0.50 b=0.50>"
    text = build_prompt(tokenizer, "Hi there", tag, use_chat_template=False)
    assert text == f"{tag}\nHi there\n"
    assert "<|im_start|>" not in text


def test_build_prompt_with_object_lacking_template_attribute() -> None:
    assert build_prompt(object(), "p", "<pref a=1.00>") == "<pref a=1.00>\np\n"


def test_build_prompt_when_every_template_form_fails(tokenizer: Any) -> None:
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = "{{ raise_exception('nothing works') }}"
    assert build_prompt(broken, "p", "<pref a=1.00>") == "<pref a=1.00>\np\n"


def test_conditioned_prompt_quantises_and_wraps(tokenizer: Any) -> None:
    text = conditioned_prompt(tokenizer, "Tell me a joke.", NAMES, [1, 2])
    assert "<pref helpful=0.33 harmless=0.67>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert conditioned_prompt(tokenizer, "Tell me a joke.", NAMES, [0.333, 0.667]) == text
