"""Any sequence-classification model as a reward, with its input format and output read declared in config.

Multi-objective reward models give several objectives from one forward pass (ArmoRM's 19 dimensions, a classifier
with several labels). Here that is several `hf_classifier` objectives naming the same model with the same input
settings: build_objectives hands them one `ClassifierModel`, which runs each batch of responses once and keeps the
logits, and each objective reads its own output ('logit[2]', 'softmax[1]', 'logit[0]-logit[1]') from them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meal_core.objectives.base import Objective, ObjectiveError

_LABEL = r"(\d+)"  # a label index
_OUTPUT_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^logit\[{_LABEL}\]$"), "logit"),
    (re.compile(rf"^logit\[{_LABEL}\]\s*-\s*logit\[{_LABEL}\]$"), "logit_diff"),
    (re.compile(rf"^softmax\[{_LABEL}\]$"), "softmax"),
]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def output_labels(spec: str) -> list[int]:
    """The label indices an output spec reads, or ValueError for a spec of no known form."""
    for pattern, _ in _OUTPUT_PATTERNS:
        match = pattern.match(spec.strip())
        if match:
            return [int(g) for g in match.groups()]
    raise ValueError(f"output must be 'logit[i]', 'logit[i]-logit[j]' or 'softmax[i]', got {spec!r}")


def parse_output_spec(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """'logit[i]', 'logit[i]-logit[j]' or 'softmax[i]' → a function of a (batch, labels) logit tensor."""
    indices = output_labels(spec)
    kind = next(kind for pattern, kind in _OUTPUT_PATTERNS if pattern.match(spec.strip()))
    if kind == "logit":
        return lambda logits: logits[:, indices[0]]
    if kind == "logit_diff":
        return lambda logits: logits[:, indices[0]] - logits[:, indices[1]]
    return lambda logits: logits.softmax(dim=-1)[:, indices[0]]


class ClassifierModel:
    """One loaded sequence-classification model, shared by every objective that reads it: each batch of
    responses is run once, in length-sorted micro-batches, and its logits kept for the objectives that follow."""

    def __init__(
        self,
        model: str,
        input_format: str = "pair",
        separator: str = "\n\n",
        max_length: int = 512,
        trust_remote_code: bool = False,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        local = Path(model).exists()
        if not local and (model.startswith((".", "/", "~")) or model.count("/") > 1):
            raise ObjectiveError(f"classifier model path does not exist: {model}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model, trust_remote_code=trust_remote_code, dtype=_DTYPES[dtype]
            ).to(device)
        except (OSError, ValueError) as error:  # ValueError: a folder that holds no usable tokenizer/model
            raise ObjectiveError(f"cannot load classifier {model!r}: {error}") from None
        self.model.eval()
        if input_format == "auto":
            input_format = "chat" if getattr(self.tokenizer, "chat_template", None) else "pair"
        if input_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ObjectiveError(f"classifier {model!r}: input_format 'chat', but its tokenizer has no chat template")
        self.name, self.input_format, self.separator = model, input_format, separator
        self.max_length, self.device, self.batch_size = max_length, device, batch_size
        self.num_labels: int = self.model.config.num_labels
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.forward_passes = 0  # calls of the model: what sharing saves, counted (tests, metrics)
        self._last: tuple[list[str], list[str], torch.Tensor] | None = None

    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Any]:
        """The model's inputs, one per response: a string, or a (prompt, response) pair for text_pair."""
        if self.input_format == "text_pair":
            return list(zip(prompts, responses, strict=True))
        if self.input_format == "response_only":
            return list(responses)
        if self.input_format == "chat":
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                )
                for p, r in zip(prompts, responses, strict=True)
            ]
        if self.input_format == "hh":
            return [hh_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        return [p + self.separator + r for p, r in zip(prompts, responses, strict=True)]

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(N, labels) float32 logits; the same inputs as the last call are not run again."""
        prompts, responses = list(prompts), list(responses)
        if self._last is not None and self._last[0] == prompts and self._last[1] == responses:
            return self._last[2]
        inputs = self.texts(prompts, responses)
        lengths = [len(x[0]) + len(x[1]) if isinstance(x, tuple) else len(x) for x in inputs]
        order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding per micro-batch
        out = torch.empty((len(inputs), self.num_labels))
        options = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        # A chat template writes the special tokens itself.
        options["add_special_tokens"] = self.input_format != "chat"
        for start in range(0, len(inputs), self.batch_size):
            rows = order[start : start + self.batch_size]
            chunk = [inputs[i] for i in rows]
            if self.input_format == "text_pair":
                encoded = self.tokenizer([a for a, _ in chunk], [b for _, b in chunk], **options)
            else:
                encoded = self.tokenizer(chunk, **options)
            out[torch.as_tensor(rows)] = self.model(**encoded.to(self.device)).logits.float().cpu()
            self.forward_passes += 1
        self._last = (prompts, responses, out)
        return out


class HFClassifierScorer(Objective):
    """One objective read from a (possibly shared) classifier's logits."""

    def __init__(
        self,
        name: str,
        model: str | ClassifierModel,
        direction: str = "maximize",
        batch_size: int = 32,
        input_format: str = "pair",
        output: str = "logit[0]",
        separator: str = "\n\n",
        max_length: int = 512,
        trust_remote_code: bool = False,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        super().__init__(name, direction, batch_size)
        if isinstance(model, ClassifierModel):
            self.shared = model
        else:
            try:
                self.shared = ClassifierModel(
                    model, input_format, separator, max_length, trust_remote_code, device, dtype, batch_size
                )
            except ObjectiveError as error:
                raise ObjectiveError(f"{name}: {error}") from None
        try:
            self._read = parse_output_spec(output)
        except ValueError as error:
            raise ObjectiveError(f"{name}: {error}") from None
        if max(output_labels(output)) >= self.shared.num_labels:
            raise ObjectiveError(
                f"{name}: output {output!r} needs more than the model's {self.shared.num_labels} labels"
            )

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self._read(self.shared.logits(prompts, responses)).tolist()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """All responses at once: the shared model batches them itself, and the objectives reading the same
        model after this one find the logits computed."""
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(responses)} responses")
        scores = np.asarray(self.score_batch(prompts, responses), dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ObjectiveError(f"{self.name}: returned a non-finite score")
        return scores


def hh_text(prompt: str, response: str) -> str:
    """A prompt and a response as Anthropic HH-RLHF writes a conversation, which reward models trained on it read; a
    prompt already in that form (several turns, from an HH dataset's text) keeps its own turns."""
    prompt = prompt.rstrip().removesuffix("Assistant:").rstrip()
    if not prompt.lstrip().startswith("Human:"):
        prompt = f"\n\nHuman: {prompt}"
    return f"{prompt}\n\nAssistant: {response}"
