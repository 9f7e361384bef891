"""The base-learner: a Hugging Face causal LM with LoRA adapters, conditioned on preference weights.

Two ways to condition, alone or together (`model.conditioning`, docs/algorithm.md):
- `tag`: the weights are written into the prompt as text (`meal_core.conditioning`); one adapter learns to read them.
- `experts`: one LoRA adapter per objective (plus an optional shared one), mixed per batch row by the weights:
  Δ(w) = [B₀A₀] + Σ_k w_k B_k A_k. Each row of a batch gets its own mixture, in training and in generation.

Every operation takes the user's prompts and the weight each one is conditioned on; this module turns them into
what the model sees. `generate` is the one sampling function of the engine: the trainer, its evaluation, the CLI
and the playground all sample through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.nn.utils.rnn import pad_sequence

from meal_core.conditioning import build_prompt, format_tag
from meal_core.config import DEFAULT_MODEL, AlgorithmConfig, LoraConfig, ModelConfig
from meal_core.data import Prompt, Turn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TAG_ADAPTER = "default"
SHARED_ADAPTER = "shared"
MIXING_FILE = "mixing.json"


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


def expert_adapter(objective: str) -> str:
    return f"expert_{objective}"


@dataclass(frozen=True)
class Sampling:
    """How to sample: the same options for training, evaluation, `meal generate` and the playground."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    # Suppress eos until this many tokens are out (None: stop at eos as usual); benchmarks set it to
    # max_new_tokens so that every sequence does the same amount of work.
    min_new_tokens: int | None = None

    @classmethod
    def of(cls, algorithm: AlgorithmConfig, **changes: Any) -> Sampling:
        """The training run's sampling options, with any of them changed."""
        options: dict[str, Any] = {
            "max_new_tokens": algorithm.max_new_tokens,
            "temperature": algorithm.temperature,
            "top_p": algorithm.top_p,
            "top_k": algorithm.top_k,
        }
        options.update({k: v for k, v in changes.items() if v is not None})
        return cls(**options)


@dataclass
class Generation:
    texts: list[list[str]]  # [prompt][sample]
    token_ids: list[list[list[int]]]  # the generated ids, eos included when produced, padding removed
    new_tokens: int


