"""How objectives correlate on the base model's own responses: do they really conflict?

    .venv/bin/python scripts/objective_correlation.py --config examples/demo.yaml --prompts 60 --samples 4
    .venv/bin/python scripts/objective_correlation.py --config examples/demo.yaml --all-offline

Samples responses under uniform weights (the untrained policy) at the config's response length, drops degenerate
ones, and prints the Pearson correlation of every pair of objectives over all responses and within prompts (each
prompt's mean removed, which is the contrast best-of-M selection works with). With --all-offline the pairs are those
of every offline scorer (one objective of each offline type) instead of the config's. docs/results.md quotes the
output.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from meal_core.config import OBJECTIVE_TYPES, load_config  # noqa: E402
from meal_core.evaluation import linear_correlation  # noqa: E402
from meal_core.selection import DegeneracyGuard  # noqa: E402
from meal_core.trainer import CALIBRATION_STREAM, Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("examples/demo.yaml"))
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--all-offline", action="store_true", help="every offline scorer instead of the config's")
    args = parser.parse_args()
    config = load_config(args.config)
    config = config.model_copy(update={"data": config.data.model_copy(update={"max_train_prompts": None})})
    if args.all_offline:
        offline = [t for t in OBJECTIVE_TYPES if t not in ("hf_classifier", "python")]
        config = config.model_validate({**config.model_dump(), "objectives": [{"name": t, "type": t} for t in offline]})
    trainer = Trainer(config, Path(tempfile.mkdtemp(prefix="meal-corr-")))
    prompts = trainer.train_prompts[: args.prompts]
    candidates, _, oriented = trainer.sample_base(prompts, args.samples, CALIBRATION_STREAM)
    valid = DegeneracyGuard.of(config.algorithm).valid(candidates.texts)
    groups = np.repeat(np.arange(len(prompts)), args.samples)
    within = oriented.copy()
    for g in range(len(prompts)):
        rows = (groups == g) & valid
        if rows.any():
            within[rows] -= oriented[rows].mean(axis=0)
    print(f"{len(prompts)} prompts x {args.samples} responses, {int(valid.sum())} non-degenerate")
    names = trainer.names
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            overall = linear_correlation(oriented[valid, a], oriented[valid, b])
            inside = linear_correlation(within[valid, a], within[valid, b])
            print(f"{names[a]} vs {names[b]}: Pearson {overall:+.3f} overall, {inside:+.3f} within prompts")


if __name__ == "__main__":
    main()
