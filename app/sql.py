"""Dialect-aware statements for what SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select
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


def insert_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
    """An INSERT of many rows (dicts with the same keys) and the parameters to execute it with.

    Add ON CONFLICT / RETURNING to the statement, then `session.execute(statement, parameters)`. PostgreSQL gets one
    `INSERT … SELECT … FROM unnest(<one array per column>)`: one short statement, however many rows. SQLite gets an
    executemany, which SQLAlchemy sends as a few multi-row statements (or the driver's executemany) compiled once.
    """
    if not rows:
        raise ValueError("insert_rows needs at least one row")
    if session.get_bind().dialect.name != "postgresql":
        return sqlite.insert(table), list(rows)
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    # A column with one value in every row (the run id, an ingest batch number) is sent once, not as an array:
    # turning Python lists into array literals is most of the client's cost.
    constant = {name: values[0] for name, values in columns.items() if values.count(values[0]) == len(values)}
    varying = {name: values for name, values in columns.items() if name not in constant}
    selected: dict[str, Any] = {
        name: bindparam(f"const_{name}", value, type_=table.c[name].type) for name, value in constant.items()
    }
    query = select()
    if varying:
        arrays = [
            bindparam(f"unnest_{name}", values, type_=postgresql.ARRAY(table.c[name].type))
            for name, values in varying.items()
        ]
        source = func.unnest(*arrays).table_valued(*varying).render_derived(name="source")
        selected |= {name: source.c[name] for name in varying}
        query = query.select_from(source)
    query = query.add_columns(*(selected[name] for name in columns))
    return postgresql.insert(table).from_select(list(columns), query), None


def insert_ignoring_duplicates(session: Session, table: Any, rows: Sequence[dict[str, Any]], unique: list[str]) -> None:
    """Insert rows; a row whose `unique` columns already exist is left as it was (re-sent batches are no-ops)."""
    for chunk in chunked(rows):
        session.execute(
            dialect_insert(session, table).values(list(chunk)).on_conflict_do_nothing(index_elements=unique)
        )
