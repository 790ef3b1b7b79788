"""Person state for the correlator worker: on local disk behind a bounded cache, one
changelog topic as the source of truth, rebuilt or caught up exactly.

Why not a Faust ``Table``: Faust's table recovery reads a changelog partition up to the
*reported* end offset minus one and then declares the table ready. The embedded broker
(Tansu 0.6) reports as end offset the base offset of the last record batch + 1, not the true
end (probe: ten records acknowledged at offsets 0-9 in one batch, end offset reported: 1),
so a restarted worker recovered the state without the tail of the changelog — the last
state writes before the crash. A signal read again after the restart then met a state that
had forgotten an earlier signal of the same person: a category went missing from the
situation. Waiting for an empty fetch (what ``producer.sdk.read_to_end`` does) is only a
heuristic; this store does not depend on end offsets at all:

- to load a partition, write a *fence* record (a tombstone under a reserved key) to the
  changelog partition, wait for its acknowledgement, which gives its offset ``F``, and read
  the partition until the position is past ``F``. Every state write acknowledged before the
  fence (every write of the previous owner of the partition: it acknowledges them before it
  commits or gives the partition up) is at an offset below ``F``, on Tansu as on Apache
  Kafka, whatever either reports as end offset;
- a partition is loaded by the agent itself, before it processes the first record of that
  partition, and dropped when the partition is revoked, so a state is never read stale.

Where the values live (docs/architecture.md, "Person state on disk"): a SQLite file under
the worker's var dir (``persons-<slot>.sqlite3``, one slot per live worker process, held by
an exclusive lock), with a bounded in-memory cache of the most recently used persons and a
filter of the keys the file holds (:mod:`.key_filter`: an absent key costs no read). The
file also keeps, per changelog partition, the offset its rows reflect (every changelog record
below it is applied). A batch's writes are visible to the next batch at once (kept in memory
as *staged*) but reach the file only once the changelog has acknowledged them
(:meth:`PersonStore.applied`, called by the checkpoint between its state writes and its
outputs), with the new offsets in the same transaction: the file never holds a state the
changelog does not. So a cold start reopens the file and reads each partition only from its
offset to the fence; it reads from the beginning (a full rebuild) when the file is missing,
unreadable, of another format, changelog or partition count, when an offset is past the
fence (another broker's changelog) or older than :data:`MARK_MAX_AGE_S` (a compaction may
have removed tombstones written since). A revoked partition's rows and offset are deleted.

Values are the engine's bytes (sealed under the person's data key when the worker has a
key ring: :mod:`services.platform.datakeys`; the file keeps them sealed), re-validated by
the engine on every read. Given ``key_of``, the changelog's keys are not the engine's person
keys (``key_id/value``, the pseudonym) but ``key_of`` of them, a keyed digest: a record's key
then names no one to a reader without the exchange's marker key, and the file is keyed the
same way (:meth:`PersonStore.get` and :meth:`~PersonStore.put` take the engine's keys;
:meth:`~PersonStore.stage`, :meth:`~PersonStore.applied` and :meth:`~PersonStore.sweep_page`
the changelog's). Keys of an earlier version (they hold a ``/``) are mapped the same way when
a partition is loaded, so their states are found; their records stay on the changelog until
compaction. Fence records (key starting with NUL, value null) never collide with either and
are compacted away like any tombstone. Deletes overwrite the freed bytes
(``secure_delete``) and a transaction that deleted a person truncates the write-ahead log
(docs/erasure.md says what stays).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.correlator.key_filter import KeyFilter

log = logging.getLogger("help.correlator.state")

FENCE_KEY = b"\x00fence"

#: The on-disk format; another one is rebuilt from the changelog.
FORMAT = "persons-1"

#: A partition's offset older than this is not trusted: the changelog's tombstones are kept
#: ``delete.retention.ms`` after compaction (Kafka's default: a day), a tombstone written
#: after the offset could be gone when the store is reopened much later.
MARK_MAX_AGE_S = 12 * 3600.0

#: Sends (topic, key, value, partition) and returns the offset the broker gave the record.
SendAcked = Callable[[str, bytes, bytes | None, int], Awaitable[int]]

#: The batch's changelog writes as staged: key -> (partition, value or None for a delete).
Writes = Mapping[bytes, tuple[int, bytes | None]]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # (A rowid table: values of a kilobyte make a WITHOUT ROWID table's pages hold few rows.)
    "CREATE TABLE IF NOT EXISTS persons (key BLOB PRIMARY KEY, part INTEGER NOT NULL, value BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS persons_part ON persons (part)",
    "CREATE TABLE IF NOT EXISTS marks (part INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL,"
    " marked_at REAL NOT NULL)",
)


class StoreLoadError(RuntimeError):
    """The changelog could not be read to the fence in time: the worker must stop."""


class PersonStore:
    """Person key -> state JSON, for the changelog partitions this worker has loaded.

    ``key_of``: the changelog key of an engine's key (None: the same). ``directory`` None
    keeps the file in memory (tests); ``cache_persons`` bounds the in-memory cache of values
    read or written (the file holds the rest)."""

    def __init__(self, changelog: str, key_of: Callable[[bytes], bytes] | None = None, *,
                 directory: Path | None = None, partitions: int = 0, cache_persons: int = 20_000) -> None:
        self.changelog = changelog
        self.key_of = key_of
        self.partitions = partitions
        self.cache_persons = cache_persons
        self.loaded: set[int] = set()
        self.path: Path | None = None
        self._lock: IO[bytes] | None = None
        self._cache: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        # Staged (not yet acknowledged on the changelog): key -> (partition, value, batch number).
        self._staged: dict[bytes, tuple[int, bytes | None, int]] = {}
        self._batches = 0
        self._sweep_after: bytes | None = None
        self._marks: dict[int, tuple[int, float]] = {}
        #: Every key the file holds is in it (a key it says is absent is not read for).
        self._filter = KeyFilter()
        self.db = self._open(directory)
        self._filter = self._keys_held(self.db)
        # Writes go through their own connection, those of a load in a thread (SQLite works
        # without the GIL) while the next changelog records are fetched; reads through ``db``
        # (WAL: a reader sees the last committed transaction). In memory, one connection.
        self._writer = self.db if self.path is None else self._connect(str(self.path), check=False)
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ the file
    def _open(self, directory: Path | None) -> sqlite3.Connection:
        if directory is None:
            return self._connect(":memory:")
        directory.mkdir(parents=True, exist_ok=True)
        slot = 0
        while True:  # one file per live worker process sharing this var dir
            lock = (directory / f"persons-{slot}.lock").open("wb")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                lock.close()
                slot += 1
        self._lock = lock
        self.path = directory / f"persons-{slot}.sqlite3"
        try:
            db = self._connect(str(self.path))
            if self._owned(db):
                self._marks = {p: (o, t) for p, o, t in db.execute("SELECT part, next_offset, marked_at FROM marks")}
                return db
            db.close()
            log.warning("state: %s is of another format, changelog or partition count: rebuilt", self.path)
        except sqlite3.DatabaseError as exc:
            log.warning("state: %s unreadable (%s): rebuilt from the changelog", self.path, exc)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        return self._connect(str(self.path))

    def _connect(self, where: str, *, check: bool = True) -> sqlite3.Connection:
        db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=10000")
        # The changelog is the source of truth: a file cut short by a crash is rebuilt (or
        # caught up from the offsets it committed), so no fsync per transaction.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA cache_size=-16384")  # 16 MiB of pages; the OS caches the rest of the file
        for statement in _SCHEMA:
            db.execute(statement)
        if check and db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        return db

    def _identity(self) -> dict[str, str]:
        return {"format": FORMAT, "changelog": self.changelog, "partitions": str(self.partitions)}

    def _owned(self, db: sqlite3.Connection) -> bool:
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if meta == self._identity():
            return True
        if not meta and db.execute("SELECT count(*) FROM marks").fetchone()[0] == 0:
            db.executemany("INSERT INTO meta VALUES (?, ?)", self._identity().items())
            return True
        return False

    @staticmethod
    def _keys_held(db: sqlite3.Connection, extra: int = 0) -> KeyFilter:
        """A filter of every key in the file, sized for twice as many (and ``extra``)."""
        held = db.execute("SELECT count(*) FROM persons").fetchone()[0]
        found = KeyFilter(2 * (int(held) + extra))
        found.update(bytes(k) for (k,) in db.execute("SELECT key FROM persons"))
        return found

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not self.db:
                self._writer.close()
        self.db.close()
        if self._lock is not None:
            self._lock.close()

    def changelog_key(self, key: bytes) -> bytes:
        return key if self.key_of is None else self.key_of(key)

    # ------------------------------------------------------------------ reads
    def get(self, key: bytes) -> bytes | None:
        """The state of the engine's ``key``."""
        if self.key_of is not None:
            key = self.key_of(key)
        staged = self._staged.get(key)
        if staged is not None:
            return staged[1]
        cache = self._cache
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit[1]
        if not self._filter.may_hold(key):  # (most persons of a month are new: no read for them)
            return None
        row = self.db.execute("SELECT part, value FROM persons WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self._remember(key, row[0], row[1])
        return bytes(row[1])

    def _remember(self, key: bytes, partition: int, value: bytes) -> None:
        cache = self._cache
        cache[key] = (partition, value)
        cache.move_to_end(key)
        while len(cache) > self.cache_persons:
            cache.popitem(last=False)

    def __len__(self) -> int:
        on_disk = self.db.execute("SELECT count(*) FROM persons").fetchone()[0]
        return int(on_disk) + sum(1 for v in self._staged.values() if v[1] is not None)

    # ------------------------------------------------------------------ writes
    def put(self, key: bytes, partition: int, value: bytes | None) -> None:
        """Write the engine's ``key``'s value (None: delete it) to the file at once."""
        self._write([(self.changelog_key(key), partition, value)], {})

    def stage(self, writes: Writes) -> int:
        """Keep a batch's writes, visible to :meth:`get` at once; returns the batch's number,
        for :meth:`applied` once the changelog has acknowledged them."""
        self._batches += 1
        number = self._batches
        for key, (partition, value) in writes.items():
            self._staged[key] = (partition, value, number)
        return number

    def applied(self, number: int, writes: Writes, next_offsets: Mapping[int, int]) -> None:
        """The batch ``number``'s writes are on the changelog, which now holds, per partition,
        every record below ``next_offsets``: write them to the file with those offsets."""
        self._write([(k, p, v) for k, (p, v) in writes.items()], next_offsets)
        self._unstage(number, writes)

    async def apply(self, number: int, writes: Writes, next_offsets: Mapping[int, int]) -> None:
        """:meth:`applied`, for a checkpoint. (In the event loop's thread: written in a thread,
        a batch's rows cost the worker more CPU, measured, than they saved in waiting.)"""
        self.applied(number, writes, next_offsets)

    def _unstage(self, number: int, writes: Writes) -> None:
        staged = self._staged
        for key in writes:
            entry = staged.get(key)
            if entry is not None and entry[2] == number:  # (not overwritten by a later batch)
                del staged[key]

    def _write(self, rows: list[tuple[bytes, int, bytes | None]], next_offsets: Mapping[int, int]) -> None:
        marks = self._new_marks(next_offsets)
        self._commit(rows, marks)
        self._written(rows, marks)

    async def _write_async(self, rows: list[tuple[bytes, int, bytes | None]],
                           next_offsets: Mapping[int, int]) -> None:
        marks = self._new_marks(next_offsets)
        if self._writer is self.db:
            self._commit(rows, marks)
        else:
            await asyncio.to_thread(self._commit, rows, marks)
        self._written(rows, marks)

    def _new_marks(self, next_offsets: Mapping[int, int]) -> list[tuple[int, int, float]]:
        now = time.time()
        return [(p, o, now) for p, o in next_offsets.items() if p in self._marks or p in self.loaded]

    def _commit(self, rows: list[tuple[bytes, int, bytes | None]], marks: list[tuple[int, int, float]]) -> None:
        """One transaction on the writer connection (any thread)."""
        # A key's last row wins (a changelog read may bring a key's delete and then its new
        # value); in key order, each insert lands beside the previous one in the key index,
        # on pages just read (measured: a sixth less CPU per row than in arrival order).
        last = {k: (p, v) for k, p, v in rows}
        puts = [(k, p, v) for k, (p, v) in sorted(last.items()) if v is not None]
        deletes = [(k,) for k, (_, v) in last.items() if v is None]
        with self._write_lock:
            db = self._writer
            if puts:  # (in the filter before the file: a key read is never missed)
                self._filter.update(k for k, _, _ in puts)
                if self._filter.full():
                    grown = self._keys_held(db, len(puts))
                    grown.update(k for k, _, _ in puts)
                    self._filter = grown
            db.execute("BEGIN")
            try:
                if puts:  # (an upsert rewrites the row in place; REPLACE deleted and re-inserted
                    # it, index entries included: three times the time)
                    db.executemany("INSERT INTO persons VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
                                   " SET part = excluded.part, value = excluded.value", puts)
                if deletes:
                    db.executemany("DELETE FROM persons WHERE key = ?", deletes)
                if marks:
                    db.executemany("INSERT OR REPLACE INTO marks VALUES (?, ?, ?)", marks)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if deletes:
                self._truncate_log()

    def _written(self, rows: list[tuple[bytes, int, bytes | None]], marks: list[tuple[int, int, float]]) -> None:
        for p, o, t in marks:
            self._marks[p] = (o, t)
        cache = self._cache
        for key, partition, value in rows:
            if value is None:
                cache.pop(key, None)
            else:
                self._remember(key, partition, value)

    def _truncate_log(self) -> None:
        # The write-ahead log still holds the page images written before a delete; after a
        # checkpoint into the file (where ``secure_delete`` zeroed the freed bytes) it is cut
        # to nothing. (If the reader is in a statement just then, it waits up to busy_timeout.)
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (revoked): their rows and offsets are deleted, so they are read
        from the changelog again if they come back (another worker may have written since)."""
        gone = set(partitions) & (self.loaded | set(self._marks))
        if not gone:
            return
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN")
            for p in gone:
                db.execute("DELETE FROM persons WHERE part = ?", (p,))
                db.execute("DELETE FROM marks WHERE part = ?", (p,))
            db.execute("COMMIT")
            self._truncate_log()
        for key in [k for k, (p, _) in self._cache.items() if p in gone]:
            del self._cache[key]
        for key in [k for k, (p, _, _) in self._staged.items() if p in gone]:
            del self._staged[key]
        for p in gone:
            self._marks.pop(p, None)
        self.loaded -= gone

    # ------------------------------------------------------------------ the sweep
    def sweep_page(self, n: int) -> list[tuple[bytes, int, bytes]]:
        """The next ``n`` persons of a pass over every state held, in key order (a person
        written since the pass started is seen with its latest value if its key comes after
        the pass's position, and in the next pass otherwise), as (key, partition, value).
        An empty list ends a pass; the next call starts another."""
        page: list[tuple[bytes, int, bytes]] = []
        while not page:
            after = self._sweep_after or b""
            rows = self.db.execute("SELECT key, part, value FROM persons WHERE key > ? ORDER BY key LIMIT ?",
                                   (after, n)).fetchall()
            if not rows:
                self._sweep_after = None
                return []
            self._sweep_after = bytes(rows[-1][0])
            for key, partition, value in rows:
                key = bytes(key)
                staged = self._staged.get(key)
                if staged is not None:
                    if staged[1] is not None:
                        page.append((key, staged[0], staged[1]))
                else:
                    page.append((key, partition, bytes(value)))
        return page

    # ------------------------------------------------------------------ loading
    def _start_offset(self, partition: int, fence: int) -> int:
        """Where to read ``partition`` from: its offset in the file, if that is to be trusted;
        otherwise 0, after deleting its rows (a full rebuild)."""
        mark = self._marks.get(partition)
        if mark is not None:
            offset, marked_at = mark
            if offset <= fence and time.time() - marked_at <= MARK_MAX_AGE_S:
                return offset
            log.warning("state: changelog partition %d: offset %d not trusted (fence %d, %.0f s old): rebuilt",
                        partition, offset, fence, time.time() - marked_at)
        self.loaded.add(partition)  # (so drop() deletes it)
        self.drop({partition})
        return 0

    async def load(self, partitions: Iterable[int], send_acked: SendAcked,
                   make_consumer: Callable[[], AIOKafkaConsumer], *, limit_s: float = 300.0) -> int:
        """Bring ``partitions`` up to date with the changelog, exactly (see the module docstring):
        from the offset the file reflects, or from the beginning.

        Returns the number of changelog records read."""
        wanted = sorted(set(partitions) - self.loaded)
        if not wanted:
            return 0
        fences = {p: await send_acked(self.changelog, FENCE_KEY, None, p) for p in wanted}
        starts = {p: self._start_offset(p, f) for p, f in fences.items()}
        tps = {TopicPartition(self.changelog, p): f for p, f in fences.items()}
        consumer = make_consumer()
        await consumer.start()
        read = 0
        writing: asyncio.Future[None] | None = None
        try:
            consumer.assign(list(tps))
            rebuilt = [tp for tp in tps if starts[tp.partition] == 0]
            if rebuilt:  # (from the log's start, whatever compaction or retention removed)
                await consumer.seek_to_beginning(*rebuilt)
            for tp in tps:
                if starts[tp.partition]:
                    consumer.seek(tp, starts[tp.partition])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit_s
            pending = dict(tps)
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
                key_of = self.key_of
                rows = [(key_of(r.key) if key_of is not None and b"/" in r.key else r.key,  # (an earlier version's)
                         tp.partition, r.value)
                        for tp, records in batch.items() for r in records
                        if r.key is not None and not r.key.startswith(b"\x00")]
                read += sum(len(records) for records in batch.values())
                done = {}
                for tp, fence in list(pending.items()):
                    if await consumer.position(tp) > fence:
                        del pending[tp]
                        done[tp.partition] = fence + 1
                self.loaded.update(done)  # (so their offsets are written with their last rows)
                # (The file is written in a thread while the next records are fetched.)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(self._write_async(rows, done))
                if pending and loop.time() > deadline:
                    raise StoreLoadError(f"changelog {self.changelog} not read to its fence within "
                                         f"{limit_s:.0f} s: {sorted(tp.partition for tp in pending)}")
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                await asyncio.wait([writing])  # (never two writes at once, even after a failure)
            await consumer.stop()
        self.loaded.update(wanted)
        log.info("state: loaded changelog partitions %s from offsets %s (%d records, %d persons held)",
                 wanted, [starts[p] for p in wanted], read, len(self))
        return read


def store_directory(var_dir: Path, app_id: str) -> Path:
    """Where a worker keeps its person state: under its var dir, per application id."""
    return var_dir / "correlator" / app_id / "state"


def remove_store(directory: Path) -> None:
    """Delete the local files (a reset): the next start rebuilds from the changelog."""
    for path in directory.glob("persons-*"):
        os.unlink(path)
