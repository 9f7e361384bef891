"""How preference weights are written into a prompt, and read back.

The one place that knows the format `<pref helpful=0.30 harmless=0.70>`. Weights are quantised to two decimals
(summing to exactly 1) so that the same weight always gives the same tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

DECIMALS = 2
_TAG = re.compile(r"<pref((?:\s+[a-z][a-z0-9_]*=\d+(?:\.\d+)?)+)\s*>")
_PAIR = re.compile(r"([a-z][a-z0-9_]*)=(\d+(?:\.\d+)?)")


def quantize_weights(weights: ArrayLike) -> np.ndarray:
    """Round to DECIMALS on the simplex: the rounding residue goes to the largest weight."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if w.sum() <= 0:
        raise ValueError("weights must have a positive sum")
    scale = 10**DECIMALS
    units = np.round(w / w.sum() * scale)
    units[int(np.argmax(units))] += scale - units.sum()
    return units / scale


def format_tag(names: Sequence[str], weights: ArrayLike) -> str:
    q = quantize_weights(weights)
    if len(names) != len(q):
        raise ValueError(f"{len(names)} objectives but {len(q)} weights")
    return "<pref " + " ".join(f"{n}={v:.{DECIMALS}f}" for n, v in zip(names, q, strict=True)) + ">"


def parse_tag(text: str) -> dict[str, float]:
    """The weights of the first `<pref …>` tag in text; raises ValueError if there is none."""
    match = _TAG.search(text)
    if not match:
        raise ValueError("no <pref …> tag in text")
    return {name: float(value) for name, value in _PAIR.findall(match.group(1))}


def parse_weight_list(text: str, names: Sequence[str]) -> np.ndarray:
    """A user's '0.3,0.7' or 'helpful=0.3,harmless=0.7' → weights on the simplex, in `names` order."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all("=" in p for p in parts):
        given = {k.strip(): v for k, _, v in (p.partition("=") for p in parts)}
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError(f"unknown objective(s) {', '.join(sorted(unknown))}; expected {', '.join(names)}")
        parts = [given.get(n, "0") for n in names]
    if len(parts) != len(names):
        raise ValueError(f"expected {len(names)} weights ({', '.join(names)}), got {len(parts)}")
    try:
        values = np.array([float(p) for p in parts])
    except ValueError:
        raise ValueError(f"weights must be numbers, got {text!r}") from None
    if (values < 0).any() or values.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return values / values.sum()


def build_prompt(
    tokenizer: Any,
    prompt: str,
    tag: str | None,
    use_chat_template: bool = True,
    turns: Sequence[tuple[str, str]] | None = None,
) -> str:
    """The text the policy sees: the tag (if any) as a system message inside the chat template when there is one.
    `turns`: a multi-turn prompt's (role, content) turns, ending with the user's; `prompt` is then their written-out
    text, which a model without a chat template reads as it is."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        user = [{"role": role, "content": content} for role, content in turns] if turns else []
        user = user or [{"role": "user", "content": prompt}]
        last = user[-1]["content"]
        candidates = (
            [
                [{"role": "system", "content": tag}, *user],
                [*user[:-1], {"role": "user", "content": f"{tag}\n{last}"}],
            ]
            if tag is not None
            # Some templates reject a system role: the second form puts the tag in front of the user turn instead.
            else [user]
        )
        for messages in candidates:
            try:
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception:  # noqa: BLE001 - jinja raises TemplateError or plain exceptions from templates
                continue
            return str(text)
    return f"{tag}\n{prompt}\n" if tag is not None else f"{prompt}\n"


def conditioned_prompt(
    tokenizer: Any, prompt: str, names: Sequence[str], weights: ArrayLike, use_chat_template: bool = True
) -> str:
    return build_prompt(tokenizer, prompt, format_tag(names, weights), use_chat_template)
