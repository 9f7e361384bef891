"""Checkpoints: `checkpoints/iter-000012/` holds the LoRA adapter in standard peft format (adapter/) and
everything else a bit-exact resume needs in state.pt. A checkpoint becomes visible only once complete."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "iter-"


def name_of(iteration: int) -> str:
    return f"{PREFIX}{iteration:06d}"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state(numpy_rng: np.random.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": numpy_rng.bit_generator.state,
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any], numpy_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])


def save_checkpoint(run_dir: Path, iteration: int, save_adapter: Any, state: dict[str, Any], keep_last: int) -> Path:
    """save_adapter(directory) writes the peft adapter; `state` is torch-saved beside it."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name_of(iteration)
    staging = root / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_adapter(staging / "adapter")
    torch.save(state, staging / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path) -> dict[str, Any]:
    # Our own file, holding numpy arrays and RNG tuples as well as tensors: full unpickling is needed.
    return torch.load(path / "state.pt", weights_only=False)  # type: ignore[no-any-return]
