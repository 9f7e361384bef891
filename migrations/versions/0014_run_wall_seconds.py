"""run wall seconds: the wall time every attempt at a run took, summed

An experiment's page compares variants' wall time; a run's started_at and finished_at span only its last attempt.
Each attempt now adds its span (claim to finish, or to the last heartbeat of a worker that vanished) to
wall_seconds. Rows written before this migration count 0 for their earlier attempts.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wall_seconds", sa.Float(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("wall_seconds")
