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

from meal_core.config import ConfigError, RunConfig, load_config, parse_config

EXIT_USAGE = 2


class CLIError(Exception):
    """A one-line message for the user; exit code 2."""


def _user_errors() -> tuple[type[Exception], ...]:
    from meal_core.data import DataError
    from meal_core.objectives import ObjectiveError
    from meal_core.policy import ModelLoadError

    return ConfigError, DataError, ObjectiveError, ModelLoadError, CLIError


def _stored_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CLIError(f"{run_dir} is not a run directory (no config.json)")
    return parse_config(json.loads(path.read_text()))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    found = []
    for key in keys:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found += _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.append(f"{prefix}{key}")
    return found


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
        changed = [d for d in _differences(stored, config.model_dump(mode="json")) if d != "iterations"]
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
    return 0 if status in ("succeeded", "stopped") else 1


def _load_trained(run_dir: Path) -> object:
    from meal_core.trainer import Trainer

    trainer = Trainer(_stored_config(run_dir), run_dir)
    if not trainer.resume():
        raise CLIError(f"{run_dir} has no checkpoint yet")
    return trainer


def cmd_eval(args: argparse.Namespace) -> int:
    from meal_core.recorder import JsonlRecorder
    from meal_core.trainer import Trainer

    run_dir = Path(args.run_dir)
    trainer = _load_trained(run_dir)
    assert isinstance(trainer, Trainer)
    recorder = JsonlRecorder(run_dir)
    trainer.recorder = recorder
    result = trainer.evaluate(trainer.iteration)
    recorder.close()
    print(f"iteration {result.step}: hypervolume {result.hypervolume:.4f}")
    for name in result.objectives:
        print(
            f"  {name}: controllability {result.controllability[name]:+.3f}  probe {result.probe.get(name, 0.0):+.3f}"
        )
    print("  weights -> mean normalised rewards" + " ".join(f" | {n}" for n in result.objectives))
    for point in result.points:
        marker = "*" if point.on_front else " "
        weights = ",".join(f"{w:.2f}" for w in point.weights)
        print(f" {marker} ({weights}) -> " + " ".join(f"{r:+.3f}" for r in point.rewards))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from meal_core.conditioning import parse_weight_list
    from meal_core.data import Prompt
    from meal_core.trainer import Trainer

    trainer = _load_trained(Path(args.run_dir))
    assert isinstance(trainer, Trainer)
    prompt = Prompt("cli", args.prompt)
    if args.weights == "auto":
        weights = trainer.auto_weights(prompt)
    else:
        try:
            weights = parse_weight_list(args.weights, trainer.names)
        except ValueError as error:
            raise CLIError(f"--weights: {error}") from None
    text = trainer.conditioned(prompt.text, weights)
    out = trainer.policy.generate(
        [text],
        args.samples,
        args.max_new_tokens or trainer.algo.max_new_tokens,
        temperature=trainer.algo.temperature,
        top_p=trainer.algo.top_p,
        do_sample=not args.greedy,
    )
    responses = out.texts[0]
    raw, _ = trainer.oriented_scores([prompt.text] * len(responses), responses)
    print("weights: " + ", ".join(f"{n}={w:.2f}" for n, w in zip(trainer.names, weights, strict=True)))
    for response, scores in zip(responses, raw, strict=True):
        print("---")
        print(response)
        print("[" + ", ".join(f"{n}={s:.3f}" for n, s in zip(trainer.names, scores, strict=True)) + "]")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="meal", description="Meal (Meta-Aligner) multi-objective alignment.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a run from a YAML/JSON config")
    train.add_argument("config")
    train.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    train.add_argument("--iterations", type=int, help="override the config's iteration count")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")

    evaluate = sub.add_parser("eval", help="evaluate a run's latest checkpoint on the weight grid")
    evaluate.add_argument("run_dir")

    generate = sub.add_parser("generate", help="sample from a run's latest checkpoint under given weights")
    generate.add_argument("run_dir")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--weights", default="auto", help="'0.3,0.7', 'name=0.3,other=0.7' or 'auto'")
    generate.add_argument("--samples", type=int, default=1)
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--greedy", action="store_true")

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "train": cmd_train,
        "eval": cmd_eval,
        "generate": cmd_generate,
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
