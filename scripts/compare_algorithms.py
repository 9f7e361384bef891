"""Train every algorithm on every seed with one config, then summarise hypervolume, controllability and probe.

    .venv/bin/python scripts/compare_algorithms.py --config examples/results.yaml --seeds 0 1 2 --out runs/results

Finished runs are skipped, so an interrupted comparison picks up where it stopped. The summary table is printed
and written to <out>/summary.md; docs/results.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from meal_core.config import load_config  # noqa: E402
from meal_core.recorder import ConsoleProgress, JsonlRecorder, MultiRecorder, read_jsonl  # noqa: E402
from meal_core.trainer import Trainer  # noqa: E402

ALGORITHMS = ["meal", "static", "meal_no_meta", "meal_no_learnable"]


def run_one(config_path: Path, algorithm: str, seed: int, run_dir: Path) -> None:
    config = load_config(config_path)
    config = config.model_copy(
        update={"seed": seed, "algorithm": config.algorithm.model_copy(update={"name": algorithm})}
    )
    evaluations = read_jsonl(run_dir / "evaluations.jsonl")
    if evaluations and evaluations[-1]["step"] == config.iterations:
        return
    jsonl = JsonlRecorder(run_dir)
    trainer = Trainer(config, run_dir, MultiRecorder(jsonl, ConsoleProgress()))
    if trainer.resume():
        print(f"{run_dir}: resuming at iteration {trainer.iteration}")
    trainer.train()
    jsonl.close()


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def summarise(out: Path, algorithms: list[str], seeds: list[int]) -> str:
    """One row per algorithm: mean ± sd over seeds of the first (step 0) and last evaluation."""
    objectives: list[str] = []
    rows = []
    for algorithm in algorithms:
        values: dict[str, list[float]] = {}
        for seed in seeds:
            run_dir = out / f"{algorithm}-seed{seed}"
            evaluations = read_jsonl(run_dir / "evaluations.jsonl")
            if len(evaluations) < 2:
                continue
            first, last = evaluations[0], evaluations[-1]
            objectives = last["objectives"]
            correlation = [
                r["value"] for r in read_jsonl(run_dir / "metrics.jsonl") if "calibration/correlation/" in r["key"]
            ]
            found = {
                "base corr.": correlation[0] if correlation else float("nan"),
                "HV step 0": first["hypervolume"],
                "HV final": last["hypervolume"],
                "ΔHV": last["hypervolume"] - first["hypervolume"],
            }
            for name in objectives:
                found[f"control {name} step 0"] = first["controllability"][name]
                found[f"control {name} final"] = last["controllability"][name]
            # With K = 2 the probe of both objectives is the same contrast, so one column per evaluation suffices.
            found["probe step 0"] = first["probe"].get(objectives[0], float("nan"))
            found["probe final"] = last["probe"].get(objectives[0], float("nan"))
            for column, value in found.items():
                values.setdefault(column, []).append(value)
        rows.append((algorithm, values))
    columns = list(next((v for _, v in rows if v), {}).keys())
    lines = ["| algorithm | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for algorithm, values in rows:
        count = len(values.get("HV final", []))
        lines.append(f"| {algorithm} | {count} | " + " | ".join(mean_sd(values.get(c, [])) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("examples/results.yaml"))
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        for seed in args.seeds:  # seed-major: every algorithm gets its seeds early if the comparison is cut short
            for algorithm in args.algorithms:
                print(f"== {algorithm}, seed {seed}")
                run_one(args.config, algorithm, seed, args.out / f"{algorithm}-seed{seed}")
    table = summarise(args.out, args.algorithms, args.seeds)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