class RowMixer:
    """Scales each LoRA adapter's output row by row, so one batch mixes its experts differently in every row.

    A forward hook on every `lora_B` of every adapter multiplies its output by that row's coefficient for the
    adapter; peft then adds it to the base layer's output as usual. Coefficients are set for the duration of a
    call with `rows(...)`; a forward pass outside such a call is an error rather than a silent unweighted sum.
    """

    def __init__(self, model: torch.nn.Module, adapters: Sequence[str]) -> None:
        from peft.tuners.lora import LoraLayer

        self.adapters = list(adapters)
        self._coefficients: torch.Tensor | None = None
        for module in model.modules():
            if isinstance(module, LoraLayer):
                lora_b = cast(torch.nn.ModuleDict, module.lora_B)
                for index, name in enumerate(self.adapters):
                    lora_b[name].register_forward_hook(partial(self._scale, index))

    def _scale(self, index: int, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self._coefficients is None:
            raise RuntimeError("experts conditioning: forward pass without mixing weights")
        column = self._coefficients[:, index]
        if column.shape[0] != output.shape[0]:
            raise RuntimeError(f"mixing weights for {column.shape[0]} rows, batch has {output.shape[0]}")
        return output * column.view(-1, *([1] * (output.dim() - 1))).to(output.dtype)

    @contextmanager
    def rows(self, coefficients: torch.Tensor) -> Iterator[None]:
        previous, self._coefficients = self._coefficients, coefficients
        try:
            yield
        finally:
            self._coefficients = previous


class Policy:
    """Tokenizer + LoRA-wrapped causal LM, conditioned on preference weights over `objectives`."""

    def __init__(self, model_config: ModelConfig, lora_config: LoraConfig, objectives: Sequence[str]) -> None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = model_config
        self.objectives = list(objectives)
        self.conditioning = model_config.conditioning
        self.uses_tag = "tag" in self.conditioning
        self.uses_experts = "experts" in self.conditioning
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
            raise ModelLoadError(f"lora.target_modules: {', '.join(missing)} not found in {model_config.name_or_path}")
        adapter = PeftLoraConfig(
            r=lora_config.r,
            lora_alpha=lora_config.alpha,
            lora_dropout=lora_config.dropout,
            target_modules=list(lora_config.target_modules),
            task_type="CAUSAL_LM",
        )
        if self.uses_experts:
            self.adapters = ([SHARED_ADAPTER] if lora_config.shared else []) + [
                expert_adapter(name) for name in self.objectives
            ]
        else:
            self.adapters = [TAG_ADAPTER]
        self.model = get_peft_model(base, adapter, adapter_name=self.adapters[0])
        for name in self.adapters[1:]:
            self.model.add_adapter(name, adapter)
        # Every adapter is active (and trainable) at once; the mixer decides how much each row gets of each.
        lora_model: Any = self.model.base_model
        lora_model.set_adapter(self.adapters)
        self.model.to(self.device)
        self.mixer = RowMixer(self.model, self.adapters) if self.uses_experts else None
        self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.conversations: dict[str, tuple[Turn, ...]] = {}

    # -- conditioning -------------------------------------------------------------------------------------------

    def prompt_text(self, prompt: str, weights: ArrayLike) -> str:
        """What the model reads for `prompt` under `weights`: the chat-formatted prompt, with the tag if used.
        A multi-turn prompt (one given to add_conversations) is formatted over all its turns."""
        tag = format_tag(self.objectives, weights) if self.uses_tag else None
        turns = self.conversations.get(prompt)
        return build_prompt(self.tokenizer, prompt, tag, self.config.use_chat_template, turns)

    def add_conversations(self, prompts: Iterable[Prompt]) -> None:
        """Remember the turns of multi-turn prompts, found again by their written-out text: the engine passes
        prompts as text (to scorers, the replay buffer, checkpoints), and the chat template needs the turns."""
        self.conversations.update({p.text: p.turns for p in prompts if p.turns})

    def prompt_length(self, text: str) -> int:
        """Tokens of a prompt before any conditioning (the length data.max_prompt_length filters on)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def mixing_coefficients(self, weights: ArrayLike) -> torch.Tensor:
        """(rows, adapters): 1 for the shared adapter, w_k for objective k's expert."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != len(self.objectives):
            raise ValueError(f"{len(self.objectives)} objectives but {w.shape[1]} weights")
        w = w / w.sum(axis=1, keepdims=True)
        shared = np.ones((len(w), len(self.adapters) - len(self.objectives)))
        return torch.tensor(np.concatenate([shared, w], axis=1), dtype=torch.float32, device=self.device)

    @contextmanager
    def conditioned_on(self, weights: ArrayLike, repeat: int = 1) -> Iterator[None]:
        """Mix the experts row by row for the forward passes inside (each row's weight repeated `repeat` times)."""
        if self.mixer is None:
            yield
            return
        coefficients = self.mixing_coefficients(weights).repeat_interleave(repeat, dim=0)
        with self.mixer.rows(coefficients):
            yield

    def mixing_rule(self) -> dict[str, Any]:
        """How the saved adapters combine, written beside them so any peft user can rebuild the policy."""
        return {
            "conditioning": self.conditioning,
            "objectives": self.objectives,
            "adapters": self.adapters,
            "rule": (
                "delta(w) = " + " + ".join(["shared"] * (SHARED_ADAPTER in self.adapters) + ["sum_k w_k expert_k"])
                if self.uses_experts
                else "one adapter; the weights are written into the prompt as a <pref ...> tag"
            ),
            "tag": self.uses_tag,
        }

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
        self, prompts: Sequence[str], weights: ArrayLike, num_return_sequences: int, sampling: Sampling
    ) -> Generation:
        """M samples for each prompt under its own weights (rows of `weights`): one batched, left-padded call."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if len(weights) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(weights)} weight vectors")
        texts = [self.prompt_text(p, w) for p, w in zip(prompts, weights, strict=True)]
        return self.generate_ids([self.encode_prompt(t) for t in texts], weights, num_return_sequences, sampling)

    @torch.no_grad()
    def generate_ids(
        self, prompt_ids: Sequence[list[int]], weights: ArrayLike, num_return_sequences: int, sampling: Sampling
    ) -> Generation:
        """`generate` for prompts the caller has already conditioned and tokenised (`meal_core.rollout` passes the
        same ids to every backend); the weights still mix the experts row by row."""
        self.model.eval()
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if len(weights) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(weights)} weight vectors")
        ids, mask = self._left_padded(list(prompt_ids))
        options: dict[str, float | int] = (
            {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
            if sampling.do_sample
            else {}
        )
        if sampling.min_new_tokens is not None:
            options["min_new_tokens"] = min(sampling.min_new_tokens, sampling.max_new_tokens)
        # Greedy decoding gives M identical sequences, and transformers refuses num_return_sequences > 1 without
        # sampling: decode once per prompt and repeat.
        copies = num_return_sequences if sampling.do_sample else 1
        with self.conditioned_on(weights, repeat=copies):
            output = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=sampling.do_sample,
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
        self, prompts: Sequence[str], weights: np.ndarray, responses: Sequence[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt_ids = [self.encode_prompt(self.prompt_text(p, w)) for p, w in zip(prompts, weights, strict=True)]
        rows = [torch.tensor(p + r) for p, r in zip(prompt_ids, responses, strict=True)]
        labels = [torch.tensor([-100] * len(p) + r) for p, r in zip(prompt_ids, responses, strict=True)]
        ids = pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        mask = pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        label_tensor = pad_sequence(labels, batch_first=True, padding_value=-100)
        return ids.to(self.device), mask.to(self.device), label_tensor.to(self.device)

    def completion_logprobs(
        self, prompts: Sequence[str], weights: ArrayLike, responses: Sequence[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each response's tokens given its prompt and weights, and the token counts."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        ids, mask, labels = self._completion_batch(prompts, weights, responses)
        with self.conditioned_on(weights):
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        keep = targets != -100
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (token_logprobs * keep).sum(dim=1), keep.sum(dim=1)

    def sft_loss(self, prompts: Sequence[str], weights: ArrayLike, responses: Sequence[list[int]]) -> torch.Tensor:
        """Completion-only negative log-likelihood, averaged over response tokens."""
        self.model.train()
        logprob_sums, counts = self.completion_logprobs(prompts, weights, responses)
        return -logprob_sums.sum() / counts.sum().clamp(min=1)

    @torch.no_grad()
    def reference_logprobs(
        self, prompts: Sequence[str], weights: ArrayLike, responses: Sequence[list[int]]
    ) -> torch.Tensor:
        """Summed log-probabilities under the adapter-free base model: the pairwise loss's reference."""
        self.model.eval()
        with self.adapter_disabled():
            return self.completion_logprobs(prompts, weights, responses)[0]

    def pairwise_loss(
        self,
        prompts: Sequence[str],
        weights: ArrayLike,
        chosen: Sequence[list[int]],
        rejected: Sequence[list[int]],
        beta: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional DPO (as Controllable Preference Optimization): under each row's weight, prefer `chosen`.

        −log σ(β [(log π(y⁺|x,w) − log π₀(y⁺|x,w)) − (log π(y⁻|x,w) − log π₀(y⁻|x,w))]), π₀ the adapter-free base.
        Returns the mean loss and the mean margin (the bracket, before β).
        """
        reference = self.reference_logprobs(prompts, weights, chosen) - self.reference_logprobs(
            prompts, weights, rejected
        )
        self.model.train()
        both_prompts, both_weights = list(prompts) * 2, np.concatenate([np.atleast_2d(weights)] * 2)
        sums, _ = self.completion_logprobs(both_prompts, both_weights, list(chosen) + list(rejected))
        margin = sums[: len(chosen)] - sums[len(chosen) :] - reference
        return -torch.nn.functional.logsigmoid(beta * margin).mean(), margin.detach().mean()

    @torch.no_grad()
    def score_logprobs(
        self, prompts: Sequence[str], weights: ArrayLike, responses: Sequence[list[int]], batch_size: int = 16
    ) -> list[float]:
        self.model.eval()
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        sums: list[float] = []
        for start in range(0, len(prompts), batch_size):
            part, _ = self.completion_logprobs(
                prompts[start : start + batch_size],
                weights[start : start + batch_size],
                responses[start : start + batch_size],
            )
            sums.extend(part.tolist())
        return sums

    # -- prompt embeddings for the preference-weight-net ---------------------------------------------------------

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Mean-pooled last hidden state of the frozen base model (adapters off) over the bare prompt text: the
        weight net's input."""
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

    # -- adapters on disk ---------------------------------------------------------------------------------------

    def save_adapter(self, directory: Path) -> None:
        """peft format: the tag adapter at the top, experts (and `shared`) in sub-folders named after them; the
        mixing rule beside them in mixing.json."""
        self.model.save_pretrained(str(directory), selected_adapters=self.adapters)
        (Path(directory) / MIXING_FILE).write_text(json.dumps(self.mixing_rule(), indent=2))

    def adapter_folder(self, directory: Path, adapter: str) -> Path:
        return Path(directory) if adapter == TAG_ADAPTER else Path(directory) / adapter

    def load_adapter(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        rule_path = directory / MIXING_FILE
        if rule_path.is_file():
            saved = json.loads(rule_path.read_text())
            if saved.get("adapters") != self.adapters:
                raise ModelLoadError(
                    f"{directory}: adapters {saved.get('adapters')} were saved, this policy has {self.adapters}"
                )
        for adapter in self.adapters:
            state = load_file(
                str(self.adapter_folder(directory, adapter) / "adapter_model.safetensors"), device=str(self.device)
            )
            set_peft_model_state_dict(self.model, state, adapter_name=adapter)
