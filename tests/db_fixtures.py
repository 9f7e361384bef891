"""Real databases and brokers for the control panel's tests (a pytest plugin, loaded by conftest.py).

`database_url` is parametrised over a temporary SQLite file and a fresh PostgreSQL database created for the test
module and dropped after it; both are migrated with Alembic, as in production. PostgreSQL and Redis are required:
when they cannot be reached, the tests fail (CI has them) rather than being skipped.

Where the services live can be changed through the environment:
MEAL_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test, a database to connect to while
creating and dropping the per-module ones) and MEAL_TEST_REDIS_URL (default redis://127.0.0.1:6379).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from app.store.db import get_engine
from app.store.migrate import upgrade

POSTGRES_URL = os.environ.get("MEAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MEAL_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
# Redis databases the tests own (and flush): API tests enqueue into one, worker tests use another.
REDIS_DB_API = 14
REDIS_DB_WORKER = 15

DATABASES = ["sqlite", "postgresql"]


# -- PostgreSQL ----------------------------------------------------------------------------------------------------


def _postgres_conninfo() -> str:
    """The admin URL in the form psycopg accepts (no SQLAlchemy driver suffix)."""
    url = make_url(POSTGRES_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _admin_connection() -> Any:
    import psycopg

    try:
        return psycopg.connect(_postgres_conninfo(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(POSTGRES_URL).render_as_string()} ({error}). These tests "
            "need a real PostgreSQL server: start one, or point MEAL_TEST_POSTGRES_URL at one.",
            pytrace=False,
        )


def create_postgres_database() -> str:
    """A new, empty database with a unique name; returns its SQLAlchemy URL (psycopg 3 driver)."""
    name = f"meal_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(False)


def drop_postgres_database(url: str) -> None:
    get_engine(url).dispose()
    name = make_url(url).database
    with _admin_connection() as connection:
        # FORCE: a killed worker's connections may linger for a moment.
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis ---------------------------------------------------------------------------------------------------------


def redis_broker_url(db: int, flush: bool = True) -> str:
    """redis://…/<db>, checked reachable (fail, not skip) and flushed so that no old message is delivered."""
    import redis

    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
        if flush:
            client.flushdb()
    except redis.RedisError as error:
        pytest.fail(
            f"Redis is not reachable at {url} ({error}). These tests need a real Redis server: start one, or point "
            "MEAL_TEST_REDIS_URL at one.",
            pytrace=False,
        )
    finally:
        client.close()
    return url


# -- fixtures ------------------------------------------------------------------------------------------------------


def migrated_database(kind: str, directory: Path) -> Iterator[str]:
    """Yields the URL of a new database of `kind`, migrated to the newest schema; removes it afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'meal.sqlite'}"
        upgrade(url)
        yield url
        get_engine(url).dispose()
        return
    url = create_postgres_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="module", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for this test module: a temporary SQLite file, or a fresh PostgreSQL database."""
    yield from migrated_database(request.param, tmp_path_factory.mktemp(f"db-{request.param}"))


@pytest.fixture(scope="module")
def api_broker_url() -> str:
    """A real broker the API enqueues into; nothing consumes it, so messages can be inspected."""
    return redis_broker_url(REDIS_DB_API)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures can tell in teardown whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
