"""review_queue.rubric: what a rating means, per objective

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 14:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("review_queue") as batch:
        batch.add_column(
            sa.Column(
                "rubric",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                server_default=sa.text("'{}'"),
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("review_queue") as batch:
        batch.drop_column("rubric")
