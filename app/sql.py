"""Dialect-aware statements for what SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

# SQLite caps the bound parameters of one statement; 1,000 rows of up to 8 columns stay well below.
CHUNK_ROWS = 1000


def chunked(rows: Sequence[Any], size: int = CHUNK_ROWS) -> list[Sequence[Any]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's database."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def insert_ignoring_duplicates(session: Session, table: Any, rows: Sequence[dict[str, Any]], unique: list[str]) -> None:
    """Insert rows; a row whose `unique` columns already exist is left as it was (re-sent batches are no-ops)."""
    for chunk in chunked(rows):
        session.execute(
            dialect_insert(session, table).values(list(chunk)).on_conflict_do_nothing(index_elements=unique)
        )
