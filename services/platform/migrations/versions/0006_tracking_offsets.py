"""One offsets table for every tracked consumer (services/platform/tracking.py).

``casebook_offsets`` and ``ledger_offsets`` held the *last* offset applied per consumer,
topic and partition; ``tracking_offsets`` holds the *next* offset to read. Their rows are
copied (last + 1) and the two tables dropped, so the casebook sink and the audit sink
resume exactly where they stopped. Consumer names did not overlap in practice; if one did,
the furthest position wins (effects are idempotent, a position never moves back).

Revision ID: 0006_tracking_offsets
Revises: 0005_ledger_tables
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006_tracking_offsets"
down_revision = "0005_ledger_tables"
branch_labels = None
depends_on = None

OLD = ("casebook_offsets", "ledger_offsets")


def _old_columns() -> list[sa.Column[Any]]:
    return [sa.Column("consumer", sa.String(64), primary_key=True),
            sa.Column("topic", sa.String(128), primary_key=True),
            sa.Column("partition", sa.Integer, primary_key=True),
            sa.Column("offset", sa.BigInteger, nullable=False)]


def _old_table(name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), *_old_columns())


def upgrade() -> None:
    tracking = op.create_table(
        "tracking_offsets",
        sa.Column("consumer", sa.String(64), primary_key=True),
        sa.Column("topic", sa.String(128), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
    )
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    positions: dict[tuple[str, str, int], int] = {}
    for name in OLD:
        if name not in present:
            continue
        old = _old_table(name)
        for consumer, topic, partition, offset in bind.execute(
                sa.select(old.c.consumer, old.c.topic, old.c.partition, old.c.offset)):
            key = (consumer, topic, int(partition))
            positions[key] = max(positions.get(key, 0), int(offset) + 1)
        op.drop_table(name)
    if positions:
        op.bulk_insert(tracking, [
            {"consumer": c, "topic": t, "partition": p, "next_offset": o}
            for (c, t, p), o in sorted(positions.items())])


def downgrade() -> None:
    bind = op.get_bind()
    tracking = sa.Table("tracking_offsets", sa.MetaData(), autoload_with=bind)
    rows = [{"consumer": c, "topic": t, "partition": p, "offset": o - 1}
            for c, t, p, o in bind.execute(sa.select(
                tracking.c.consumer, tracking.c.topic, tracking.c.partition,
                tracking.c.next_offset))]
    for name in OLD:  # each consumer's rows go back to both: the names tell whose they were
        table = op.create_table(name, *_old_columns())
        if rows:
            op.bulk_insert(table, rows)
    op.drop_table("tracking_offsets")
