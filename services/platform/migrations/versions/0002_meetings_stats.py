"""Meetings recorded (date, territory, participants by fund) and frozen statistics releases.

Revision ID: 0002_meetings_stats
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_meetings_stats"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "casebook_meetings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("territory", sa.String(3), nullable=False),
        sa.Column("held_at", TZ, nullable=False),
        sa.Column("participants", sa.JSON, nullable=False),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.Column("recorded_by", sa.String(64), nullable=False),
    )
    op.create_index("ix_casebook_meetings_territory_held", "casebook_meetings", ["territory", "held_at"])
    op.create_table(
        "casebook_stats_releases",
        sa.Column("scope", sa.String(8), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("published_at", TZ, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("casebook_stats_releases")
    op.drop_index("ix_casebook_meetings_territory_held", table_name="casebook_meetings")
    op.drop_table("casebook_meetings")
