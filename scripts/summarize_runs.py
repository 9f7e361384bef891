"""One table row per run directory: what the run was (objectives, conditioning, labels, base loss, M, iterations)
and what its last evaluation measured (controllability per response / over the grid / null, hypervolume,
degenerate share), with the label-advantage correlation of its last iterations and the minutes it took.

    .venv/bin/python scripts/summarize_runs.py runs/search/*

docs/results.md ("The search") is this script's output for the runs listed there.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from meal_core import metric_keys as keys
from meal_core.recorder import read_jsonl


def row(run_dir: Path) -> str | None:
    config_path, evaluations = run_dir / "config.json", read_jsonl(run_dir / "evaluations.jsonl")
    if not config_path.is_file() or not evaluations:
        return None
    config = json.loads(config_path.read_text())
    algorithm, last = config["algorithm"], evaluations[-1]
    names = last["objectives"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    label_corr = [
        r["value"]
        for r in metrics
        if r["key"].startswith(keys.LABEL_ADVANTAGE_CORR.prefix) and r["step"] > last["step"] - 5
    ]
    times = [r["time"] for r in metrics]
    minutes = (max(times) - min(times)) / 60 if times else float("nan")

    def per_objective(figures: dict[str, float] | None, digits: str = "+.2f") -> str:
        return " / ".join(format((figures or {}).get(n, float("nan")), digits) for n in names)

    cells = [
        run_dir.name,
        " vs ".join(names),
        config["model"].get("conditioning", "tag") + (" + shared" if config["lora"].get("shared") else ""),
        f"{algorithm.get('labels', 'own')}, corners {algorithm.get('corner_share', 0):g}",
        algorithm.get("base_loss", "sft"),
        str(algorithm["samples_per_prompt"]),
        f"{last['step']}",
        f"{statistics.mean(label_corr):+.2f}" if label_corr else "–",
        per_objective(last["controllability"]),
        per_objective(last.get("controllability_grid")),
        per_objective(last.get("controllability_null"), ".2f"),
        f"{last['hypervolume']:.2f} (from {evaluations[0]['hypervolume']:.2f})",
        f"{100 * last.get('degenerate_share', 0.0):.1f} %",
        f"{minutes:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| run | pair | conditioning | labels | base loss | M | iterations | label–advantage ρ | control per response "
    "| control over grid | null p95 | hypervolume | degenerate | minutes |\n" + "|---" * 14 + "|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print(HEADER)
    for run_dir in args.run_dirs:
        line = row(run_dir)
        if line:
            print(line)


if __name__ == "__main__":
    main()
