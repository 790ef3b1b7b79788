"""Per-person data keys: the correlator's state sealed under them (crypto-shredding).

Revision ID: 0007_data_keys
Revises: 0006_tracking_offsets
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_data_keys"
down_revision = "0006_tracking_offsets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_data_keys",
        sa.Column("subject", sa.String(32), primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("key", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("exchange_data_keys")
