"""Dialect-aware statements for what SQLite and PostgreSQL spell differently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Executable, Result, TableClause, exists, func, literal, select, text, type_coerce
from sqlalchemy import column as column_clause
from sqlalchemy import table as table_clause
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# SQLite caps the bound parameters of one statement; 1,000 rows of up to 8 columns stay well below.
CHUNK_ROWS = 1000


def storable_text(value: str) -> str:
    """`value` with NUL characters replaced by U+FFFD: PostgreSQL's text and JSONB cannot hold NUL, and model output
    (even a tiny test model's) sometimes contains it. SQLite could store it; both get the same text."""
    return value.replace("\x00", "\ufffd")


def refused_nul(error: DBAPIError) -> bool:
    """Whether PostgreSQL refused a NUL character of the request's text: psycopg will not send one in a text
    parameter, and the server cannot convert `\\u0000` in JSON to JSONB."""
    cause = error.orig
    if isinstance(cause, psycopg.errors.UntranslatableCharacter):
        return True
    return isinstance(cause, psycopg.DataError) and "NUL" in str(cause)


def chunked(rows: Sequence[Any], size: int = CHUNK_ROWS) -> list[Sequence[Any]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's database."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


DialectInsert = postgresql.Insert | sqlite.Insert


def insert_rows(
    session: Session,
    table: Any,
    rows: Sequence[dict[str, Any]],
    complete: Callable[[DialectInsert], Executable] | None = None,
) -> Result[Any]:
    """Execute one INSERT of many rows (dicts with the same keys); `complete` adds ON CONFLICT / RETURNING to it.

    PostgreSQL: the rows are streamed by binary COPY into a temporary table shaped like `table`, and the statement
    is an `INSERT … SELECT` from it; COPY's row encoding runs in psycopg's C code, where one parameter per value (or
    an array per column) would be encoded in Python. SQLite: an executemany, compiled once and cached.
    """
    if not rows:
        raise ValueError("insert_rows needs at least one row")
    if session.get_bind().dialect.name != "postgresql":
        statement: DialectInsert = sqlite.insert(table)
        return session.execute(complete(statement) if complete else statement, list(rows))
    columns = list(rows[0])
    stage = _fill_stage(session, table, columns, rows)
    statement = postgresql.insert(table).from_select(columns, select(*(stage.c[name] for name in columns)))
    return session.execute(complete(statement) if complete else statement)


def _fill_stage(session: Session, table: Any, columns: list[str], rows: Sequence[dict[str, Any]]) -> TableClause:
    """Empty this connection's staging table for `table`, then COPY `rows` into it."""
    quote = session.get_bind().dialect.identifier_preparer.quote
    name, quoted = f"stage_{table.name}", quote(f"stage_{table.name}")
    fairy = session.connection().connection
    connection = fairy.driver_connection
    assert connection is not None, "a session's connection is checked out while it is in use"
    if connection.autocommit:  # the COPY would commit alone, and ON COMMIT DELETE ROWS would empty the stage
        raise RuntimeError("insert_rows needs a transaction; the connection is in autocommit mode")
    # LIKE copies the columns and NOT NULL, not the keys or indexes: the rows land without index maintenance.
    # The table lives as long as the connection and is empty at the start of each transaction (ON COMMIT DELETE
    # ROWS); the DELETE only matters for a second batch in the same transaction.
    session.execute(
        text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {quoted} (LIKE {quote(table.name)}) ON COMMIT DELETE ROWS")
    )
    session.execute(text(f"DELETE FROM {quoted}"))
    type_oids = fairy.info.setdefault("stage_type_oids", {})  # per connection: the stage's column types never change
    if name not in type_oids:
        columns_of = "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = CAST(:name AS regclass)"
        attributes = session.execute(text(f"{columns_of} AND attnum > 0"), {"name": quoted})
        type_oids[name] = {column: oid for column, oid in attributes}
    copy_statement = f"COPY {quoted} ({', '.join(quote(c) for c in columns)}) FROM STDIN (FORMAT BINARY)"
    try:
        with connection.cursor() as cursor, cursor.copy(copy_statement) as copy:
            copy.set_types([type_oids[name][column] for column in columns])
            for row in rows:
                copy.write_row([row[column] for column in columns])
    except psycopg.Error as error:  # as SQLAlchemy reports every other statement's errors
        raise DBAPIError.instance(copy_statement, None, error, psycopg.Error) from error
    return table_clause(name, *(column_clause(c) for c in columns))


def insert_ignoring_duplicates(session: Session, table: Any, rows: Sequence[dict[str, Any]], unique: list[str]) -> None:
    """Insert rows; a row whose `unique` columns already exist is left as it was (re-sent batches are no-ops)."""
    for chunk in chunked(rows):
        session.execute(
            dialect_insert(session, table).values(list(chunk)).on_conflict_do_nothing(index_elements=unique)
        )


def json_list_holds(
    session: Session, document: Any, value: Any, key: str | None = None, path: str | None = None
) -> Any:
    """A condition: the JSON list in `document` (or at its top-level key `path`) holds `value`, or, given `key`, an
    object whose `key` is `value`. PostgreSQL: JSONB containment (`@>`); SQLite: a scan of json_each."""
    if session.get_bind().dialect.name == "postgresql":
        target: Any = type_coerce(document, postgresql.JSONB)
        if path is not None:
            target = target[path]
        return target.contains([{key: value} if key is not None else value])
    items = (func.json_each(document, f"$.{path}") if path is not None else func.json_each(document)).table_valued(
        "value"
    )
    item = func.json_extract(items.c.value, f"$.{key}") if key is not None else items.c.value
    return exists(select(literal(1)).select_from(items).where(item == value))
