"""Shared fixtures. Models are tiny, randomly initialised and built here: nothing is downloaded."""

from __future__ import annotations

import json
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Servers built in the tests answer TestClient's host name, and runs may name the tiny models built under the
# temporary folder.
os.environ["MEAL_ALLOWED_HOSTS"] = '["localhost", "127.0.0.1", "testserver"]'
os.environ["MEAL_ALLOWED_ROOTS"] = json.dumps([tempfile.gettempdir()])

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from fault_helpers import Workers  # noqa: E402
from helpers import build_tiny_causal_lm  # noqa: E402

from app.db import get_engine  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.settings import Settings  # noqa: E402

# Real PostgreSQL / SQLite databases and brokers for the control panel's tests (tests/db_fixtures.py).
pytest_plugins = ["db_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture()
def embedded_settings(tmp_path: Path) -> Iterator[Settings]:
    """Embedded mode's settings in a fresh data folder: SQLite database (migrated) and SQLite broker."""
    settings = Settings(data_dir=tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    yield settings
    get_engine(settings.database_url).dispose()


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    """`meal worker` processes a test starts; stopped at teardown, their output printed if the test failed."""
    started = Workers(tmp_path)
    yield started
    for worker in started.started:
        worker.stop()
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        for worker in started.started:
            print(f"---- {worker.log_path.name} ----\n{worker.output()[-8000:]}")
