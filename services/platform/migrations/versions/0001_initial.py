"""The casebook's first schema: situations, follow-ups, objections, offsets, outbox, access log.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "casebook_situations",
        sa.Column("situation_id", sa.String(32), primary_key=True),
        sa.Column("case_number", sa.String(32), nullable=False, unique=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("territory", sa.String(3), nullable=False),
        sa.Column("pseudonym_key_id", sa.String(40), nullable=False),
        sa.Column("pseudonym", sa.String(43), nullable=False),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("first_signal_on", sa.Date, nullable=False),
        sa.Column("last_signal_on", sa.Date, nullable=False),
        sa.Column("opened_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("reopened_at", TZ, nullable=True),
    )
    op.create_index("ix_casebook_situations_pseudonym", "casebook_situations", ["pseudonym"])
    op.create_index("ix_casebook_situations_territory_opened", "casebook_situations",
                    ["territory", "opened_at"])
    op.create_table(
        "casebook_case_sequences",
        sa.Column("territory", sa.String(3), primary_key=True),
        sa.Column("year_month", sa.String(7), primary_key=True),
        sa.Column("last_value", sa.Integer, nullable=False),
    )
    op.create_table(
        "casebook_followups",
        sa.Column("event_id", sa.String(32), primary_key=True),
        sa.Column("situation_id", sa.String(32), nullable=False),
        sa.Column("territory", sa.String(3), nullable=False),
        sa.Column("fund", sa.String(8), nullable=False),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.Column("recorded_by", sa.String(64), nullable=False),
    )
    op.create_index("ix_casebook_followups_situation_id", "casebook_followups", ["situation_id"])
    op.create_index("ix_casebook_followups_territory_recorded", "casebook_followups",
                    ["territory", "recorded_at"])
    op.create_table(
        "casebook_objections",
        sa.Column("pseudonym", sa.String(43), primary_key=True),
        sa.Column("effective_at", TZ, nullable=False),
    )
    op.create_table(
        "casebook_erased_situations",
        sa.Column("situation_id", sa.String(32), primary_key=True),
        sa.Column("erased_at", TZ, nullable=False),
    )
    op.create_table(
        "casebook_offsets",
        sa.Column("consumer", sa.String(64), primary_key=True),
        sa.Column("topic", sa.String(128), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "casebook_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("published_at", TZ, nullable=True),
    )
    op.create_table(
        "casebook_access_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(24), nullable=False),
        sa.Column("fund", sa.String(8), nullable=True),
        sa.Column("action", sa.String(24), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("case_number", sa.String(32), nullable=True),
        sa.Column("detail", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    for table in ("casebook_access_log", "casebook_outbox", "casebook_offsets",
                  "casebook_erased_situations", "casebook_objections", "casebook_followups",
                  "casebook_case_sequences", "casebook_situations"):
        op.drop_table(table)
