"""An experiment trained headless into a folder tree: OUT/<variant>/seed-<s>/ per run, each a `meal train` run
folder (config.json, metrics.jsonl, evaluations.jsonl, checkpoints/) plus `finished.json` once it trained to the
end and `heldout.json`, its final evaluation on a held-out prompt file (the `meal eval --prompts` path). `attempts.json`
holds the wall minutes of every attempt at training it, so a run killed and resumed reports all of them.

Finished runs and held-out evaluations are skipped and unfinished runs resume from their last checkpoint, so an
interrupted experiment picks up where it stopped. `meal experiment run` drives this module.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meal_core.config import ConfigError
from meal_core.enums import RunStatus
from meal_core.evaluation import HeldOutResult
from meal_core.experiment import (
    CONTROL_FINAL,
    HELD_OUT_CONTROL,
    HELD_OUT_DEGENERATE,
    HELD_OUT_HV,
    HV_FINAL,
    HV_GAIN,
    ExperimentConfig,
    ExperimentReport,
    VariantRun,
    baseline_of,
    compute_report,
    format_report,
    report,
    run_figures,
    series_of,
)
from meal_core.provenance import dict_differences
from meal_core.recorder import ConsoleProgress, JsonlRecorder, MultiRecorder, NullRecorder, read_jsonl

if TYPE_CHECKING:
    from meal_core.trainer import Trainer

EXPERIMENT_FILE = "experiment.json"
FINISHED = "finished.json"
HELDOUT = "heldout.json"
ATTEMPTS = "attempts.json"
MINUTES = "minutes"
RUNS_CSV = "runs.csv"  # each finished run's figures, beside report.md, .json and .csv
# What the printed table shows; report.json and report.csv hold every figure, runs.csv each run's.
SHOWN = [HV_FINAL, HV_GAIN, CONTROL_FINAL, HELD_OUT_HV, HELD_OUT_CONTROL, HELD_OUT_DEGENERATE, MINUTES]


def run_directory(out: Path, run: VariantRun) -> Path:
    return out / run.variant / f"seed-{run.seed}"


class AttemptClock(NullRecorder):
    """The wall minutes of every attempt at training a run, in its folder; this attempt's entry is rewritten after
    every iteration, so an attempt that was killed still counts up to its last iteration when a later one finishes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ATTEMPTS
        self.earlier: list[float] = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.started = time.monotonic()

    def attempts(self) -> list[float]:
        """Every attempt's minutes, this one's up to now, as written to the folder."""
        found = [*self.earlier, (time.monotonic() - self.started) / 60]
        partial = self.path.with_suffix(".partial")  # then renamed: a kill mid-write leaves the last whole list
        partial.write_text(json.dumps(found))
        partial.replace(self.path)
        return found

    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        self.attempts()


def check_stored(directory: Path, run: VariantRun) -> None:
    """A folder that already holds a run must hold this run: the same config (a changed experiment is refused)."""
    path = directory / "config.json"
    if path.is_file():
        changed = dict_differences(json.loads(path.read_text()), run.config_dict())
        if changed:
            raise ConfigError(f"{directory} holds a run with another config (differs in: {', '.join(changed)})")


def train_one(
    run: VariantRun,
    directory: Path,
    prompts: str | None,
    samples: int | None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    max_prompts: int | None = None,
) -> str:
    """Train (or resume) one run to its end, then evaluate it on `prompts` (the first `max_prompts` of them; all
    without); what it did: 'skipped', 'evaluated' or 'trained'."""
    from meal_core.trainer import Trainer

    check_stored(directory, run)
    trainer: Trainer | None = None
    did = "skipped"
    if not (directory / FINISHED).is_file():
        jsonl = JsonlRecorder(directory)
        clock = AttemptClock(directory)
        recorder = MultiRecorder(jsonl, clock, *([ConsoleProgress()] if progress else []))
        trainer = Trainer(run.config, directory, recorder)
        if trainer.resume():
            log(f"{run.name}: resuming at iteration {trainer.iteration}")
        try:
            status = trainer.train()
        finally:
            jsonl.close()
        if status != RunStatus.SUCCEEDED:
            raise ConfigError(f"{run.name}: training ended {status}")
        attempts = clock.attempts()
        finished = {"iterations": trainer.iteration, MINUTES: sum(attempts), "attempts": len(attempts)}
        (directory / FINISHED).write_text(json.dumps(finished))
        did = "trained"
    if prompts is None or (directory / HELDOUT).is_file():
        return did
    if trainer is None:
        trainer = Trainer(run.config, directory)
        if not trainer.resume():
            raise ConfigError(f"{run.name}: finished, but {directory} holds no checkpoint to evaluate")
    result = held_out_evaluation(trainer, prompts, samples, max_prompts)
    (directory / HELDOUT).write_text(json.dumps(result.to_json()))
    return "trained" if did == "trained" else "evaluated"


