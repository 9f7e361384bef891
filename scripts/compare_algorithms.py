"""Meal against its baseline and ablations on equal compute, over several seeds, judged on held-out prompts: a thin
client of `meal experiment run` (meal_core/experiment.py, meal_core/experiment_runs.py), kept for the commands in
docs/results.md.

    .venv/bin/python scripts/compare_algorithms.py --config examples/results.yaml --seeds 0 1 2 --out runs/results

Every run uses the same config but for `algorithm.name` (the report says if compute differs); for one seed the
algorithms share their calibration, probe and evaluation samples. Each run is finally evaluated on a held-out prompt
file (`--prompts`) into <out>/<algorithm>/seed-<s>/heldout.json; the summary (also <out>/summary.md) gives, per
algorithm, mean ± sd and a 95 % interval over seeds, and each algorithm against `meal` paired by seed (a paired
t-test). Finished runs are skipped, so an interrupted comparison picks up where it stopped.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from meal_core.config import load_config  # noqa: E402
from meal_core.experiment import ALGORITHMS, format_report, parse_experiment  # noqa: E402
from meal_core.experiment_runs import SHOWN, run_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("examples/results.yaml"))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--prompts", default="examples/heldout_prompts.txt", help="held-out prompt file")
    parser.add_argument("--samples-per-weight", type=int, help="held-out responses per prompt and weight")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    base = load_config(args.config).model_dump(mode="json")
    experiment = parse_experiment(
        {
            "base": base,
            "seeds": args.seeds,
            "algorithms": args.algorithms,
            "baseline": "meal" if "meal" in args.algorithms else args.algorithms[0],
        }
    )
    found = run_experiment(experiment, args.out, args.prompts, args.samples_per_weight, train=not args.summary_only)
    table = format_report(found, SHOWN)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
