"""Engine benchmark: our batched rejection-sampling round vs a RiC-style per-example loop, and generation overhead.

Measured in one run, on the same model, prompts, weights and sampling settings:

(a) one rejection-sampling round for B prompts × M candidates
    ours:      one batched, left-padded `Policy.generate` call (num_return_sequences=M); each objective scores all
               B·M (prompt, response) pairs in one `.score` call; `selection.select` per prompt on u = w·r.
    reference: the way RiC (Rewards-in-Context) writes it: one `model.generate` call per prompt and per sample
               (batch of one, one sequence), one `.score` call per (prompt, response) and per objective, then the
               same selection.
    Printed: both times, the tokens each generated, and reference / ours (target ≥ 5×).

(b) generation throughput: `Policy.generate` (tokenise, pad, generate through the peft wrapper, strip, decode)
    against a bare `generate` call on the underlying Hugging Face model (`policy.model.get_base_model()`, which
    carries the same injected LoRA layers) with the same padded input ids and the same settings.
    Printed: both times and new tokens/s, and ours / bare (target ≥ 0.85).

Both sides of each comparison stop only at max_new_tokens (min_new_tokens = max_new_tokens) so that sampling
cannot make one side do less work; torch is seeded identically before each side; a warm-up call of every code path
runs before anything is timed. The relevance scorer's prompt-embedding cache is cleared before each side of (a), so
both pay for embedding the prompts.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine.py            # B=8, M=4, 48 new tokens
    HF_HUB_OFFLINE=1 .venv/bin/python bench/engine.py --quick    # smoke run: B=2, M=2, 16 new tokens
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from meal_core.conditioning import conditioned_prompt  # noqa: E402
from meal_core.config import (  # noqa: E402
    AlgorithmConfig,
    LoraConfig,
    ModelConfig,
    ObjectiveConfig,
    ReadabilityObjective,
    RelevanceObjective,
)
from meal_core.data import load_prompts  # noqa: E402
from meal_core.normalization import Normalizer  # noqa: E402
from meal_core.objectives import Objective, build_objectives  # noqa: E402
from meal_core.policy import Policy  # noqa: E402
from meal_core.selection import is_degenerate, select  # noqa: E402

ROUND_TARGET = 5.0  # reference time / our time
THROUGHPUT_TARGET = 0.85  # our tokens/s / bare tokens/s


@dataclass
class Setup:
    policy: Policy
    objectives: list[Objective]
    names: list[str]
    prompts: list[str]  # raw prompt texts (what the scorers see), B
    conditioned: list[str]  # prompt ⊕ cond(w), what the policy sees, B
    weights: np.ndarray  # (B, K)
    samples: int  # M
    max_new_tokens: int
    sampling: dict[str, Any]  # temperature, top_p, top_k
    guard: float  # degeneracy guard threshold
    seed: int


@dataclass
class RoundResult:
    seconds: float
    generate_s: float
    score_s: float
    select_s: float
    new_tokens: int
    generate_calls: int
    score_calls: int
    kept: list[list[int]] = field(default_factory=list)


# -- shared pieces ------------------------------------------------------------------------------------------------


def clear_scorer_caches(objectives: Sequence[Objective]) -> None:
    for objective in objectives:
        cache = getattr(objective, "_prompt_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def select_per_prompt(setup: Setup, raw: np.ndarray, valid: np.ndarray) -> list[list[int]]:
    """Group-normalised scores r, utilities u = w·r, `select` (rule 'best') per prompt: as the trainer does."""
    m = setup.samples
    oriented = raw * np.array([o.sign for o in setup.objectives])
    normalizer = Normalizer.calibrate(setup.names, oriented[valid] if valid.any() else oriented, clip=3.0)
    kept = []
    for g, w in enumerate(setup.weights):
        rows = np.arange(g * m, (g + 1) * m)
        relative = np.zeros((m, len(setup.names)))
        keep = valid[rows]
        if keep.any():
            relative[keep] = normalizer.within_groups(oriented[rows][keep], int(keep.sum()))
        kept.append([int(i) for i in select(relative @ w, relative, keep, "best")])
    return kept


# -- (a) ours -----------------------------------------------------------------------------------------------------


def ours_round(setup: Setup) -> RoundResult:
    clear_scorer_caches(setup.objectives)
    torch.manual_seed(setup.seed)
    m = setup.samples
    t0 = time.perf_counter()
    generation = setup.policy.generate(
        setup.conditioned,
        num_return_sequences=m,
        max_new_tokens=setup.max_new_tokens,
        min_new_tokens=setup.max_new_tokens,
        **setup.sampling,
    )
    t1 = time.perf_counter()
    responses = [text for group in generation.texts for text in group]
    prompts = [p for p in setup.prompts for _ in range(m)]
    valid = np.array([not is_degenerate(t, setup.guard) for t in responses])
    raw = np.stack([o.score(prompts, responses) for o in setup.objectives], axis=1)
    t2 = time.perf_counter()
    kept = select_per_prompt(setup, raw, valid)
    t3 = time.perf_counter()
    return RoundResult(
        seconds=t3 - t0,
        generate_s=t1 - t0,
        score_s=t2 - t1,
        select_s=t3 - t2,
        new_tokens=generation.new_tokens,
        generate_calls=1,
        score_calls=len(setup.objectives),
        kept=kept,
    )


# -- (a) reference: RiC-style loops -------------------------------------------------------------------------------


def reference_round(setup: Setup) -> RoundResult:
    """One prompt and one sequence per `model.generate` call; one example per scorer call."""
    clear_scorer_caches(setup.objectives)
    torch.manual_seed(setup.seed)
    policy, tokenizer = setup.policy, setup.policy.tokenizer
    model = policy.model
    model.eval()
    m = setup.samples
    eos = tokenizer.eos_token_id
    t0 = time.perf_counter()
    responses: list[str] = []
    new_tokens = 0
    calls = 0
    with torch.no_grad():
        for text in setup.conditioned:
            ids = torch.tensor([policy.encode_prompt(text)], device=policy.device)
            for _ in range(m):
                output = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=setup.max_new_tokens,
                    min_new_tokens=setup.max_new_tokens,
                    do_sample=True,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos,
                    **setup.sampling,
                )
                calls += 1
                completion = output[0, ids.shape[1] :].tolist()
                completion = completion[: completion.index(eos) + 1] if eos in completion else completion
                new_tokens += len(completion)
                responses.append(str(tokenizer.decode(completion, skip_special_tokens=True)).strip())
    t1 = time.perf_counter()
    prompts = [p for p in setup.prompts for _ in range(m)]
    valid = np.array([not is_degenerate(t, setup.guard) for t in responses])
    raw = np.zeros((len(responses), len(setup.objectives)))
    score_calls = 0
    for k, objective in enumerate(setup.objectives):
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            raw[i, k] = objective.score([prompt], [response])[0]
            score_calls += 1
    t2 = time.perf_counter()
    kept = select_per_prompt(setup, raw, valid)
    t3 = time.perf_counter()
    return RoundResult(
        seconds=t3 - t0,
        generate_s=t1 - t0,
        score_s=t2 - t1,
        select_s=t3 - t2,
        new_tokens=new_tokens,
        generate_calls=calls,
        score_calls=score_calls,
        kept=kept,
    )


# -- (b) generation throughput ------------------------------------------------------------------------------------


def ours_generate(setup: Setup) -> tuple[float, int]:
    torch.manual_seed(setup.seed)
    t0 = time.perf_counter()
    generation = setup.policy.generate(
        setup.conditioned,
        num_return_sequences=setup.samples,
        max_new_tokens=setup.max_new_tokens,
        min_new_tokens=setup.max_new_tokens,
        **setup.sampling,
    )
    return time.perf_counter() - t0, generation.new_tokens


def bare_generate(setup: Setup, hf_model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    tokenizer = setup.policy.tokenizer
    torch.manual_seed(setup.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        output = hf_model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=setup.max_new_tokens,
            min_new_tokens=setup.max_new_tokens,
            do_sample=True,
            num_return_sequences=setup.samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **setup.sampling,
        )
    seconds = time.perf_counter() - t0
    return seconds, int(output.shape[0] * (output.shape[1] - ids.shape[1]))


# -- driver -------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="B, prompts per round (default 8; --quick 2)")
    parser.add_argument("--samples", type=int, default=None, help="M, candidates per prompt (default 4; --quick 2)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="new tokens per candidate (default 48; --quick 16)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed repetitions of each side; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: B=2, M=2, 16 new tokens")
    args = parser.parse_args(argv)
    quick = {"prompts": 2, "samples": 2, "max_new_tokens": 16}
    full = {"prompts": 8, "samples": 4, "max_new_tokens": 48}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("prompts", "samples", "max_new_tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def build_setup(args: argparse.Namespace) -> Setup:
    all_prompts = load_prompts("builtin:train")
    if args.prompts > len(all_prompts):
        raise SystemExit(f"--prompts: only {len(all_prompts)} built-in training prompts")
    prompts = [p.text for p in all_prompts[: args.prompts]]
    model_config = ModelConfig()
    policy = Policy(model_config, LoraConfig())
    objective_configs: list[ObjectiveConfig] = [
        ReadabilityObjective(name="readability"),
        RelevanceObjective(name="relevance"),
    ]
    objectives = build_objectives(objective_configs, str(policy.device))
    names = [o.name for o in objectives]
    weights = np.random.default_rng(args.seed).dirichlet(np.ones(len(names)), size=len(prompts))
    conditioned = [
        conditioned_prompt(policy.tokenizer, p, names, w, model_config.use_chat_template)
        for p, w in zip(prompts, weights, strict=True)
    ]
    algo = AlgorithmConfig()
    return Setup(
        policy=policy,
        objectives=objectives,
        names=names,
        prompts=prompts,
        conditioned=conditioned,
        weights=weights,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        sampling={"temperature": algo.temperature, "top_p": algo.top_p, "top_k": algo.top_k},
        guard=algo.max_repeated_ngram_share,
        seed=args.seed,
    )


def warm_up(setup: Setup, hf_model: Any) -> None:
    """Every timed code path once, small: first-call costs (allocations, lazy inits) stay out of the timings."""
    policy, tokenizer = setup.policy, setup.policy.tokenizer
    policy.generate(setup.conditioned[:2], num_return_sequences=2, max_new_tokens=4, min_new_tokens=4)
    ids, mask = policy._left_padded([policy.encode_prompt(t) for t in setup.conditioned[:2]])
    with torch.no_grad():
        for model, batch, batch_mask in ((hf_model, ids, mask), (policy.model, ids[:1], mask[:1])):
            model.generate(
                input_ids=batch,
                attention_mask=batch_mask,
                max_new_tokens=4,
                do_sample=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
    pairs = (setup.prompts[:2], ["A short warm-up answer.", "Another answer, for warming up."])
    for objective in setup.objectives:
        objective.score(*pairs)
        objective.score(pairs[0][:1], pairs[1][:1])


def verdict(ratio: float, target: float) -> str:
    return "target met" if ratio >= target else "target NOT met"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    setup = build_setup(args)
    load_s = time.perf_counter() - started
    hf_model = setup.policy.model.get_base_model()
    ids, mask = setup.policy._left_padded([setup.policy.encode_prompt(t) for t in setup.conditioned])
    b, m, t = len(setup.prompts), setup.samples, setup.max_new_tokens
    print(
        f"engine bench: B={b} prompts × M={m} samples × {t} new tokens, K={len(setup.names)} objectives "
        f"({', '.join(setup.names)}), repeats={args.repeats}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {setup.policy.device}, model dtype {setup.policy.dtype}; "
        f"load {load_s:.1f} s"
    )
    print(f"padded prompt batch: {tuple(ids.shape)} tokens; sampling {setup.sampling}")
    load_before = os.getloadavg()
    print(f"load average before timing: {load_before[0]:.2f} (other work on the machine slows both sides)", flush=True)
    warm_up(setup, hf_model)

    ours_runs: list[RoundResult] = []
    ref_runs: list[RoundResult] = []
    ours_gen: list[tuple[float, int]] = []
    bare_gen: list[tuple[float, int]] = []
    for repeat in range(args.repeats):
        # Alternate which side goes first, so that drift on a shared machine does not favour one side.
        first_ours = repeat % 2 == 0
        for side in ("ours", "reference") if first_ours else ("reference", "ours"):
            result = ours_round(setup) if side == "ours" else reference_round(setup)
            (ours_runs if side == "ours" else ref_runs).append(result)
            print(f"  [{repeat + 1}/{args.repeats}] (a) {side:<9} {result.seconds:8.2f} s", flush=True)
        for side in ("ours", "bare") if first_ours else ("bare", "ours"):
            timing = ours_generate(setup) if side == "ours" else bare_generate(setup, hf_model, ids, mask)
            (ours_gen if side == "ours" else bare_gen).append(timing)
            print(f"  [{repeat + 1}/{args.repeats}] (b) {side:<9} {timing[0]:8.2f} s", flush=True)

    def median(values: Sequence[float]) -> float:
        return float(statistics.median(values))

    def summary(runs: list[RoundResult]) -> dict[str, Any]:
        return {
            "seconds": median([r.seconds for r in runs]),
            "generate_s": median([r.generate_s for r in runs]),
            "score_s": median([r.score_s for r in runs]),
            "select_s": median([r.select_s for r in runs]),
            "new_tokens": runs[-1].new_tokens,
            "generate_calls": runs[-1].generate_calls,
            "score_calls": runs[-1].score_calls,
            "all_seconds": [round(r.seconds, 3) for r in runs],
        }

    ours_a, ref_a = summary(ours_runs), summary(ref_runs)
    round_ratio = ref_a["seconds"] / ours_a["seconds"]
    ours_b_s, bare_b_s = median([s for s, _ in ours_gen]), median([s for s, _ in bare_gen])
    ours_b_tokens, bare_b_tokens = ours_gen[-1][1], bare_gen[-1][1]
    ours_tps, bare_tps = ours_b_tokens / ours_b_s, bare_b_tokens / bare_b_s
    throughput_ratio = ours_tps / bare_tps

    load_after = os.getloadavg()
    print()
    print(f"load average after timing: {load_after[0]:.2f}")
    print(
        f"(a) rejection-sampling round: {b}×{m} candidates, generate + score ({len(setup.names)} objectives) + select"
    )
    header = f"    {'':<11}{'total s':>9}{'generate s':>12}{'score s':>9}{'select s':>10}{'new tokens':>12}"
    print(header + f"{'generate calls':>16}{'score calls':>13}")
    for label, s in (("ours", ours_a), ("reference", ref_a)):
        print(
            f"    {label:<11}{s['seconds']:>9.2f}{s['generate_s']:>12.2f}{s['score_s']:>9.3f}{s['select_s']:>10.4f}"
            f"{s['new_tokens']:>12}{s['generate_calls']:>16}{s['score_calls']:>13}"
        )
    gen_ratio = ref_a["generate_s"] / ours_a["generate_s"]
    score_ratio = ref_a["score_s"] / ours_a["score_s"]
    print(f"    reference / ours: {round_ratio:.2f}× (generate {gen_ratio:.2f}×, score {score_ratio:.2f}×)")
    print(f"    {verdict(round_ratio, ROUND_TARGET)} (target ≥ {ROUND_TARGET:g}×)")
    print()
    print(f"(b) generation throughput: {b}×{m} sequences × {t} new tokens, padded batch {tuple(ids.shape)}")
    print(f"    ours (Policy.generate)          {ours_b_s:8.2f} s {ours_b_tokens:6d} tokens {ours_tps:8.1f} tokens/s")
    print(f"    bare (HF model.generate)        {bare_b_s:8.2f} s {bare_b_tokens:6d} tokens {bare_tps:8.1f} tokens/s")
    print(f"    ours / bare: {throughput_ratio:.3f}")
    print(f"    {verdict(throughput_ratio, THROUGHPUT_TARGET)} (target ≥ {THROUGHPUT_TARGET:g})")

    report = {
        "bench": "engine",
        "config": {
            "prompts": b,
            "samples": m,
            "max_new_tokens": t,
            "repeats": args.repeats,
            "seed": args.seed,
            "objectives": setup.names,
            "sampling": setup.sampling,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(setup.policy.device),
            "torch": torch.__version__,
            "load_average_before": round(load_before[0], 2),
            "load_average_after": round(load_after[0], 2),
        },
        "round": {
            "ours": ours_a,
            "reference": ref_a,
            "ratio": round(round_ratio, 3),
            "target": ROUND_TARGET,
            "target_met": round_ratio >= ROUND_TARGET,
        },
        "throughput": {
            "ours": {"seconds": ours_b_s, "new_tokens": ours_b_tokens, "tokens_per_s": ours_tps},
            "bare": {"seconds": bare_b_s, "new_tokens": bare_b_tokens, "tokens_per_s": bare_tps},
            "ratio": round(throughput_ratio, 3),
            "target": THROUGHPUT_TARGET,
            "target_met": throughput_ratio >= THROUGHPUT_TARGET,
        },
    }
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