def held_out_evaluation(
    trainer: Trainer, prompts: str, samples_per_weight: int | None, max_prompts: int | None
) -> HeldOutResult:
    """A trained run's final evaluation on held-out prompts (the first `max_prompts` of them; `samples_per_weight`
    defaults to the run's eval setting), as `meal experiment run` and the panel's worker both take it; its
    progress is the evaluating phase's (the run page's "evaluating k/N")."""
    from meal_core.data import load_prompts

    per_weight = samples_per_weight or trainer.config.eval.samples_per_weight
    held_out = load_prompts(prompts, max_prompts)
    result = trainer.evaluation(held_out, per_weight, trainer.iteration, trainer.evaluating(held_out, per_weight))
    return HeldOutResult.of(result, prompts, per_weight)


def read_run(directory: Path) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]] | None:
    """A finished run's figures and series, from its folder; None until it finished."""
    finished = directory / FINISHED
    if not finished.is_file():
        return None
    evaluations = {row["step"]: row for row in read_jsonl(directory / "evaluations.jsonl")}  # a resume's repeat: last
    points: dict[tuple[int, str], float] = {}
    for row in read_jsonl(directory / "metrics.jsonl"):
        points[(row["step"], row["key"])] = row["value"]
    rows = sorted((step, key, value) for (step, key), value in points.items())
    metrics: dict[str, list[float]] = {}
    for _, key, value in rows:
        metrics.setdefault(key, []).append(value)
    held_out = json.loads((directory / HELDOUT).read_text()) if (directory / HELDOUT).is_file() else None
    ordered = [evaluations[s] for s in sorted(evaluations)]
    figures = run_figures(ordered, metrics, held_out)
    figures[MINUTES] = float(json.loads(finished.read_text()).get(MINUTES, math.nan))
    return figures, series_of(ordered, rows)


def collect(out: Path, experiment: ExperimentConfig, runs: list[VariantRun]) -> ExperimentReport:
    results: dict[str, dict[int, dict[str, float]]] = {}
    series: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    for run in runs:
        found = read_run(run_directory(out, run))
        if found is not None:
            results.setdefault(run.variant, {})[run.seed] = found[0]
            series.setdefault(run.variant, {})[run.seed] = found[1]
    return report(results, baseline_of(experiment, runs), series)


def report_csv(found: ExperimentReport) -> str:
    """One row per variant and figure: the table, and the paired difference against the baseline beside it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["variant", "figure", "n", "mean", "sd", "low", "high", "diff_n", "diff", "diff_low", "diff_high", "p"]
    )
    for variant, row in found.table.items():
        for figure, s in row.items():
            d = found.comparison.get(variant, {}).get(figure)
            paired = [str(d.n), *(_number(v) for v in (d.mean_difference, d.low, d.high, d.p))] if d else [""] * 5
            writer.writerow([variant, figure, s.n, *(_number(v) for v in (s.mean, s.sd, s.low, s.high)), *paired])
    return buffer.getvalue()


def runs_csv(found: ExperimentReport) -> str:
    """One row per finished run (variant, seed), one column per figure: what the table summarises."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "seed", *found.figures])
    for variant, by_seed in found.runs.items():
        for seed, figures in sorted(by_seed.items()):
            writer.writerow([variant, seed, *(_number(figures.get(f, math.nan)) for f in found.figures)])
    return buffer.getvalue()


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


