"""`meal`: train, evaluate and sample from runs headless. Other packages add subcommands (e.g. `meal up`)
through the `meal_studio.commands` entry-point group, so this module never imports them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from meal_core.config import ConfigError, RunConfig, load_config, parse_config
from meal_core.enums import RunStatus
from meal_core.provenance import dict_differences

if TYPE_CHECKING:
    from meal_core.experiment import ExperimentConfig

EXIT_USAGE = 2


class CLIError(Exception):
    """A one-line message for the user; exit code 2."""


def _user_errors() -> tuple[type[Exception], ...]:
    from meal_core.data import DataError
    from meal_core.export import ExportError
    from meal_core.objectives import ObjectiveError
    from meal_core.policy import ModelLoadError

    return ConfigError, DataError, ExportError, ObjectiveError, ModelLoadError, CLIError


def _stored_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CLIError(f"{run_dir} is not a run directory (no config.json)")
    return parse_config(json.loads(path.read_text()))


def cmd_train(args: argparse.Namespace) -> int:
    from meal_core.recorder import ConsoleProgress, JsonlRecorder, MultiRecorder
    from meal_core.trainer import Trainer

    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    has_checkpoint = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("iter-*/state.pt"))
    if has_checkpoint and not args.resume:
        raise CLIError(f"{out} already holds a run; pass --resume to continue it, or another --out")
    if args.resume and (out / "config.json").is_file():
        stored = _stored_config(out).model_dump(mode="json")
        changed = [d for d in dict_differences(stored, config.model_dump(mode="json")) if d != "iterations"]
        if changed:
            raise CLIError(f"{args.config} differs from the run's stored config in: {', '.join(changed)}")
    if args.iterations:
        config = config.model_copy(update={"iterations": args.iterations})
    jsonl = JsonlRecorder(out)
    trainer = Trainer(config, out, MultiRecorder(jsonl, ConsoleProgress()))
    if args.resume and trainer.resume():
        print(f"resuming {out} from iteration {trainer.iteration}", file=sys.stderr)
    print(f"run directory: {out}", file=sys.stderr)
    status = trainer.train(config.iterations)
    jsonl.close()
    return 0 if status in (RunStatus.SUCCEEDED, RunStatus.STOPPED) else 1


def _load_trained(run_dir: Path) -> object:
    from meal_core.trainer import Trainer

    trainer = Trainer(_stored_config(run_dir), run_dir)
    if not trainer.resume():
        raise CLIError(f"{run_dir} has no checkpoint yet")
    return trainer


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the latest checkpoint on the weight grid; reads the run, writes nothing to it."""
    from meal_core.data import load_prompts
    from meal_core.trainer import Trainer

    trainer = _load_trained(Path(args.run_dir))
    assert isinstance(trainer, Trainer)
    if args.samples_per_weight is not None and args.samples_per_weight < 1:
        raise CLIError("--samples-per-weight: must be at least 1")
    prompts = load_prompts(args.prompts) if args.prompts else trainer.eval_prompts[: trainer.config.eval.prompts]
    samples = args.samples_per_weight or trainer.config.eval.samples_per_weight
    result = trainer.evaluation(prompts, samples, trainer.iteration)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(
        f"iteration {result.step}: hypervolume {result.hypervolume:.4f} on {len(prompts)} prompts, "
        f"{result.responses} responses, degenerate {100 * result.degenerate_share:.1f} %"
    )
    print("  controllability (Spearman of asked weight and reward): per response | over the grid | null p95 | probe")
    for name in result.objectives:
        print(
            f"  {name}: {result.controllability[name]:+.3f} | {result.controllability_grid[name]:+.3f} | "
            f"{result.controllability_null[name]:.3f} | {result.probe.get(name, 0.0):+.3f}"
        )
    if result.auto_weights:
        print(
            f"  auto weights on these prompts: KL(achieved ‖ net) {result.auto_weights['kl_net']:.4f} vs "
            f"KL(achieved ‖ uniform) {result.auto_weights['kl_uniform']:.4f}"
        )
    print("  weights -> mean normalised rewards" + " ".join(f" | {n}" for n in result.objectives))
    for point in result.points:
        marker = "*" if point.on_front else " "
        weights = ",".join(f"{w:.2f}" for w in point.weights)
        print(f" {marker} ({weights}) -> " + " ".join(f"{r:+.3f}" for r in point.rewards))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample from the run's latest checkpoint: the policy, its net and objectives as the playground loads them
    (`LoadedRun`), not a whole trainer (no prompt sets, optimisers or calibration)."""
    import secrets

    from meal_core.conditioning import parse_weight_list
    from meal_core.inference import LoadedRun, checkpoint_names
    from meal_core.policy import Sampling

    run_dir = Path(args.run_dir)
    config = _stored_config(run_dir)
    if not checkpoint_names(run_dir):
        raise CLIError(f"{run_dir} has no checkpoint yet")
    sampling = Sampling.of(config.algorithm, max_new_tokens=args.max_new_tokens, do_sample=not args.greedy)
    loaded = LoadedRun(config, run_dir, max_new_tokens=sampling.max_new_tokens)
    if args.weights == "auto":
        weights = loaded.auto_weights(args.prompt)
    else:
        try:
            weights = parse_weight_list(args.weights, loaded.names)
        except ValueError as error:
            raise CLIError(f"--weights: {error}") from None
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    responses = loaded.sample(args.prompt, weights[None, :], args.samples, sampling, seed)[0]
    raw = loaded.score(args.prompt, responses).raw
    print("weights: " + ", ".join(f"{n}={w:.2f}" for n, w in zip(loaded.names, weights, strict=True)))
    for response, scores in zip(responses, raw, strict=True):
        print("---")
        print(response)
        print("[" + ", ".join(f"{n}={s:.3f}" for n, s in zip(loaded.names, scores, strict=True)) + "]")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from meal_core.export import export_run

    out = export_run(Path(args.run_dir), Path(args.out), args.weights, args.adapters, args.checkpoint)
    print(out)
    return 0


def _experiment_from(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment: the file's (a mapping with `base`) or a run config as its base, then the flags over it."""
    import yaml

    from meal_core.config import parse_config_text
    from meal_core.experiment import parse_experiment

    path = Path(args.config)
    if not path.is_file():
        raise CLIError(f"config file not found: {path}")
    data = parse_config_text(path.read_text(), source=str(path)) or {}
    fields = dict(data) if "base" in data else {"base": data}
    if args.seeds:
        text = args.seeds.strip()
        try:
            fields["seeds"] = int(text) if "," not in text else [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise CLIError(f"--seeds: a count (5) or a list (0,1,2), got {args.seeds!r}") from None
    if args.algorithms:
        fields["algorithms"] = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    for item in args.vary or []:
        name, sep, values = item.partition("=")
        if not sep or not name.strip():
            raise CLIError(f"--vary: FIELD=VALUE,VALUE… (e.g. algorithm.base_loss=sft,sft+pairwise), got {item!r}")
        vary = dict(fields.get("vary") or {})
        vary[name.strip()] = [yaml.safe_load(v) for v in values.split(",") if v.strip()]
        fields["vary"] = vary
    if args.baseline:
        fields["baseline"] = args.baseline
    return parse_experiment(fields)


def cmd_experiment(args: argparse.Namespace) -> int:
    from meal_core.experiment import format_report
    from meal_core.experiment_runs import RUNS_CSV, SHOWN, compute_lines, load_experiment_folder, run_experiment

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if args.action == "records":
        from meal_core.experiment_runs import copy_records

        copied = copy_records(Path(args.dir), Path(args.destination))
        print(f"{len(copied)} finished runs' records (no checkpoints) copied into {args.destination}")
        return 0
    if args.action == "report":
        out = Path(args.dir)
        experiment = load_experiment_folder(out)
        if args.baseline:
            experiment = experiment.model_copy(update={"baseline": args.baseline})
            experiment.expand()  # refuses an unknown baseline
        found = run_experiment(experiment, out, train=False, log=lambda _line: None)
        for line in compute_lines(experiment.expand()):
            print(line)
    else:
        experiment = _experiment_from(args)
        runs = experiment.expand()
        out = Path(args.out) if args.out else Path("runs") / f"experiment-{Path(args.config).stem}"
        log(f"experiment: {len(runs)} runs of {len({r.variant for r in runs})} variants into {out}")
        only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
        found = run_experiment(experiment, out, args.prompts, args.samples_per_weight, log, only=only)
    print(format_report(found, SHOWN))
    every = ", ".join(str(out / f"report.{kind}") for kind in ("md", "json", "csv"))
    print(f"(every figure: {every}; each run's: {out / RUNS_CSV})")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="meal", description="Meal (Meta-Aligner) multi-objective alignment.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a run from a YAML/JSON config")
    train.add_argument("config")
    train.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    train.add_argument("--iterations", type=int, help="override the config's iteration count")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")

    evaluate = sub.add_parser(
        "eval", help="evaluate a run's latest checkpoint on the weight grid (writes nothing to the run)"
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--prompts", help="a .jsonl file (a 'prompt' field per line) or a .txt file (a line each)")
    evaluate.add_argument("--samples-per-weight", type=int, help="responses per prompt and weight")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    generate = sub.add_parser("generate", help="sample from a run's latest checkpoint under given weights")
    generate.add_argument("run_dir")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--weights", default="auto", help="'0.3,0.7', 'name=0.3,other=0.7' or 'auto'")
    generate.add_argument("--samples", type=int, default=1)
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--greedy", action="store_true")
    generate.add_argument("--seed", type=int, help="seed the sampling, for repeatable output")

    export = sub.add_parser(
        "export", help="a Hugging Face model folder of the policy at a weight (or its adapters), with a model card"
    )
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="the folder to write (must not exist)")
    export.add_argument("--weights", help="'0.3,0.7' or 'name=0.3,other=0.7': merged into the weights")
    export.add_argument("--adapters", action="store_true", help="the adapters in peft format and their mixing rule")
    export.add_argument("--checkpoint", help="e.g. iter-000016 (default: the latest)")

    experiment = sub.add_parser(
        "experiment", help="seeds × algorithms × settings trained as one, compared paired by seed"
    )
    actions = experiment.add_subparsers(dest="action", required=True)
    launch = actions.add_parser(
        "run",
        help="train every run of an experiment into a folder tree (finished runs are skipped, unfinished resumed), "
        "then print the variant table and the paired comparison",
    )
    launch.add_argument("config", help="a run config (the base), or an experiment: a mapping with 'base', 'seeds', …")
    launch.add_argument("--seeds", help="a count (5: seeds 0-4) or a list (0,1,2)")
    launch.add_argument("--algorithms", help="comma-separated algorithm.name values, e.g. meal,static")
    launch.add_argument(
        "--vary",
        action="append",
        help="FIELD=VALUE,VALUE…: a config field's values, e.g. algorithm.base_loss=sft,sft+pairwise",
    )
    launch.add_argument("--baseline", help="the variant the others are compared against (default: the first)")
    launch.add_argument("--out", help="the experiment's folder (default: runs/experiment-<config>)")
    launch.add_argument("--prompts", help="held-out prompt file every run is finally evaluated on (as meal eval)")
    launch.add_argument("--samples-per-weight", type=int, help="held-out responses per prompt and weight")
    launch.add_argument(
        "--only",
        help="comma-separated variant names: train only their runs (processes or machines sharing --out each take "
        "a part); the report covers every finished run",
    )
    records = actions.add_parser(
        "records",
        help="copy an experiment folder's finished runs without checkpoints (kilobytes a run): enough to report "
        "on, and to skip them when the experiment is run again into the copy",
    )
    records.add_argument("dir")
    records.add_argument("destination")
    summary = actions.add_parser("report", help="the table and comparison of an experiment folder, as it stands")
    summary.add_argument("dir")
    summary.add_argument("--baseline", help="compare against this variant")

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "experiment": cmd_experiment,
        "train": cmd_train,
        "eval": cmd_eval,
        "generate": cmd_generate,
        "export": cmd_export,
    }
    for plugin in entry_points(group="meal_studio.commands"):
        handlers[plugin.name] = plugin.load()(sub)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except _user_errors() as error:
        print(f"meal {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nmeal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
