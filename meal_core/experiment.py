"""Experiments: one base config, a grid of seeds × algorithms × settings, and the statistics that compare them.

Pure: no files, no web. `ExperimentConfig.expand()` gives the runs, each config validated by the run config parser;
`compute()` gives what each variant spends, implied by its config; `summary`, `paired` and `stability` are the
statistics of the experiment page and of `meal experiment run` (defined in docs/algorithm.md, "Experiments").
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scipy.stats import t as student_t
from scipy.stats import ttest_rel

from meal_core import metric_keys as keys
from meal_core.config import MAX_PATH, AlgorithmConfig, ConfigError, RunConfig, Seed, field_errors, parse_config

ALGORITHMS: tuple[str, ...] = get_args(AlgorithmConfig.model_fields["name"].annotation)
MAX_SEEDS = 100
MAX_VARIANTS = 256
MAX_RUNS = 1000
MAX_VARIED_FIELDS = 16
MAX_VARIANT_NAME = 160  # a folder name, and part of its runs' names (<experiment> · <variant>/seed-<n>)
# Set by the experiment itself, never through `vary`.
RESERVED_FIELDS = {"seed": "seeds", "algorithm.name": "algorithms"}


MAX_HELD_OUT_PROMPTS = 10_000


class HeldOutConfig(BaseModel):
    """The final evaluation every run of an experiment gets after its last iteration, on prompts it never trained
    or evaluated on during training: the `meal eval --prompts` path (Trainer.evaluation), once per run."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PATH,
        description="The held-out prompts, named as data.eval_prompts is: a .txt or .jsonl file, a dataset file or "
        "folder, builtin:eval or a hub id. On the server, files only under its uploads folder or MEAL_ALLOWED_ROOTS.",
    )
    samples_per_weight: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Responses per prompt and weight (default: each run's eval.samples_per_weight).",
    )
    max_prompts: int = Field(
        200, ge=1, le=MAX_HELD_OUT_PROMPTS, description="At most this many prompts of the file (its first ones)."
    )