def compute_lines(runs: list[VariantRun]) -> list[str]:
    _, differences = compute_report(runs)
    if not differences:
        return [
            "equal budgets: every variant's config commits it to the same responses, token cap and policy steps "
            "(what each run spent: training_tokens and policy_steps in the report)"
        ]
    lines = ["compute differs between variants:"]
    for d in differences:
        values = ", ".join(f"{v} {n}" for v, n in d.values.items())
        ratio = f" (max / min {d.ratio:.2f})" if math.isfinite(d.ratio) else ""  # some take none: no ratio
        lines.append(f"  {d.quantity}: {values}{ratio}")
    return lines


def run_experiment(
    experiment: ExperimentConfig,
    out: Path,
    prompts: str | None = None,
    samples: int | None = None,
    log: Callable[[str], None] = print,
    train: bool = True,
    progress: bool = True,
    only: list[str] | None = None,
) -> ExperimentReport:
    """Every run into `out` (seed-major), or only those of the variants `only` names (processes or machines that
    share a folder each train their part), then the report of all that is there, also written to out/report.md,
    .json and .csv. Without `prompts`, the experiment's own `held_out` (if any) names the held-out prompts and
    samples per weight."""
    runs = experiment.expand()
    if only:
        variants = {run.variant for run in runs}
        unknown = [name for name in only if name not in variants]
        if unknown:
            raise ConfigError(f"no variant {', '.join(unknown)}; the variants are {', '.join(sorted(variants))}")
    max_prompts = None  # --prompts: the whole file, as `meal eval --prompts` reads it
    if prompts is None and experiment.held_out is not None:
        prompts, samples = experiment.held_out.prompts, experiment.held_out.samples_per_weight
        max_prompts = experiment.held_out.max_prompts
    out.mkdir(parents=True, exist_ok=True)
    stored = out / EXPERIMENT_FILE
    if not stored.is_file():
        stored.write_text(json.dumps(experiment.model_dump(mode="json"), indent=2))
    for line in compute_lines(runs):
        log(line)
    if train:
        mine = [run for run in runs if not only or run.variant in only]
        for index, run in enumerate(mine, 1):
            log(f"== {run.name} ({index}/{len(mine)})")
            did = train_one(run, run_directory(out, run), prompts, samples, log, progress, max_prompts)
            if did == "skipped":
                log(f"{run.name}: finished before, skipped")
    found = collect(out, experiment, runs)
    (out / "report.json").write_text(json.dumps(found.to_json(), indent=2))
    (out / "report.csv").write_text(report_csv(found))
    (out / RUNS_CSV).write_text(runs_csv(found))
    (out / "report.md").write_text(format_report(found) + "\n")
    return found


def copy_records(out: Path, destination: Path) -> list[str]:
    """The finished runs' records without their checkpoints (kilobytes a run: to keep in git, or to send), with the
    experiment and its report. Enough for `meal experiment report`, and for a later `meal experiment run` into
    `destination` to skip those runs and train only the rest. The runs copied, by name."""
    experiment = load_experiment_folder(out)
    if destination.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"{destination} is {out} or inside it: copy the records to another folder")
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in [out / EXPERIMENT_FILE, out / RUNS_CSV, *(out / f"report.{kind}" for kind in ("md", "json", "csv"))]:
        if path.is_file():
            shutil.copy2(path, destination / path.name)
    runs = [(run, run_directory(out, run)) for run in experiment.expand()]
    held_out = experiment.held_out is not None or any((source / HELDOUT).is_file() for _, source in runs)
    for run, source in runs:
        if not (source / FINISHED).is_file() or (held_out and not (source / HELDOUT).is_file()):
            continue  # still to train or to evaluate: it needs its checkpoints
        target = run_directory(destination, run)
        target.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.is_file():  # checkpoints/ is a folder
                shutil.copy2(path, target / path.name)
        copied.append(run.name)
    return copied


def load_experiment_folder(out: Path) -> ExperimentConfig:
    from meal_core.experiment import parse_experiment

    path = out / EXPERIMENT_FILE
    if not path.is_file():
        raise ConfigError(f"{out} holds no experiment ({EXPERIMENT_FILE})")
    data: Any = json.loads(path.read_text())
    return parse_experiment(data)
