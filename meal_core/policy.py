"""The base-learner: a Hugging Face causal LM with a LoRA adapter, conditioned on preference weights by text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from meal_core.config import DEFAULT_MODEL, LoraConfig, ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The configured model cannot be found or loaded."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device: {name!r} asked for, but CUDA is not available here")
    return device


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path == DEFAULT_MODEL:
        from meal_core.default_model import default_model_path

        try:
            return str(default_model_path())
        except FileNotFoundError as error:
            raise ModelLoadError(f"model.name_or_path: {error}") from None
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path: {path} has no config.json; not a Hugging Face model folder")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(f"model.name_or_path: no such directory: {name_or_path}")
    return name_or_path  # a hub id; loading it reports whether it is reachable


@dataclass
class Generation:
    texts: list[list[str]]  # [prompt][sample]
    token_ids: list[list[list[int]]]  # the generated ids, eos included when produced, padding removed
    new_tokens: int


class Policy:
    """Tokenizer + LoRA-wrapped causal LM, with the few operations the trainer needs."""

    def __init__(self, model_config: ModelConfig, lora_config: LoraConfig) -> None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = model_config
        self.device = resolve_device(model_config.device)
        self.dtype = _DTYPES[model_config.dtype]
        path = resolve_model_path(model_config.name_or_path)
        trust = model_config.trust_remote_code
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            base = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, trust_remote_code=trust)
        except OSError as error:
            raise ModelLoadError(f"model.name_or_path: cannot load {model_config.name_or_path!r}: {error}") from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.eos_token_id is None:
            raise ModelLoadError(f"model.name_or_path: tokenizer of {path} has no eos token")
        present = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        missing = [m for m in lora_config.target_modules if m not in present]
        if missing:
            raise ModelLoadError(f"lora.target_modules: {missing} not found in {model_config.name_or_path}")
        adapter = PeftLoraConfig(
            r=lora_config.r,
            lora_alpha=lora_config.alpha,
            lora_dropout=lora_config.dropout,
            target_modules=list(lora_config.target_modules),
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, adapter).to(self.device)
        self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id

    # -- text ---------------------------------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.config.max_prompt_tokens :]

    def encode_response(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def _left_padded(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self.device)
        return ids, mask

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        num_return_sequences: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        do_sample: bool = True,
        min_new_tokens: int | None = None,
    ) -> Generation:
        """One batched, left-padded `generate` call for all prompts, M samples each.

        `min_new_tokens` suppresses eos until that many tokens are out (None: stop at eos as usual); benchmarks set
        it to `max_new_tokens` so that every sequence does the same amount of work.
        """
        self.model.eval()
        ids, mask = self._left_padded([self.encode_prompt(p) for p in prompts])
        options: dict[str, float | int] = (
            {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
        )
        if min_new_tokens is not None:
            options["min_new_tokens"] = min(min_new_tokens, max_new_tokens)
        # Greedy decoding gives M identical sequences, and transformers refuses num_return_sequences > 1 without
        # sampling: decode once per prompt and repeat.
        copies = num_return_sequences if do_sample else 1
        output = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=copies,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **options,
        )
        if copies != num_return_sequences:
            output = output.repeat_interleave(num_return_sequences, dim=0)
        completions = output[:, ids.shape[1] :].tolist()
        eos = self.tokenizer.eos_token_id
        token_ids: list[list[int]] = []
        for row in completions:
            # Everything after the first eos is padding.
            token_ids.append(row[: row.index(eos) + 1] if eos in row else row)
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        m = num_return_sequences
        return Generation(
            texts=[[t.strip() for t in texts[i : i + m]] for i in range(0, len(texts), m)],
            token_ids=[token_ids[i : i + m] for i in range(0, len(token_ids), m)],
            new_tokens=sum(len(t) for t in token_ids),
        )

    # -- likelihood ---------------------------------------------------------------------------------------------

    def _completion_batch(
        self, prompts: Sequence[str], responses: Sequence[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        rows = [torch.tensor(p + r) for p, r in zip(prompt_ids, responses, strict=True)]
        labels = [torch.tensor([-100] * len(p) + r) for p, r in zip(prompt_ids, responses, strict=True)]
        ids = pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        mask = pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        label_tensor = pad_sequence(labels, batch_first=True, padding_value=-100)
        return ids.to(self.device), mask.to(self.device), label_tensor.to(self.device)

    def completion_logprobs(
        self, prompts: Sequence[str], responses: Sequence[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each response's tokens given its prompt, and the token counts."""
        ids, mask, labels = self._completion_batch(prompts, responses)
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        keep = targets != -100
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (token_logprobs * keep).sum(dim=1), keep.sum(dim=1)

    def sft_loss(self, prompts: Sequence[str], responses: Sequence[list[int]]) -> torch.Tensor:
        """Completion-only negative log-likelihood, averaged over response tokens."""
        self.model.train()
        logprob_sums, counts = self.completion_logprobs(prompts, responses)
        return -logprob_sums.sum() / counts.sum().clamp(min=1)

    @torch.no_grad()
    def score_logprobs(
        self, prompts: Sequence[str], responses: Sequence[list[int]], batch_size: int = 16
    ) -> list[float]:
        self.model.eval()
        sums: list[float] = []
        for start in range(0, len(prompts), batch_size):
            part, _ = self.completion_logprobs(
                prompts[start : start + batch_size], responses[start : start + batch_size]
            )
            sums.extend(part.tolist())
        return sums

    # -- prompt embeddings for the preference-weight-net ---------------------------------------------------------

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Mean-pooled last hidden state of the frozen base model (adapters off): the weight net's input."""
        self.model.eval()
        vectors = []
        with self.adapter_disabled():
            for start in range(0, len(prompts), batch_size):
                ids, mask = self._left_padded([self.encode_prompt(p) for p in prompts[start : start + batch_size]])
                hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                vectors.append(((hidden * weights).sum(1) / weights.sum(1)).float().cpu())
        return torch.cat(vectors)

    @contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        with self.model.disable_adapter():
            yield

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_adapter(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory))

    def load_adapter(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(directory / "adapter_model.safetensors"), device=str(self.device))
        set_peft_model_state_dict(self.model, state)
