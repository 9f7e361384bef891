"""Meal against its baseline and ablations on equal compute, over several seeds, judged on held-out prompts.

    .venv/bin/python scripts/compare_algorithms.py --config examples/results.yaml --seeds 0 1 2 --out runs/results

Every run uses the same config but for `algorithm.name`: the same prompts per iteration, samples per prompt, response
length, corner rows, labels per group and policy steps, so each algorithm generates the same number of responses
and takes the same optimizer steps (the table shows both). For one seed the algorithms share their calibration,
probe and evaluation samples: those are drawn from random streams of their own (meal_core/trainer.py).

After training, each run is evaluated on a held-out prompt file it never saw (`--prompts`, default
examples/heldout_prompts.txt) and the result is kept in <run>/heldout.json. The summary gives mean ± sd over seeds
and, for every algorithm against `meal`, a paired t-test over seeds of the held-out hypervolume and mean
controllability. Finished runs and evaluations are skipped, so an interrupted comparison picks up where it
stopped. The summary is printed and written to <out>/summary.md; docs/results.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scipy.stats import ttest_rel  # noqa: E402

from meal_core import metric_keys as keys  # noqa: E402
from meal_core.config import load_config  # noqa: E402
from meal_core.data import load_prompts  # noqa: E402
from meal_core.recorder import ConsoleProgress, JsonlRecorder, MultiRecorder, read_jsonl  # noqa: E402
from meal_core.trainer import Trainer  # noqa: E402

ALGORITHMS = ["meal", "static", "meal_no_meta", "meal_no_learnable"]
HELDOUT = "heldout.json"


def run_one(config_path: Path, algorithm: str, seed: int, run_dir: Path, prompts: str, samples: int | None) -> None:
    config = load_config(config_path)
    config = config.model_copy(
        update={"seed": seed, "algorithm": config.algorithm.model_copy(update={"name": algorithm})}
    )
    evaluations = read_jsonl(run_dir / "evaluations.jsonl")
    trainer: Trainer | None = None
    if not evaluations or evaluations[-1]["step"] != config.iterations:
        started = time.monotonic()
        jsonl = JsonlRecorder(run_dir)
        trainer = Trainer(config, run_dir, MultiRecorder(jsonl, ConsoleProgress()))
        if trainer.resume():
            print(f"{run_dir}: resuming at iteration {trainer.iteration}")
        trainer.train()
        jsonl.close()
        (run_dir / "minutes.txt").write_text(f"{(time.monotonic() - started) / 60:.2f}\n")
    if (run_dir / HELDOUT).is_file():
        return
    if trainer is None:
        trainer = Trainer(config, run_dir)
        trainer.resume()
    held_out = load_prompts(prompts)
    result = trainer.evaluation(held_out, samples or config.eval.samples_per_weight, trainer.iteration)
    (run_dir / HELDOUT).write_text(json.dumps({"prompts": prompts, **result.to_json()}))


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def figures(run_dir: Path) -> dict[str, float] | None:
    """One run's row: compute spent, in-run and held-out evaluation figures."""
    evaluations = read_jsonl(run_dir / "evaluations.jsonl")
    if len(evaluations) < 2 or not (run_dir / HELDOUT).is_file():
        return None
    held_out = json.loads((run_dir / HELDOUT).read_text())
    first, last = evaluations[0], evaluations[-1]
    metrics: dict[str, list[float]] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        metrics.setdefault(row["key"], []).append(row["value"])
    names = held_out["objectives"]
    found = {
        "responses generated": sum(metrics.get(keys.GENERATED_RESPONSES, [])),
        "policy steps": sum(metrics.get(keys.POLICY_STEPS, [])),
        "HV step 0": first["hypervolume"],
        "HV final": last["hypervolume"],
        "ΔHV": last["hypervolume"] - first["hypervolume"],
        "held-out HV": held_out["hypervolume"],
        "held-out control (mean)": statistics.mean(held_out["controllability"][n] for n in names),
        "held-out degenerate": held_out["degenerate_share"],
    }
    for name in names:
        found[f"held-out control {name}"] = held_out["controllability"][name]
        found[f"held-out grid control {name}"] = held_out["controllability_grid"][name]
        found[f"held-out null {name}"] = held_out["controllability_null"][name]
    moved = metrics.get("pref_weight_moved")
    if moved:
        found["weights moved (TV)"] = moved[-1]
    auto = held_out.get("auto_weights") or {}
    if auto:
        found["auto KL net − uniform"] = auto["kl_net"] - auto["kl_uniform"]
    minutes = run_dir / "minutes.txt"
    if minutes.is_file():
        found["minutes"] = float(minutes.read_text())
    return found


def summarise(out: Path, algorithms: list[str], seeds: list[int]) -> str:
    table: dict[str, dict[int, dict[str, float]]] = {}
    for algorithm in algorithms:
        for seed in seeds:
            row = figures(out / f"{algorithm}-seed{seed}")
            if row is not None:
                table.setdefault(algorithm, {})[seed] = row
    if not table:
        return "no finished runs yet"
    columns = list(next(iter(next(iter(table.values())).values())).keys())
    lines = ["| algorithm | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for algorithm, by_seed in table.items():
        cells = [mean_sd([row[c] for row in by_seed.values() if c in row]) for c in columns]
        lines.append(f"| {algorithm} | {len(by_seed)} | " + " | ".join(cells) + " |")
    lines += ["", paired_tests(table)]
    return "\n".join(lines)


def paired_tests(table: dict[str, dict[int, dict[str, Any]]]) -> str:
    """meal − other, paired by seed: mean ± sd of the differences and a paired t-test (two-sided)."""
    if "meal" not in table:
        return ""
    lines = [
        "| meal − … (paired by seed) | seeds | held-out HV difference | p | held-out control difference | p |",
        "|---|---|---|---|---|---|",
    ]
    for other, by_seed in table.items():
        if other == "meal":
            continue
        seeds = sorted(set(by_seed) & set(table["meal"]))
        cells = []
        for column in ("held-out HV", "held-out control (mean)"):
            mine = [table["meal"][s][column] for s in seeds]
            theirs = [by_seed[s][column] for s in seeds]
            differences = [a - b for a, b in zip(mine, theirs, strict=True)]
            p = ttest_rel(mine, theirs).pvalue if len(seeds) > 1 else float("nan")
            cells += [mean_sd(differences), f"{p:.3f}"]
        lines.append(f"| {other} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("examples/results.yaml"))
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--prompts", default="examples/heldout_prompts.txt", help="held-out prompt file")
    parser.add_argument("--samples-per-weight", type=int, help="held-out responses per prompt and weight")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        for seed in args.seeds:  # seed-major: every algorithm gets its seeds early if the comparison is cut short
            for algorithm in args.algorithms:
                print(f"== {algorithm}, seed {seed}")
                run_dir = args.out / f"{algorithm}-seed{seed}"
                run_one(args.config, algorithm, seed, run_dir, args.prompts, args.samples_per_weight)
    table = summarise(args.out, args.algorithms, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
