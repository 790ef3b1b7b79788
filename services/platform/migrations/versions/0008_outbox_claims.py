"""The casebook's outbox rows are claimed before they are sent (one sender per row).

Revision ID: 0008_outbox_claims
Revises: 0007_data_keys
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_outbox_claims"
down_revision = "0007_data_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("casebook_outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(32), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("casebook_outbox") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
