"""The durable outbox: one SQLite file per fund, ``<var_dir>/outbox/<fund>.db`` (WAL).

A signal is written here, signed and final, *before* anything is sent; it is marked sent
only once the broker has acknowledged it (acks=all). So a crash, a stopped broker or a
lost network loses nothing: the next ``publish`` or ``outbox flush`` sends what waits.

Rows are unique by ``signal_id`` (deterministic, see :mod:`services.producer.seal`), and
sent rows are kept so that a re-run of the same file inserts nothing and therefore sends
nothing again. A sent row keeps its payload, and the position the broker gave it, until the
correlator's receipt for *that* position is reconciled (``receipts --fund``,
:mod:`services.producer.receipts`): accepted, the payload is kept ``keep_sent_days`` more
(counted from its sending; ``HELP_OUTBOX_KEEP_SENT_DAYS``), so that a broker that loses what
it had acknowledged can be given it again (:meth:`Outbox.resend_since`, ``outbox resend
--since``), then dropped (only the id stays);
refused for its signing key (unknown to the exchange, or retired), the row goes back to
pending — re-signed with the current key if the key was retired — and leaves with the next
``outbox flush`` or ``publish``; refused for anything else, the reason is kept (the content
itself is wrong: sending it again would be refused again). Sent ids older than the 2-year
acceptance window (plus a margin) are purged: a line that old would be refused anyway.

The one remaining duplicate window — killed after the broker acked a batch but before
the "sent" mark was committed — is closed by :meth:`Outbox.partition_marks`: the highest
acknowledged offset per partition is committed with every batch, and before sending again
the publisher reads the topic from those marks and marks as sent what is already there.
Such a row is still pending, so an outbox with no pending row (:meth:`Outbox.has_pending`)
has nothing to look for: the publisher then only gives the partitions without a mark the
topic's end as their baseline, without reading it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from services.core.types import Fund

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    signal_id   TEXT NOT NULL UNIQUE,
    observed_on TEXT NOT NULL,
    msg_key     BLOB NOT NULL,
    msg_value   BLOB,
    created_at  TEXT NOT NULL,
    sent_at     TEXT,
    sent_partition INTEGER,
    sent_offset    INTEGER,
    accepted_at    TEXT,
    refused        TEXT,
    seal_key       BLOB
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS partition_marks (
    topic     TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

#: Columns added since the first outboxes (added to an older file when it is opened).
_ADDED_COLUMNS = {"sent_partition": "INTEGER", "sent_offset": "INTEGER", "accepted_at": "TEXT",
                  "refused": "TEXT", "seal_key": "BLOB"}

#: sent ids are kept this long past their observation date (acceptance window + margin)
KEEP_SENT_DAYS = 2 * 366 + 31
#: default of ``Settings.outbox_keep_sent_days``: an accepted signal's bytes, kept for a resend
KEEP_SENT_PAYLOAD_DAYS = 7


class Row(NamedTuple):
    """A signal ready for the outbox. (A named tuple: one per line of a file, made from the
    plain tuples the worker processes send back.)"""

    signal_id: str
    observed_on: str
    key: bytes
    value: bytes
    #: the partition, when computed ahead (not stored: the outbox lets the producer compute it)
    partition: int | None = None
    #: a sealed signal's key (:class:`~services.producer.signal_keys.FundKey` packed): kept
    #: until the signal's receipt, to seal it again if the exchange replaced the key
    seal: bytes | None = None


@dataclass(frozen=True)
class Pending:
    seq: int
    signal_id: str
    key: bytes
    value: bytes
    partition: int | None = None


@dataclass(frozen=True)
class Sent:
    """A sent row with no accepted receipt yet: where the broker put it, and its payload
    (None for a row sent before payloads were kept)."""

    signal_id: str
    partition: int | None
    offset: int | None
    value: bytes | None
    #: the key a sealed signal was sealed with (None: a signal in clear)
    seal: bytes | None = None


@dataclass(frozen=True)
class Status:
    pending: int
    sent: int
    oldest_pending: str | None
    #: sent, no receipt reconciled yet
    awaiting_receipt: int = 0
    #: sent, the correlator's receipt said accepted
    accepted: int = 0
    #: sent, refused for a reason sending again cannot fix
    refused: int = 0


def outbox_path(var_dir: Path, fund: Fund) -> Path:
    return var_dir / "outbox" / f"{fund.value}.db"


def _now() -> str:
    return _stamp(dt.datetime.now(dt.UTC))


def _stamp(moment: dt.datetime) -> str:
    """The outbox's time stamps: UTC, fixed width, so that text order is time order."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Outbox:
    """One fund's outbox. Used by one thread at a time, not necessarily the one that opened
    it (the publisher writes from a thread of its own); one per process is enough (SQLite
    locks between processes, so two publishers of the same fund may share the file)."""

    def __init__(self, path: Path, *, keep_sent_days: int = KEEP_SENT_PAYLOAD_DAYS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep_sent_days = keep_sent_days
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (kill -9, OOM), not
        # a power cut. Enough here: what a power cut could lose is either rebuilt from the
        # extract file by the next run (same deterministic ids) or a "sent" mark, whose
        # resend the correlator drops as a duplicate. FULL costs an fsync per batch.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The signal ids' index takes ids in random order: with SQLite's default 2 MiB page
        # cache, a file of 100,000 lines re-reads its pages from the OS at every batch.
        self._db.execute("PRAGMA cache_size=-16384")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:  # an outbox from before receipts were reconciled
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")

    @classmethod
    def for_fund(cls, var_dir: Path, fund: Fund, *, keep_sent_days: int = KEEP_SENT_PAYLOAD_DAYS) -> Outbox:
        return cls(outbox_path(var_dir, fund), keep_sent_days=keep_sent_days)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing
    def add(self, rows: Sequence[Row]) -> int:
        """Insert a batch in one transaction; returns how many were new (others: same id)."""
        if not rows:
            return 0
        now = _now()
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO outbox(signal_id, observed_on, msg_key, msg_value, created_at, seal_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(r.signal_id, r.observed_on, r.key, r.value, now, r.seal) for r in rows],
            )
            return db.total_changes - before

    def add_new(self, rows: Sequence[Row]) -> list[Row]:
        """Insert a batch in one transaction, like :meth:`add`; returns the rows that were new,
        in order (an id twice in ``rows``: its first row).

        Without asking first which ids are known: a run's rows are nearly always all new, so
        the insert's count says it, and only a batch that met known ids reads back which rows
        this transaction added (the ones past the highest ``seq`` before it: AUTOINCREMENT
        never reuses one, and no other writer runs inside BEGIN IMMEDIATE)."""
        if not rows:
            return []
        now = _now()
        with self._transaction() as db:
            (top,) = db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO outbox(signal_id, observed_on, msg_key, msg_value, created_at, seal_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(r.signal_id, r.observed_on, r.key, r.value, now, r.seal) for r in rows],
            )
            if db.total_changes - before == len(rows):
                return list(rows)
            added = {sid for (sid,) in db.execute("SELECT signal_id FROM outbox WHERE seq > ?", (top,))}
        fresh: list[Row] = []
        for r in rows:
            if r.signal_id in added:
                added.discard(r.signal_id)
                fresh.append(r)
        return fresh

    def known(self, signal_ids: Iterable[str]) -> set[str]:
        """Which of ``signal_ids`` are already in the outbox (pending or sent)."""
        ids = list(signal_ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(
                f"SELECT signal_id FROM outbox WHERE signal_id IN ({marks})", chunk))
        return found

    # -- sending
    def pending(self, limit: int, after_seq: int = 0) -> list[Pending]:
        cur = self._db.execute(
            "SELECT seq, signal_id, msg_key, msg_value FROM outbox "
            "WHERE sent_at IS NULL AND seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        return [Pending(seq, sid, bytes(k), bytes(v)) for seq, sid, k, v in cur]

    def mark_sent(self, signal_ids: Sequence[str], topic: str, offsets: dict[int, int],
                  positions: Sequence[tuple[int, int]] | None = None, *, keep_payload: bool = True) -> None:
        """The broker acknowledged these: mark them sent and move the partition marks, atomically.

        ``positions``: (partition, offset) of each, in the same order, for the receipts'
        reconciliation. The payload stays until an accepted receipt (see the module
        docstring), unless ``keep_payload`` is False (messages without a receipt to wait
        for: a fund's consents and reveal records)."""
        now = _now()
        where: Sequence[tuple[int | None, int | None]] = (
            positions if positions is not None else [(None, None)] * len(signal_ids))
        keep = "msg_value" if keep_payload else "NULL"
        with self._transaction() as db:
            db.executemany(f"UPDATE outbox SET sent_at = ?, sent_partition = ?, sent_offset = ?, msg_value = {keep} "
                           "WHERE signal_id = ?",
                           [(now, p, o, s) for s, (p, o) in zip(signal_ids, where, strict=True)])
            db.executemany(
                "INSERT INTO partition_marks(topic, partition, offset) VALUES (?, ?, ?) "
                "ON CONFLICT(topic, partition) DO UPDATE SET offset = max(offset, excluded.offset)",
                [(topic, p, o) for p, o in offsets.items()])

    def has_pending(self) -> bool:
        """Whether any row waits to be sent (or was sent and not yet marked: a killed run)."""
        return self._db.execute("SELECT 1 FROM outbox WHERE sent_at IS NULL LIMIT 1").fetchone() is not None

    def partition_marks(self, topic: str) -> dict[int, int]:
        """The highest acknowledged offset per partition (or the baseline set before sending)."""
        return dict(self._db.execute("SELECT partition, offset FROM partition_marks WHERE topic = ?", (topic,)))

    def set_baseline(self, topic: str, next_offsets: dict[int, int]) -> None:
        """Before the first send: remember where the topic ended (for partitions with no mark)."""
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO partition_marks(topic, partition, offset) VALUES (?, ?, ?)",
                           [(topic, p, o - 1) for p, o in next_offsets.items()])

    # -- receipts
    def awaiting_receipt(self) -> list[Sent]:
        """Sent rows whose receipt has not been reconciled (neither accepted nor refused)."""
        cur = self._db.execute(
            "SELECT signal_id, sent_partition, sent_offset, msg_value, seal_key FROM outbox "
            "WHERE sent_at IS NOT NULL AND accepted_at IS NULL AND refused IS NULL ORDER BY seq")
        return [Sent(sid, p, o, None if v is None else bytes(v), None if k is None else bytes(k))
                for sid, p, o, v, k in cur]

    def settle(self, *, accepted: Sequence[str] = (), refused: Sequence[tuple[str, str]] = (),
               requeue: Sequence[tuple[str, bytes]] = (), resealed: Sequence[tuple[str, bytes, bytes]] = ()) -> None:
        """Apply reconciled receipts, atomically: ``accepted`` ids keep their payload until
        ``keep_sent_days`` after their sending (:meth:`drop_old_payloads`), and forget their
        sealing key; ``refused`` (id, reason code) keep the reason, and forget the key;
        ``requeue`` (id, payload to send, the same or re-signed) go back to pending;
        ``resealed`` (id, payload sealed again, its new key) too."""
        now = _now()
        with self._transaction() as db:
            db.executemany("UPDATE outbox SET accepted_at = ?, seal_key = NULL WHERE signal_id = ?",
                           [(now, s) for s in accepted])
            db.executemany("UPDATE outbox SET refused = ?, seal_key = NULL WHERE signal_id = ?",
                           [(reason, s) for s, reason in refused])
            db.executemany("UPDATE outbox SET sent_at = NULL, sent_partition = NULL, sent_offset = NULL, "
                           "msg_value = ? WHERE signal_id = ?", [(v, s) for s, v in requeue])
            db.executemany("UPDATE outbox SET sent_at = NULL, sent_partition = NULL, sent_offset = NULL, "
                           "msg_value = ?, seal_key = ? WHERE signal_id = ?", [(v, k, s) for s, v, k in resealed])
        self.drop_old_payloads()

    def drop_old_payloads(self, now: dt.datetime | None = None) -> int:
        """Drop the bytes of accepted signals sent more than ``keep_sent_days`` ago (their id
        stays); returns how many."""
        limit = _stamp((now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=self.keep_sent_days))
        with self._transaction() as db:
            cur = db.execute("UPDATE outbox SET msg_value = NULL WHERE accepted_at IS NOT NULL "
                             "AND msg_value IS NOT NULL AND sent_at < ?", (limit,))
            return int(cur.rowcount)

    # -- resending what a lost broker had acknowledged
    def resendable(self, since: dt.datetime) -> int:
        """How many signals sent at or after ``since`` still hold their bytes (and were not
        refused for their content): what :meth:`resend_since` would put back."""
        (n,) = self._db.execute("SELECT count(*) FROM outbox WHERE sent_at >= ? AND msg_value IS NOT NULL "
                                "AND refused IS NULL", (_stamp(since),)).fetchone()
        return int(n)

    def resend_since(self, topic: str, since: dt.datetime) -> int:
        """Put back to pending every signal sent at or after ``since`` that still holds its
        bytes (refused ones excepted: sending them again would be refused again), and forget
        ``topic``'s partition marks (they name offsets of the lost broker; the next send
        takes the new broker's end instead). Returns how many. The signals keep their ids:
        the correlator answers a copy of one it had accepted with ``doublon`` (accepted,
        for :mod:`.receipts`) and builds nothing from it."""
        with self._transaction() as db:
            cur = db.execute("UPDATE outbox SET sent_at = NULL, sent_partition = NULL, sent_offset = NULL, "
                             "accepted_at = NULL WHERE sent_at >= ? AND msg_value IS NOT NULL AND refused IS NULL",
                             (_stamp(since),))
            db.execute("DELETE FROM partition_marks WHERE topic = ?", (topic,))
            return int(cur.rowcount)

    # -- housekeeping
    def pending_count(self) -> int:
        """How many rows wait to be sent: :meth:`status`'s ``pending`` from the pending index
        alone (``status`` reads every row for its other counts)."""
        (n,) = self._db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        return int(n)

    def status(self) -> Status:
        pending, oldest = self._db.execute(
            "SELECT count(*), min(created_at) FROM outbox WHERE sent_at IS NULL").fetchone()
        sent, accepted, refused = self._db.execute(
            "SELECT count(*), count(accepted_at), count(refused) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
        return Status(int(pending), int(sent), oldest, awaiting_receipt=int(sent) - int(accepted) - int(refused),
                      accepted=int(accepted), refused=int(refused))

    def purge_sent(self, today: dt.date) -> int:
        limit = (today - dt.timedelta(days=KEEP_SENT_DAYS)).isoformat()
        with self._transaction() as db:
            cur = db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND observed_on < ?", (limit,))
            return int(cur.rowcount)

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """BEGIN IMMEDIATE … COMMIT (or ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
