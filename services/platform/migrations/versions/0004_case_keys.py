"""Each case's data key: follow-ups go on their topic sealed under it (crypto-shredding).

Revision ID: 0004_case_keys
Revises: 0003_web_sessions
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_case_keys"
down_revision = "0003_web_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "casebook_case_keys",
        sa.Column("situation_id", sa.String(32), primary_key=True),
        sa.Column("key", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("casebook_case_keys")
