"""Dialect-aware statements for what SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import TableClause, select, text
from sqlalchemy import column as column_clause
from sqlalchemy import table as table_clause
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

# SQLite caps the bound parameters of one statement; 1,000 rows of up to 8 columns stay well below.
CHUNK_ROWS = 1000


def storable_text(text: str) -> str:
    """`text` with NUL characters replaced by U+FFFD: PostgreSQL's text and JSONB cannot hold NUL, and model output
    (even a tiny test model's) sometimes contains it. SQLite could store it; both get the same text."""
    return text.replace("\x00", "\ufffd")


def chunked(rows: Sequence[Any], size: int = CHUNK_ROWS) -> list[Sequence[Any]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's database."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def insert_rows(
    session: Session, table: Any, rows: Sequence[dict[str, Any]]
) -> tuple[postgresql.Insert | sqlite.Insert, Any]:
    """An INSERT of many rows (dicts with the same keys) and the parameters to execute it with.

    Add ON CONFLICT / RETURNING to the statement, then `session.execute(statement, parameters)`, in the same
    transaction. PostgreSQL: the rows are streamed by binary COPY into a temporary table shaped like `table`, and the
    statement is an `INSERT … SELECT` from it; COPY's row encoding runs in psycopg's C code, where one parameter per
    value (or an array per column) would be encoded in Python. SQLite: an executemany, compiled once and cached.
    """
    if not rows:
        raise ValueError("insert_rows needs at least one row")
    if session.get_bind().dialect.name != "postgresql":
        return sqlite.insert(table), list(rows)
    columns = list(rows[0])
    stage = _fill_stage(session, table, columns, rows)
    query = select(*(stage.c[name] for name in columns))
    return postgresql.insert(table).from_select(columns, query), None


def _fill_stage(session: Session, table: Any, columns: list[str], rows: Sequence[dict[str, Any]]) -> TableClause:
    """Empty this connection's staging table for `table`, then COPY `rows` into it."""
    name = f"stage_{table.name}"
    # LIKE copies the columns and NOT NULL, not the keys or indexes: the rows land without index maintenance.
    # The table lives as long as the connection; ON COMMIT DELETE ROWS keeps it from holding a batch after it.
    session.execute(text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} (LIKE {table.name}) ON COMMIT DELETE ROWS"))
    session.execute(text(f"TRUNCATE {name}"))
    attributes = session.execute(
        text("SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = CAST(:name AS regclass) AND attnum > 0"),
        {"name": name},
    )
    type_oids = {column: oid for column, oid in attributes}
    statement = f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    connection = session.connection().connection.driver_connection
    assert connection is not None, "a session's connection is checked out while it is in use"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types([type_oids[column] for column in columns])
        for row in rows:
            copy.write_row([row[column] for column in columns])
    return table_clause(name, *(column_clause(c) for c in columns))


def insert_ignoring_duplicates(session: Session, table: Any, rows: Sequence[dict[str, Any]], unique: list[str]) -> None:
    """Insert rows; a row whose `unique` columns already exist is left as it was (re-sent batches are no-ops)."""
    for chunk in chunked(rows):
        session.execute(
            dialect_insert(session, table).values(list(chunk)).on_conflict_do_nothing(index_elements=unique)
        )
