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
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from fault_helpers import Workers  # noqa: E402
from helpers import BROWSER_WAIT_MS, CHROMIUM, CHROMIUM_ARGS, build_tiny_causal_lm  # noqa: E402

from app.store.db import get_engine  # noqa: E402
from app.store.migrate import upgrade  # noqa: E402
from app.store.settings import Settings  # noqa: E402

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


@pytest.fixture()
def page_errors() -> list[str]:
    """Uncaught exceptions and console errors of the test's page: a test ends by asserting there were none."""
    return []


@pytest.fixture()
def page(page_errors: list[str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    def on_console(message: Any) -> None:
        # A 4xx the page asked for on purpose (the invalid form submission) is logged by Chromium too: not a bug.
        if message.type == "error" and "Failed to load resource" not in message.text:
            page_errors.append(f"console: {message.text}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # Playwright's wait_for_function evaluates its predicates in the page, which the panel's CSP forbids
            # (no eval): the tests' own probes bypass it. test_pages_work_under_the_csp visits without bypass.
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            page = context.new_page()
            page.set_default_timeout(BROWSER_WAIT_MS)  # waits end when their condition holds
            page.on("pageerror", lambda error: page_errors.append(f"page error: {error}"))
            page.on("console", on_console)
            yield page
        finally:
            browser.close()
