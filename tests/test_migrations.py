"""Alembic is the only way the schema changes: the migrations must build exactly what the models say, and every
step must be reversible, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from db_fixtures import DATABASES, create_postgres_database, drop_postgres_database
from sqlalchemy import inspect

from app.store.db import get_engine
from app.store.migrate import alembic_config, upgrade
from app.store.models import Base


@pytest.fixture(params=DATABASES)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meal.sqlite'}"
        yield url
        get_engine(url).dispose()
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def schema_differences(url: str) -> list[object]:
    with get_engine(url).connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_migrations_build_the_models_and_reverse(empty_database: str) -> None:
    url, config = empty_database, alembic_config(empty_database)
    upgrade(url)
    assert schema_differences(url) == []

    revisions = [script.revision for script in ScriptDirectory.from_config(config).walk_revisions()]
    for revision in revisions[1:]:  # newest first: step down one revision at a time, to the first
        command.downgrade(config, revision)
    command.downgrade(config, "base")
    get_engine(url).dispose()
    assert set(inspect(get_engine(url)).get_table_names()) <= {"alembic_version"}

    upgrade(url)
    assert schema_differences(url) == []
