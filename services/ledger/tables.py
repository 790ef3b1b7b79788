"""The ledger's SQL tables (SQLAlchemy Core), in the casebook database.

``metadata`` is what the casebook's Alembic environment includes; tests and the embedded
default create the tables with ``metadata.create_all``. Every table name starts with
``ledger_``.

* ``ledger_entries``: one row per leaf, ``seq`` is the leaf index (0, 1, 2, …). ``entry`` holds
  the canonical bytes that are hashed; the other columns (time, actor, action, case,
  pseudonym) are copies kept for queries, and ``audit verify`` checks they still say what
  the hashed bytes say. ``chain_hash`` = SHA-256(previous chain_hash || leaf_hash), as in
  X-Road's hash-chained logs: it lets ``audit verify`` name a row that was moved or
  renumbered, where the Merkle root alone would only say "something changed".
* ``ledger_heads``: signed tree heads (size, root, time, Ed25519 signature, key id).
* ``ledger_state``: one row: the current size, the compact range of the tree (the roots of
  its perfect subtrees, so a new root costs O(log n)), and the last chain hash. Appenders
  lock it first, which serialises appends on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

entries = Table(
    "ledger_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("entry_id", String(32), nullable=False, unique=True),
    Column("time", String(27), nullable=False, index=True),
    Column("actor", String(64), nullable=False, index=True),
    Column("action", String(40), nullable=False, index=True),
    Column("case_id", String(32), nullable=True, index=True),
    Column("subject_key_id", String(40), nullable=True),
    Column("subject_value", String(43), nullable=True, index=True),
    Column("entry", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("chain_hash", LargeBinary(32), nullable=False),
)

heads = Table(
    "ledger_heads",
    metadata,
    Column("head_id", Integer, primary_key=True, autoincrement=True),
    Column("tree_size", BigInteger, nullable=False, index=True),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("timestamp", String(27), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

state = Table(
    "ledger_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("tree_size", BigInteger, nullable=False),
    Column("compact_range", LargeBinary, nullable=False),
    Column("last_chain", LargeBinary(32), nullable=False),
    Column("version", BigInteger, nullable=False),
)
