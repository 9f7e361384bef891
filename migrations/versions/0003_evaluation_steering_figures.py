"""evaluation: controllability over the grid and its shuffled-weights null, degenerate share, auto-weight fit

Per-response controllability alone is noisy on a few hundred responses and the grid figure alone is noisier still
(11 points); the evaluation now stores both beside the null that tells them apart from chance (docs/algorithm.md).
Rows written before this migration get empty figures.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_COLUMNS = ("controllability_grid", "controllability_null", "auto_weights")


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(), "postgresql")
    with op.batch_alter_table("evaluation") as batch_op:
        for name in JSON_COLUMNS:
            batch_op.add_column(sa.Column(name, json_type, nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("degenerate_share", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("responses", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluation") as batch_op:
        for name in ("responses", "degenerate_share", *reversed(JSON_COLUMNS)):
            batch_op.drop_column(name)
