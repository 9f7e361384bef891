"""held-out evaluations: an experiment run's final evaluation on held-out prompts, one per run

A table of its own beside `evaluation` (the same columns: both hold a meal_core EvaluationResult), plus the prompt
file and samples per weight it was asked on; at most one row per run. Nothing that reads the per-step evaluations
(charts, compare page, playground front, experiment report's hv_final) meets it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "held_out_evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("objectives", _json(), nullable=False),
        sa.Column("points", _json(), nullable=False),
        sa.Column("hypervolume", sa.Float(), nullable=False),
        sa.Column("reference_point", _json(), nullable=False),
        sa.Column("controllability", _json(), nullable=False),
        sa.Column("probe", _json(), nullable=False),
        sa.Column("controllability_grid", _json(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("controllability_null", _json(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("degenerate_share", sa.Float(), nullable=True),
        sa.Column("responses", sa.Integer(), nullable=True),
        sa.Column("auto_weights", _json(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompts", sa.String(length=500), nullable=False),
        sa.Column("samples_per_weight", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", name="uq_held_out_evaluation_run"),
    )
    with op.batch_alter_table("held_out_evaluation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_held_out_evaluation_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("held_out_evaluation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_held_out_evaluation_run_id"))
    op.drop_table("held_out_evaluation")
