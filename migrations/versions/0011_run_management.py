"""run management: tags, a note and an archived flag per run; run ids never reused

Runs can now be deleted (DELETE /api/runs/{id}). SQLite gave the id of the newest row to the next one after a
delete; the run table is rebuilt there with AUTOINCREMENT, so a new run never takes a deleted run's id (and with it
the files a machine's cache may still hold under run-<id>). PostgreSQL's sequence never reuses one: no change there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite: the table is copied into one made with AUTOINCREMENT; PostgreSQL alters it in place.
    with op.batch_alter_table("run", recreate=_recreate(), table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tags",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                server_default=sa.text("'[]'"),
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("note", sa.Text(), server_default=sa.text("''"), nullable=False))
        batch_op.add_column(sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index(batch_op.f("ix_run_archived"), ["archived"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run", recreate=_recreate()) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_archived"))
        batch_op.drop_column("archived")
        batch_op.drop_column("note")
        batch_op.drop_column("tags")


def _recreate() -> str:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"
