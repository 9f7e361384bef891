"""Any sequence-classification model as a reward, with its input format and output read declared in config."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from meal_core.objectives.base import Objective, ObjectiveError

_OUTPUT_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^logit\[(\d+)\]$"), "logit"),
    (re.compile(r"^logit\[(\d+)\]\s*-\s*logit\[(\d+)\]$"), "logit_diff"),
    (re.compile(r"^softmax\[(\d+)\]$"), "softmax"),
]


def parse_output_spec(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """'logit[i]', 'logit[i]-logit[j]' or 'softmax[i]' → a function of a (batch, labels) logit tensor."""
    for pattern, kind in _OUTPUT_PATTERNS:
        match = pattern.match(spec.strip())
        if not match:
            continue
        indices = [int(g) for g in match.groups()]
        if kind == "logit":
            return lambda logits: logits[:, indices[0]]
        if kind == "logit_diff":
            return lambda logits: logits[:, indices[0]] - logits[:, indices[1]]
        return lambda logits: logits.softmax(dim=-1)[:, indices[0]]
    raise ValueError(f"output must be 'logit[i]', 'logit[i]-logit[j]' or 'softmax[i]', got {spec!r}")


def _highest_index(spec: str) -> int:
    return max(int(i) for i in re.findall(r"\[(\d+)\]", spec))


class HFClassifierScorer(Objective):
    def __init__(
        self,
        name: str,
        model: str,
        direction: str = "maximize",
        batch_size: int = 32,
        input_format: str = "pair",
        output: str = "logit[0]",
        separator: str = "\n\n",
        max_length: int = 512,
        trust_remote_code: bool = False,
        device: str = "cpu",
    ) -> None:
        super().__init__(name, direction, batch_size)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        local = Path(model).exists()
        if not local and (model.startswith((".", "/", "~")) or model.count("/") > 1):
            raise ObjectiveError(f"{name}: classifier model path does not exist: {model}")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self._model = AutoModelForSequenceClassification.from_pretrained(
                model, trust_remote_code=trust_remote_code
            ).to(device)
        except (OSError, ValueError) as error:  # ValueError: a folder that holds no usable tokenizer/model
            raise ObjectiveError(f"{name}: cannot load classifier {model!r}: {error}") from None
        self._model.eval()
        num_labels = self._model.config.num_labels
        if _highest_index(output) >= num_labels:
            raise ObjectiveError(f"{name}: output {output!r} needs more than the model's {num_labels} labels")
        self._read = parse_output_spec(output)
        self.input_format, self.separator, self.max_length, self.device = input_format, separator, max_length, device
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token or self._tokenizer.unk_token
            self._model.config.pad_token_id = self._tokenizer.pad_token_id

    @torch.no_grad()
    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        options = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        if self.input_format == "text_pair":
            encoded = self._tokenizer(list(prompts), list(responses), **options)
        elif self.input_format == "response_only":
            encoded = self._tokenizer(list(responses), **options)
        else:
            joined = [p + self.separator + r for p, r in zip(prompts, responses, strict=True)]
            encoded = self._tokenizer(joined, **options)
        logits = self._model(**encoded.to(self.device)).logits.float()
        return self._read(logits).cpu().tolist()
