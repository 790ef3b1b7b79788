"""The web view's server-side sessions, one-time form tokens, sign-in log and throttling.

Revision ID: 0003_web_sessions
Revises: 0002_meetings_stats
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_web_sessions"
down_revision = "0002_meetings_stats"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "casebook_web_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("role", sa.String(24), nullable=True),
        sa.Column("fund", sa.String(8), nullable=True),
        sa.Column("territory", sa.String(3), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("last_seen_at", TZ, nullable=False),
        sa.Column("flash", sa.String(200), nullable=True),
    )
    op.create_index("ix_casebook_web_sessions_user_id", "casebook_web_sessions", ["user_id"])
    op.create_table(
        "casebook_form_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("case_number", sa.String(32), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_casebook_form_tokens_session_hash", "casebook_form_tokens", ["session_hash"])
    op.create_table(
        "casebook_sign_ins",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("ix_casebook_sign_ins_at", "casebook_sign_ins", ["at"])
    op.create_table(
        "casebook_sign_in_failures",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure_at", TZ, nullable=False),
        sa.Column("locked_until", TZ, nullable=True),
    )


def downgrade() -> None:
    for table in ("casebook_sign_in_failures", "casebook_sign_ins", "casebook_form_tokens",
                  "casebook_web_sessions"):
        op.drop_table(table)
