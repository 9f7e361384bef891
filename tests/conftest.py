"""Shared fixtures. Models are tiny, randomly initialised and built here: nothing is downloaded."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import build_tiny_causal_lm  # noqa: E402

# Real PostgreSQL / SQLite databases and brokers for the control panel's tests (tests/db_fixtures.py).
pytest_plugins = ["db_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))
