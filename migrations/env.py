"""Alembic environment: the URL comes from the caller (app.store.migrate) or the app settings."""

from __future__ import annotations

from alembic import context

from app.store.db import get_engine
from app.store.models import Base
from app.store.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with get_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
