"""experiments: seeds × algorithms × settings launched as one

An experiment holds its definition (meal_core.experiment.ExperimentConfig as JSON) and its baseline; each of its
runs names it (run.experiment_id) and its variant (run.variant).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("baseline", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("variant", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_run_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_run_experiment_id_experiment", "experiment", ["experiment_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_constraint("fk_run_experiment_id_experiment", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_run_experiment_id"))
        batch_op.drop_column("variant")
        batch_op.drop_column("experiment_id")

    op.drop_table("experiment")
