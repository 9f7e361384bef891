"""metric_point and metric_rollup without a foreign key to run

Their per-row foreign-key check was most of the cost of ingesting metrics on PostgreSQL (a trigger and a lookup of the
run for every point and every rollup bucket). Each ingest still upserts metric_latest, which keeps its foreign key, in
the same transaction, so a batch for a run that does not exist is rejected whole.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 11:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("metric_point", "metric_rollup")
# PostgreSQL's own name for these constraints; SQLite's are unnamed, and batch mode names them by this convention.
NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.drop_constraint(f"{table}_run_id_fkey", type_="foreignkey")


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.create_foreign_key(f"{table}_run_id_fkey", "run", ["run_id"], ["id"], ondelete="CASCADE")
