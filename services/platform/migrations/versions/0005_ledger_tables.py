"""The ledger's tables, now under Alembic like the rest of the database.

The previous release made them with ``create_all`` when the ledger first opened the
database: a table that is already there is adopted as it is (it was made from the same
declaration); a missing one is created. A ledger from before tiles or before the auditor's
index moved into the append transaction is brought up to date by the ledger itself when it
opens (:func:`services.ledger.store.ensure_ready`): that needs its hashing code. A
``ledger_signal_subjects`` from before its rows were dated gets its ``seen_at`` column.

Revision ID: 0005_ledger_tables
Revises: 0004_case_keys
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005_ledger_tables"
down_revision = "0004_case_keys"
branch_labels = None
depends_on = None

#: INTEGER PRIMARY KEY on SQLite is the rowid itself: no second B-tree for seq.
SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _tables() -> list[tuple[str, list[sa.Column[Any]], dict[str, Any], list[tuple[str, str]]]]:
    """(name, columns, table options, [(index name, column)]) of each ledger table."""
    return [
        ("ledger_entries", [
            sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
            sa.Column("entry_id", sa.String(32), nullable=False),
            sa.Column("id_key", sa.BigInteger, nullable=False),
            sa.Column("time", sa.String(27), nullable=False),
            sa.Column("actor", sa.String(64), nullable=False),
            sa.Column("action", sa.String(40), nullable=False),
            sa.Column("case_id", sa.String(32), nullable=True),
            sa.Column("subject_key_id", sa.String(40), nullable=True),
            sa.Column("subject_value", sa.String(43), nullable=True),
            sa.Column("entry", sa.LargeBinary, nullable=False),
            sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
            sa.Column("chain_hash", sa.LargeBinary(32), nullable=False),
        ], {}, [("ix_ledger_entries_id_key", "id_key"), ("ix_ledger_entries_time", "time")]),
        ("ledger_heads", [
            sa.Column("head_id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("tree_size", sa.BigInteger, nullable=False),
            sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
            sa.Column("timestamp", sa.String(27), nullable=False),
            sa.Column("key_id", sa.String(40), nullable=False),
            sa.Column("signature", sa.LargeBinary(64), nullable=False),
        ], {}, [("ix_ledger_heads_tree_size", "tree_size")]),
        ("ledger_state", [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("tree_size", sa.BigInteger, nullable=False),
            sa.Column("compact_range", sa.LargeBinary, nullable=False),
            sa.Column("last_chain", sa.LargeBinary(32), nullable=False),
            sa.Column("version", sa.BigInteger, nullable=False),
        ], {}, []),
        ("ledger_index", [
            sa.Column("bucket", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("fp", sa.Integer, nullable=False),
        ], {"sqlite_with_rowid": False}, []),
        ("ledger_offsets", [  # replaced by tracking_offsets in 0006
            sa.Column("consumer", sa.String(64), primary_key=True),
            sa.Column("topic", sa.String(128), primary_key=True),
            sa.Column("partition", sa.Integer, primary_key=True),
            sa.Column("offset", sa.BigInteger, nullable=False),
        ], {}, []),
        ("ledger_checkpoints", [
            sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
            sa.Column("signed_at", sa.String(27), nullable=False),
            sa.Column("note", sa.String(4096), nullable=False),
        ], {}, []),
        ("ledger_cosignatures", [
            sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("witness", sa.String(128), primary_key=True),
            sa.Column("line", sa.String(512), nullable=False),
        ], {}, []),
        ("ledger_tile_nodes", [
            sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("hash", sa.LargeBinary(32), nullable=False),
        ], {"sqlite_with_rowid": False}, []),
        ("ledger_signal_subjects", [
            sa.Column("signal_id", sa.String(32), primary_key=True),
            sa.Column("key_id", sa.String(40), nullable=False),
            sa.Column("value", sa.String(43), nullable=False),
            sa.Column("seen_at", sa.String(27), nullable=True),
        ], {}, []),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = set(inspector.get_table_names())
    for name, columns, options, indexes in _tables():
        if name in present:
            continue
        op.create_table(name, *columns, **options)
        for index, column in indexes:
            op.create_index(index, name, [column])
    subjects = "ledger_signal_subjects"
    if subjects in present and "seen_at" not in {c["name"] for c in inspector.get_columns(subjects)}:
        # a ledger from before its signals' rows were dated (the purge counts their age)
        op.add_column(subjects, sa.Column("seen_at", sa.String(27), nullable=True))


def downgrade() -> None:
    for name, _, _, _ in reversed(_tables()):
        op.drop_table(name)
