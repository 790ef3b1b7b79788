"""The ledger's SQL tables (SQLAlchemy Core), in the casebook database.

Migrated with every other table of the database (services/platform/migrations, revision
``0005_ledger_tables`` and later). Every table name starts with ``ledger_``.

* ``ledger_entries``: one row per leaf, ``seq`` is the leaf index (0, 1, 2, …). ``entry`` holds
  the canonical bytes that are hashed; the other columns (time, actor, action, case,
  pseudonym) are copies kept for queries, and ``audit verify`` checks they still say what
  the hashed bytes say. ``chain_hash`` = SHA-256(previous chain_hash || leaf_hash), as in
  X-Road's hash-chained logs: it lets ``audit verify`` name a row that was moved or
  renumbered, where the Merkle root alone would only say "something changed".

  Indexes, chosen by measurement (bench/ledger.py). An index over a *random* key (the
  entry id, the case id, the pseudonym) makes every insert dirty a random B-tree leaf page,
  and every dirty page is written to the WAL at commit: at a million entries a batch
  wrote tens of megabytes and the append rate fell by more than half. So
  ``seq`` is SQLite's rowid (no separate primary-key index), ``time`` grows with ``seq``
  (appends at the right edge), and the one random index is ``id_key``, a 64-bit digest of
  the entry id (a quarter of the text's size; see :func:`services.ledger.store.key64`)
  that the idempotency check needs: a point look-up per appended entry, which no cheaper
  layout gives. Uniqueness of ``entry_id`` is enforced by :meth:`Ledger.append` under the
  appenders' lock, which every append takes before looking ids up.
* ``ledger_index``: the auditor's index (case, pseudonym, actor, action → seq), written in
  the append's own transaction, so a query never misses a committed entry and nothing is
  left for later. It is *bucketed* rather than keyed by value: each kind of value hashes
  into one of 128 buckets (:func:`services.ledger.store.lookup_key`) and a row is
  (bucket, seq, 32-bit fingerprint of the value). Within a bucket, seq only grows, so an
  append only ever writes at the tail of the buckets it touches — a few hundred hot pages
  whatever the ledger's size, where one key per value would dirty a random page per case
  and per pseudonym. A query reads its bucket (1/128 of that kind's rows, contiguous),
  keeps the rows with its fingerprint, then checks the entries' own columns (so neither a
  bucket shared nor a fingerprint collision is ever a match). ``audit verify`` checks the
  index holds exactly the rows of the entries (a multiset digest): a row removed to hide
  an entry from a query is found, and ``audit reindex`` rebuilds it.
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
    # INTEGER PRIMARY KEY on SQLite is the rowid itself: no second B-tree for seq.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("entry_id", String(32), nullable=False),
    Column("id_key", BigInteger, nullable=False, index=True),
    Column("time", String(27), nullable=False, index=True),
    Column("actor", String(64), nullable=False),
    Column("action", String(40), nullable=False),
    Column("case_id", String(32), nullable=True),
    Column("subject_key_id", String(40), nullable=True),
    Column("subject_value", String(43), nullable=True),
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

lookup = Table(
    "ledger_index",
    metadata,
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("fp", Integer, nullable=False),
    sqlite_with_rowid=False,
)

# Checkpoints (C2SP tlog-checkpoint signed notes, services/ledger/checkpoint.py), signed by
# the append policy (every N entries, and when the last is older than a few seconds) and by
# every signed head: one per tree size. ``note`` is the note exactly as signed.
checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("signed_at", String(27), nullable=False),
    Column("note", String(4096), nullable=False),
)

# Witnesses' cosignatures (C2SP tlog-cosignature/v1 lines) of the checkpoints above.
cosignatures = Table(
    "ledger_cosignatures",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness", String(128), primary_key=True),
    Column("line", String(512), nullable=False),
)

# The hashes of the tiles above level 0 (C2SP tlog-tiles): the root of every complete
# subtree of 256**level leaves, kept as entries are appended (level 0 is leaf_hash above).
tile_nodes = Table(
    "ledger_tile_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

# The person each signal is about, read by the audit sink from the signal topics, so that
# the receipt of the signal (which names only its id) is entered with the person's
# commitment. A row goes once its receipt is entered, or, for a signal whose receipt never
# came, at the first purge after the signals' retention (``seen_at``: when the sink read the
# signal; null in rows written before it was kept, which the next purge removes).
# Private, as ledger_entries' columns.
signal_subjects = Table(
    "ledger_signal_subjects",
    metadata,
    Column("signal_id", String(32), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("value", String(43), nullable=False),
    Column("seen_at", String(27), nullable=True),
)
