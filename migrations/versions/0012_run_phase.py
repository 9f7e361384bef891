"""run phase: what a held run is doing now, with that phase's own progress and ETA

A fresh run spent its first hour loading, calibrating and evaluating the starting policy while the panel showed
"0 / 16" and no ETA. The worker now stores the phase (meal_core.enums.RunPhase), its units done of its total and an
ETA from the rate measured inside it. Rows written before this migration have no phase (as a finished run has).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phase", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("phase_done", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.add_column(sa.Column("phase_total", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.add_column(sa.Column("phase_eta_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("phase_eta_seconds")
        batch_op.drop_column("phase_total")
        batch_op.drop_column("phase_done")
        batch_op.drop_column("phase")
