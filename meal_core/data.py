"""Prompt sets: the shipped ones (`builtin:train`, `builtin:eval`) or a user's .jsonl / .txt file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


class DataError(ValueError):
    pass


def _parse_jsonl(lines: list[str], source: str) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{source}:{number}: not valid JSON: {error.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{source}:{number}: each line needs a non-empty string field 'prompt'")
        prompts.append(Prompt(str(row.get("id", f"{Path(source).stem}-{number}")), row["prompt"].strip()))
    return prompts


def load_prompts(spec: str, limit: int | None = None) -> list[Prompt]:
    if spec.startswith("builtin:"):
        split = spec.removeprefix("builtin:")
        resource = resources.files("meal_core") / "data" / f"prompts_{split}.jsonl"
        if not resource.is_file():
            raise DataError(f"unknown built-in prompt set {spec!r}; use builtin:train or builtin:eval")
        prompts = _parse_jsonl(resource.read_text().splitlines(), spec)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"prompt file not found: {spec}")
        lines = path.read_text().splitlines()
        if path.suffix == ".jsonl":
            prompts = _parse_jsonl(lines, spec)
        else:
            prompts = [Prompt(f"{path.stem}-{i}", t.strip()) for i, t in enumerate(lines, start=1) if t.strip()]
    if not prompts:
        raise DataError(f"{spec}: no prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise DataError(f"{spec}: prompt ids must be unique")
    return prompts[:limit] if limit else prompts