class ExperimentConfig(BaseModel):
    """A base run config and a grid over it: every algorithm × every combination of the `vary` values, each for
    every seed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base: dict[str, Any] = Field(
        default_factory=dict, description="The run config every run starts from (as `meal train` reads it)."
    )
    seeds: list[Seed] | int = Field(
        3,
        description="The seeds each variant runs with: a list, or a count N for seeds 0 … N-1. Variants are paired "
        "by seed: the same seed draws the same calibration and evaluation samples whatever the variant.",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["meal", "static"],
        description=f"algorithm.name of each variant: any of {', '.join(ALGORITHMS)}.",
    )
    vary: dict[str, list[Any]] = Field(
        default_factory=dict,
        max_length=MAX_VARIED_FIELDS,
        description="Dotted config field → the values it takes (e.g. {'algorithm.base_loss': ['sft', "
        "'sft+pairwise']}). Every combination is a variant, for every algorithm.",
    )
    baseline: str | None = Field(
        None, description="The variant the others are compared against (default: the first variant)."
    )
    held_out: HeldOutConfig | None = Field(
        None,
        description="Evaluate every run once more after its last iteration, on these prompts: the report's "
        "held_out_* figures (none without it).",
    )

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | int) -> list[int] | int:
        if isinstance(value, int):
            if not 1 <= value <= MAX_SEEDS:
                raise ValueError(f"a count of seeds must be between 1 and {MAX_SEEDS}")
        elif not value:
            raise ValueError("needs at least one seed")
        elif len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        elif len(value) > MAX_SEEDS:
            raise ValueError(f"at most {MAX_SEEDS} seeds")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one algorithm")
        unknown = [a for a in value if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}")
        if len(set(value)) != len(value):
            raise ValueError("algorithms must be distinct")
        return value

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def expand(self) -> list[VariantRun]:
        return expand(self)


@dataclass(frozen=True)
class VariantRun:
    """One run of an experiment: its variant (name and the settings that make it), its seed and full config."""

    variant: str
    key: dict[str, Any]
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.variant}/seed-{self.seed}"

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


def parse_experiment(data: Any) -> ExperimentConfig:
    """An experiment from a mapping; errors as a ConfigError naming each field."""
    try:
        return ExperimentConfig.model_validate(data if data is not None else {})
    except ValidationError as error:
        raise ConfigError(
            "; ".join(f"{where}: {message}" for where, message in field_errors(error)), field_errors(error)
        ) from None


def _refuse(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}", [(where, message)])


def _locate(tree: dict[str, Any], path: str) -> tuple[Any, str | int]:
    """The container holding the dotted `path` in a dumped config and the leaf's key; ConfigError if there is none."""
    parts = path.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, dict):
            if part not in node:
                raise _refuse(f"vary.{path}", f"no such config field ({where})")
            key: str | int = part
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            key = int(part)
        else:
            raise _refuse(f"vary.{path}", f"no such config field ({where})")
        if depth == len(parts) - 1:
            return node, key
        node = node[key]  # type: ignore[index]
    raise _refuse(f"vary.{path}", "no such config field")  # pragma: no cover - parts is never empty


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _short_names(paths: list[str]) -> dict[str, str]:
    """Each varied field by its last segment, or its whole path where two share one."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (short if last.count(short) == 1 else p) for p, short in zip(paths, last, strict=True)}


def variant_name(algorithm: str, settings: dict[str, Any]) -> str:
    """'meal', or 'meal-base_loss=sft+pairwise' with settings: safe as a folder name."""
    short = _short_names(list(settings))
    return "-".join([algorithm, *(f"{short[p]}={_label(v)}" for p, v in settings.items())])


def _refused_combination(algorithm: str, settings: dict[str, Any], error: ConfigError) -> ConfigError:
    """A variant the run config parser refuses, named by the varied field it trips over (or all of them)."""
    named = ", ".join([f"algorithm.name={algorithm!r}", *(f"{p}={v!r}" for p, v in settings.items())])
    fields = []
    for where, message in error.fields:
        hit = [p for p in settings if where == p or where.startswith(p + ".")]
        if not hit:  # a model-level rule (e.g. top_q × samples_per_prompt): every varied field in its section
            hit = [p for p in settings if where.split(".")[0] == p.split(".")[0]] or list(settings) or ["algorithms"]
        fields += [(f"vary.{p}" if p != "algorithms" else p, f"{named}: {where}: {message}") for p in hit]
    return ConfigError("; ".join(f"{w}: {m}" for w, m in fields), fields)


def expand(experiment: ExperimentConfig) -> list[VariantRun]:
    """Every run, seed-major (each variant gets its first seeds early if the experiment is cut short). Refuses an
    unknown field, an empty list, a reserved field or a value the field refuses, naming the field and value."""
    try:
        base = parse_config(experiment.base).model_dump(mode="json")
    except ConfigError as error:
        fields = [(f"base.{where}", message) for where, message in error.fields]
        raise ConfigError("; ".join(f"{w}: {m}" for w, m in fields), fields) from None
    for path, values in experiment.vary.items():
        if path in RESERVED_FIELDS:
            raise _refuse(f"vary.{path}", f"set by the experiment's {RESERVED_FIELDS[path]}, not by vary")
        _locate(base, path)
        if not values:
            raise _refuse(f"vary.{path}", "needs at least one value")
        if len({repr(v) for v in values}) != len(values):
            raise _refuse(f"vary.{path}", "values must be distinct")
    paths = list(experiment.vary)
    variants = math.prod(len(values) for values in experiment.vary.values()) * len(experiment.algorithms)
    if variants > MAX_VARIANTS:  # counted before the grid is built: 30 fields of 2 values are 10⁹ variants
        raise _refuse("vary", f"{variants} variants; at most {MAX_VARIANTS}")
    combinations = list(itertools.product(*(experiment.vary[p] for p in paths)))
    seeds = experiment.seed_list
    if variants * len(seeds) > MAX_RUNS:
        raise _refuse("seeds", f"{variants * len(seeds)} runs; at most {MAX_RUNS}")
    configs: list[tuple[str, dict[str, Any], RunConfig]] = []
    for algorithm in experiment.algorithms:
        for combination in combinations:
            settings = dict(zip(paths, combination, strict=True))
            tree = parse_config(base).model_dump(mode="json")  # a fresh copy
            tree["algorithm"]["name"] = algorithm
            for path, value in settings.items():
                container, leaf = _locate(tree, path)
                container[leaf] = value
            try:
                config = parse_config(tree)
            except ConfigError as error:
                raise _refused_combination(algorithm, settings, error) from None
            configs.append((variant_name(algorithm, settings), {"algorithm.name": algorithm, **settings}, config))
    names = [name for name, _, _ in configs]
    too_long = [name for name in names if len(name) > MAX_VARIANT_NAME]
    if too_long:
        raise _refuse(
            "vary",
            f"variant name {too_long[0]!r} is over {MAX_VARIANT_NAME} characters: vary fewer fields, or shorter values",
        )
    if len(set(names)) != len(names):
        raise _refuse("vary", "two variants share a name (values that differ only in punctuation)")
    if experiment.baseline is not None and experiment.baseline not in names:
        raise _refuse("baseline", f"no variant {experiment.baseline!r}; the variants are {', '.join(names)}")
    return [
        VariantRun(name, key, seed, config.model_copy(update={"seed": seed}))
        for seed in seeds
        for name, key, config in configs
    ]


def baseline_of(experiment: ExperimentConfig, runs: list[VariantRun]) -> str:
    return experiment.baseline or runs[0].variant


# -- equal compute ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compute:
    """What a run's config commits it to. Training responses and tokens are exact upper bounds (responses are
    exact; tokens stop at max_new_tokens or sooner); policy steps are at most this (fewer when the replay buffer
    has fewer micro-batches than max_policy_steps)."""

    training_responses: int
    max_training_tokens: int
    max_policy_steps: int
    meta_steps: int
    calibration_responses: int
    evaluations: int
    evaluation_responses: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def evaluation_steps(config: RunConfig) -> list[int]:
    """The iterations a run evaluates at (0 for the untrained policy)."""
    every, n = config.eval.every, config.iterations
    steps = [0] if config.eval.at_start else []
    steps += [s for s in range(1, n + 1) if every and s % every == 0]
    if not every or n % every:
        steps.append(n)
    return steps


def grid_size(config: RunConfig) -> int:
    k = len(config.objectives)
    if k == 2:
        return config.eval.grid_points
    return math.comb(config.eval.lattice_divisions + k - 1, k - 1)


def compute(config: RunConfig) -> Compute:
    algo, data = config.algorithm, config.data
    prompts = data.prompts_per_iteration
    if data.max_train_prompts is not None:
        prompts = min(prompts, data.max_train_prompts)
    responses = config.iterations * prompts * algo.samples_per_prompt
    meta = config.iterations * algo.meta_steps if algo.name in ("meal", "meal_no_learnable") else 0
    evaluations = len(evaluation_steps(config))
    calibration = algo.calibration_prompts
    if data.max_train_prompts is not None:
        calibration = min(calibration, data.max_train_prompts)
    return Compute(
        training_responses=responses,
        max_training_tokens=responses * algo.max_new_tokens,
        max_policy_steps=config.iterations * algo.max_policy_steps,
        meta_steps=meta,
        calibration_responses=calibration * algo.samples_per_prompt,
        evaluations=evaluations,
        evaluation_responses=evaluations * config.eval.prompts * grid_size(config) * config.eval.samples_per_weight,
    )


@dataclass(frozen=True)
class ComputeDifference:
    """A quantity that is not the same for every variant: each variant's value and max / min."""

    quantity: str
    values: dict[str, int]
    ratio: float


