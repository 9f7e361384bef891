"""model exports: trained runs taken away from the panel

Each export a trainer asks for on the run page: checkpoint, weights (or adapters only), status, and the zip's name
in the artefact store.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_export",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("checkpoint", sa.String(length=32), nullable=True),
        sa.Column("weights", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("adapters", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("artifact", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_export", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_export_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_export", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_export_run_id"))

    op.drop_table("model_export")
