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
    lines = []
    objectives: list[str] = []
    rows = []
    for algorithm in algorithms:
        start, final, control, probe, correlation = [], [], {}, {}, []  # type: ignore[var-annotated]
        for seed in seeds:
            run_dir = out / f"{algorithm}-seed{seed}"
            evaluations = read_jsonl(run_dir / "evaluations.jsonl")
            if not evaluations or evaluations[-1]["step"] == 0:
                continue
            correlation += [
                row["value"]
                for row in read_jsonl(run_dir / "metrics.jsonl")
                if row["key"].startswith("calibration/correlation/")
            ][:1]
            objectives = evaluations[-1]["objectives"]
            if evaluations[0]["step"] == 0:
                start.append(evaluations[0]["hypervolume"])
            final.append(evaluations[-1]["hypervolume"])
            for name in objectives:
                control.setdefault(name, []).append(evaluations[-1]["controllability"][name])
                probe.setdefault(name, []).append(evaluations[-1]["probe"].get(name, 0.0))
        rows.append((algorithm, len(final), correlation, start, final, control, probe))
    header = ["algorithm", "seeds", "base corr.", "HV step 0", "HV final", "ΔHV"]
    header += [f"control {n}" for n in objectives] + [f"probe {n}" for n in objectives]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for algorithm, count, correlation, start, final, control, probe in rows:
        delta = [f - s for s, f in zip(start, final, strict=False)]
        cells = [algorithm, str(count), mean_sd(correlation), mean_sd(start), mean_sd(final), mean_sd(delta)]
        cells += [mean_sd(control.get(n, [])) for n in objectives] + [mean_sd(probe.get(n, [])) for n in objectives]
        lines.append("| " + " | ".join(cells) + " |")
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