def compute_report(runs: list[VariantRun]) -> tuple[dict[str, dict[str, int]], list[ComputeDifference]]:
    """Per variant, its compute; and which quantities differ between variants, by how much. Meta steps are
    compared too: only meal and meal_no_learnable take them (the weight-net is what they add)."""
    per_variant: dict[str, dict[str, int]] = {}
    for run in runs:
        per_variant.setdefault(run.variant, compute(run.config).as_dict())
    differences = []
    quantities = list(next(iter(per_variant.values()))) if per_variant else []
    for quantity in quantities:
        values = {v: figures[quantity] for v, figures in per_variant.items()}
        if len(set(values.values())) > 1:
            low, high = min(values.values()), max(values.values())
            differences.append(ComputeDifference(quantity, values, high / low if low else math.inf))
    return per_variant, differences


# -- statistics -------------------------------------------------------------------------------------------------------

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """n, mean, sample sd and the 95 % t-interval of the mean (NaN where n is too small)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


def t_interval(mean: float, sd: float, n: int) -> tuple[float, float]:
    if n < 2 or not math.isfinite(sd):
        return math.nan, math.nan
    half = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def summary(values: list[float]) -> Summary:
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(finite)
    sd = statistics.stdev(finite) if n > 1 else math.nan
    return Summary(n, mean, sd, *t_interval(mean, sd, n))


@dataclass(frozen=True)
class Paired:
    """variant − baseline over the seeds both have: mean difference, its 95 % t-interval, and the two-sided p-value
    of a paired t-test (scipy.stats.ttest_rel); NaN below two pairs or when every difference is the same."""

    n: int
    seeds: list[int]
    mean_difference: float
    sd: float
    low: float
    high: float
    p: float


def paired(variant: dict[int, float], baseline: dict[int, float]) -> Paired:
    seeds = sorted(s for s in set(variant) & set(baseline) if math.isfinite(variant[s]) and math.isfinite(baseline[s]))
    mine, theirs = [variant[s] for s in seeds], [baseline[s] for s in seeds]
    differences = [a - b for a, b in zip(mine, theirs, strict=True)]
    found = summary(differences)
    p = math.nan
    if found.n >= 2 and found.sd > 0:
        p = float(ttest_rel(mine, theirs).pvalue)
    return Paired(found.n, seeds, found.mean, found.sd, found.low, found.high, p)


def mean_absolute_successive_difference(series: list[float]) -> float:
    """mean |x[t+1] − x[t]| over a series: how much a quantity jumps from one iteration (or evaluation) to the next."""
    finite = [v for v in series if math.isfinite(v)]
    if len(finite) < 2:
        return math.nan
    return statistics.fmean(abs(b - a) for a, b in itertools.pairwise(finite))


@dataclass(frozen=True)
class Stability:
    """Ours, not the paper's (docs/algorithm.md, "Experiments"). For one series per seed:
    final_sd: the sd across seeds of each seed's last value; band: the mean over steps of the sd across seeds;
    jumpiness: the mean over seeds of the mean absolute successive difference; n: seeds."""

    n: int
    final_sd: float
    band: float
    jumpiness: float


def stability(series: dict[int, list[tuple[int, float]]]) -> Stability:
    """`series`: seed → [(step, value)] in step order."""
    finals = [points[-1][1] for points in series.values() if points]
    final_sd = statistics.stdev(finals) if len(finals) > 1 else math.nan
    by_step: dict[int, list[float]] = {}
    for points in series.values():
        for step, value in points:
            by_step.setdefault(step, []).append(value)
    spreads = [statistics.stdev(v) for v in by_step.values() if len(v) == len(series) and len(v) > 1]
    jumps = [mean_absolute_successive_difference([v for _, v in points]) for points in series.values()]
    jumps = [j for j in jumps if math.isfinite(j)]
    return Stability(
        len(finals),
        final_sd,
        statistics.fmean(spreads) if spreads else math.nan,
        statistics.fmean(jumps) if jumps else math.nan,
    )


# -- one run's figures and the whole table ----------------------------------------------------------------------------

HV_FINAL = "hv_final"
HV_GAIN = "hv_gain"
HELD_OUT_HV = "held_out_hv"
HELD_OUT_CONTROL = "held_out_control"
HELD_OUT_DEGENERATE = "held_out_degenerate"
CONTROL_FINAL = "control_final"
# A run's wall time on the panel (its run row): every attempt, claim to end, held-out evaluation included.
WALL_MINUTES = "wall_minutes"
ATTEMPTS = "attempts"


def run_figures(
    evaluations: list[dict[str, Any]], metrics: dict[str, list[float]], held_out: dict[str, Any] | None
) -> dict[str, float]:
    """One run's row, from its evaluation records (EvaluationResult.to_json(), in step order), its metric values
    per key (in step order) and its held-out evaluation, if it has one."""
    found: dict[str, float] = {
        "training_responses": sum(metrics.get(keys.GENERATED_RESPONSES, [])),
        "training_tokens": sum(metrics.get(keys.GENERATED_TOKENS, [])),
        "policy_steps": sum(metrics.get(keys.POLICY_STEPS, [])),
    }
    if evaluations:
        first, last = evaluations[0], evaluations[-1]
        found[HV_FINAL] = last["hypervolume"]
        found[HV_GAIN] = last["hypervolume"] - first["hypervolume"]
        found[CONTROL_FINAL] = statistics.fmean(last["controllability"][n] for n in last["objectives"])
        found["degenerate_final"] = last["degenerate_share"]
        found.update(per_objective(last, ""))
    if held_out:
        names = held_out["objectives"]
        found[HELD_OUT_HV] = held_out["hypervolume"]
        found[HELD_OUT_CONTROL] = statistics.fmean(held_out["controllability"][n] for n in names)
        found[HELD_OUT_DEGENERATE] = held_out["degenerate_share"]
        found.update(per_objective(held_out, "held_out_"))
    for time_key in (keys.TIME_GENERATE, keys.TIME_SCORE, keys.TIME_UPDATE):
        found.setdefault("train_seconds", 0.0)
        found["train_seconds"] += sum(metrics.get(time_key, []))
    return found


def per_objective(evaluation: dict[str, Any], prefix: str) -> dict[str, float]:
    """An evaluation's figures per objective k: controllability per response (`control/k`), over the grid
    (`control_grid/k`), the null (`null/k`: the p95 of |Spearman| with the asked weights shuffled, what ignoring
    them reaches by chance) and the reward on k at the corner e_k
    (`corner/k`: how far the policy goes when asked for k alone)."""
    found: dict[str, float] = {}
    names = evaluation["objectives"]
    for name in names:
        found[f"{prefix}control/{name}"] = evaluation["controllability"][name]
        found[f"{prefix}control_grid/{name}"] = (evaluation.get("controllability_grid") or {}).get(name, math.nan)
        found[f"{prefix}null/{name}"] = (evaluation.get("controllability_null") or {}).get(name, math.nan)
    for point in evaluation.get("points") or []:
        for k, name in enumerate(names):
            if point["weights"][k] == 1.0:
                found[f"{prefix}corner/{name}"] = point["rewards"][k]
    return found


# The per-iteration metric families an experiment follows across seeds (stability, curves), besides hypervolume.
SERIES_FAMILIES = (keys.REWARD, keys.PREF_WEIGHT_LEARNED)


def is_series_key(key: str) -> bool:
    return key.startswith(tuple(family.prefix for family in SERIES_FAMILIES))


def series_of(evaluations: list[dict[str, Any]], metric_rows: list[tuple[int, str, float]]) -> dict[str, list]:
    """The series stability and the curves read: 'hypervolume' per evaluation, each `reward/<objective>` and each
    `pref_weight_learned/<objective>` (meal's learnable weights) per iteration."""
    found: dict[str, list[tuple[int, float]]] = {"hypervolume": [(e["step"], e["hypervolume"]) for e in evaluations]}
    for step, key, value in metric_rows:
        if is_series_key(key):
            found.setdefault(key, []).append((step, value))
    return found


@dataclass(frozen=True)
class CurvePoint:
    """One step of a curve averaged over seeds: the seeds that have the step (n), their mean, sd and the 95 %
    t-interval of the mean (NaN below two seeds)."""

    step: int
    n: int
    mean: float
    sd: float
    low: float
    high: float


def mean_curve(by_seed: dict[int, list[tuple[int, float]]], max_points: int | None = None) -> list[CurvePoint]:
    """`by_seed`: seed → [(step, value)]. Steps are aligned across seeds: a step only some seeds have (a run still
    training, an evaluation one seed skipped) averages those, and says so in n. With `max_points`, evenly spaced
    steps of the union, the last always among them."""
    by_step: dict[int, list[float]] = {}
    for points in by_seed.values():
        for step, value in points:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    if max_points is not None and len(steps) > max_points:
        stride = (len(steps) - 1) / (max_points - 1)
        steps = [steps[round(i * stride)] for i in range(max_points)]
    curve = []
    for step in steps:
        s = summary(by_step[step])
        curve.append(CurvePoint(step, s.n, s.mean, s.sd, s.low, s.high))
    return curve


def curves(
    series: dict[str, dict[int, dict[str, list[tuple[int, float]]]]], max_points: int | None = None
) -> dict[str, dict[str, list[CurvePoint]]]:
    """variant → series name → the curve averaged over its seeds (`series`: variant → seed → series_of())."""
    out: dict[str, dict[str, list[CurvePoint]]] = {}
    for variant, by_seed in series.items():
        names = sorted({name for s in by_seed.values() for name in s})
        out[variant] = {
            name: mean_curve({seed: s.get(name, []) for seed, s in by_seed.items()}, max_points) for name in names
        }
    return out


@dataclass
class ExperimentReport:
    """The variant table, the paired comparison against the baseline, stability, the curves and each finished
    run's own figures (variant → seed → figure → value), as plain data."""

    baseline: str
    figures: list[str]
    runs: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    table: dict[str, dict[str, Summary]] = field(default_factory=dict)
    comparison: dict[str, dict[str, Paired]] = field(default_factory=dict)
    stability: dict[str, dict[str, Stability]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[CurvePoint]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


def report(
    results: dict[str, dict[int, dict[str, float]]],
    baseline: str,
    series: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] | None = None,
    curve_series: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] | None = None,
    curve_points: int | None = None,
) -> ExperimentReport:
    """`results`: variant → seed → run_figures(); `series`: variant → seed → series_of() of the finished runs (for
    stability); `curve_series`: the same for the curves, which may include runs still training (default: `series`),
    each curve at most `curve_points` steps."""
    figures: list[str] = []
    for by_seed in results.values():
        for row in by_seed.values():
            figures += [f for f in row if f not in figures]
    out = ExperimentReport(baseline, figures, results)
    for variant, by_seed in results.items():
        out.table[variant] = {f: summary([row[f] for row in by_seed.values() if f in row]) for f in figures}
    base = results.get(baseline, {})
    for variant, by_seed in results.items():
        if variant == baseline:
            continue
        out.comparison[variant] = {
            f: paired({s: r[f] for s, r in by_seed.items() if f in r}, {s: r[f] for s, r in base.items() if f in r})
            for f in figures
        }
    for variant, by_seed_series in (series or {}).items():
        names = sorted({name for s in by_seed_series.values() for name in s})
        out.stability[variant] = {
            name: stability({seed: s.get(name, []) for seed, s in by_seed_series.items()}) for name in names
        }
    out.curves = curves((series if curve_series is None else curve_series) or {}, curve_points)
    return out


def _cell(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_report(found: ExperimentReport, figures: list[str] | None = None) -> str:
    """Markdown tables: per variant n, mean ± sd [95 % interval]; then variant − baseline, paired by seed."""
    shown = [f for f in (figures or found.figures) if f in found.figures]
    lines = ["| variant | figure | n | mean ± sd | 95 % interval |", "|---|---|---|---|---|"]
    for variant, row in found.table.items():
        for f in shown:
            s = row[f]
            lines.append(
                f"| {variant} | {f} | {s.n} | {_cell(s.mean)} ± {_cell(s.sd)} | [{_cell(s.low)}, {_cell(s.high)}] |"
            )
    if found.comparison:
        lines += [
            "",
            f"| variant − {found.baseline} (paired by seed) | figure | n | mean difference | 95 % interval | "
            "p (paired t-test) |",
            "|---|---|---|---|---|---|",
        ]
        for variant, differences in found.comparison.items():
            for f in shown:
                d = differences[f]
                p = f"{d.p:.3f}" if math.isfinite(d.p) else "–"
                lines.append(
                    f"| {variant} | {f} | {d.n} | {_cell(d.mean_difference, True)} | "
                    f"[{_cell(d.low, True)}, {_cell(d.high, True)}] | {p} |"
                )
    if found.stability:
        lines += [
            "",
            "| variant | series | seeds | final sd across seeds | mean band (sd across seeds) | "
            "mean |Δ| step to step |",
            "|---|---|---|---|---|---|",
        ]
        for variant, by_series in found.stability.items():
            for name, st in by_series.items():
                lines.append(
                    f"| {variant} | {name} | {st.n} | {_cell(st.final_sd)} | {_cell(st.band)} | {_cell(st.jumpiness)} |"
                )
    return "\n".join(lines)
