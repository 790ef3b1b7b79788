"""The person store on disk (services/correlator/state.py): values beyond the in-memory cache
still read correctly; a batch's writes reach the file only once acknowledged, with the
changelog offsets; a reopened file is caught up from its offset to the fence; a missing,
corrupt or foreign file, or an offset past the fence, falls back to a full rebuild; a
revoked partition is forgotten, on disk too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from services.correlator import state as state_module
from services.correlator.state import FENCE_KEY, PersonStore

CHANGELOG = "app-persons-changelog"


class Rec:
    def __init__(self, key: bytes | None, value: bytes | None) -> None:
        self.key, self.value = key, value


class Changelog:
    """A changelog (per partition, a list of records at offsets 0..n-1) and a consumer of it
    that records where each read started."""

    def __init__(self) -> None:
        self.parts: dict[int, list[Rec]] = {}
        self.starts: dict[int, int] = {}
        self._pos: dict[TopicPartition, int] = {}

    def append(self, partition: int, key: bytes, value: bytes | None) -> int:
        records = self.parts.setdefault(partition, [])
        records.append(Rec(key, value))
        return len(records) - 1

    async def send_acked(self, topic: str, key: bytes, value: bytes | None, partition: int) -> int:
        assert topic == CHANGELOG
        return self.append(partition, key, value)

    # --- the consumer
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list[TopicPartition]) -> None:
        self._pos = dict.fromkeys(tps, 0)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._pos[tp] = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._pos[tp] = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        out = {}
        for tp in tps:
            self.starts.setdefault(tp.partition, self._pos[tp])
            records = self.parts.get(tp.partition, [])[self._pos[tp]:self._pos[tp] + 3]  # a few a fetch
            self._pos[tp] += len(records)
            out[tp] = records
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self._pos[tp]

    async def load(self, store: PersonStore, partitions: set[int]) -> int:
        self.starts = {}
        return await store.load(partitions, self.send_acked, lambda: self)  # type: ignore[arg-type,return-value]


def checkpoint(store: PersonStore, log: Changelog, writes: dict[bytes, tuple[int, bytes | None]]) -> None:
    """What a checkpoint does with a batch's writes: staged, sent, then applied with offsets."""
    number = store.stage(writes)
    after: dict[int, int] = {}
    for key, (partition, value) in writes.items():
        after[partition] = log.append(partition, key, value) + 1
    store.applied(number, writes, after)


def on_disk(path: Path | None) -> dict[bytes, bytes]:
    import sqlite3

    assert path is not None
    with sqlite3.connect(path) as db:
        return {bytes(k): bytes(v) for k, v in db.execute("SELECT key, value FROM persons")}


async def test_states_beyond_the_cache_are_read_back_from_disk(tmp_path: Path) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=2, cache_persons=10)
    await log.load(store, {0, 1})
    for i in range(100):
        checkpoint(store, log, {f"k/{i}".encode(): (i % 2, f"state {i}".encode())})
    assert len(store._cache) <= 10  # the bound holds…
    assert all(store.get(f"k/{i}".encode()) == f"state {i}".encode() for i in range(100))  # …and nothing is lost
    assert len(store) == 100 and store.get(b"k/none") is None
    checkpoint(store, log, {b"k/3": (1, None)})  # a delete reaches the file
    assert store.get(b"k/3") is None and b"k/3" not in on_disk(store.path)


async def test_staged_writes_are_read_at_once_but_reach_the_file_only_when_applied(tmp_path: Path) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1, cache_persons=0)
    await log.load(store, {0})
    first = store.stage({b"p": (0, b"v1")})
    second = store.stage({b"p": (0, b"v2")})
    assert store.get(b"p") == b"v2" and on_disk(store.path) == {}  # not on the changelog yet
    store.applied(first, {b"p": (0, b"v1")}, {0: 2})
    assert store.get(b"p") == b"v2"  # the later batch's value still wins
    store.applied(second, {b"p": (0, b"v2")}, {0: 3})
    assert on_disk(store.path) == {b"p": b"v2"} and store._marks[0][0] == 3


async def test_a_reopened_store_reads_the_changelog_only_from_its_offset(tmp_path: Path) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=2)
    await log.load(store, {0, 1})
    for i in range(20):
        checkpoint(store, log, {f"k/{i}".encode(): (i % 2, b"a")})
    marks = {p: o for p, (o, _) in store._marks.items()}
    store.close()  # (a kill: nothing else is written)
    # Another worker owned partition 1 meanwhile and wrote after our offset.
    log.append(1, b"k/1", b"theirs")
    log.append(1, b"k/new", b"new")
    reopened = PersonStore(CHANGELOG, directory=tmp_path, partitions=2)
    assert reopened.path == store.path
    read = await log.load(reopened, {0, 1})
    assert log.starts == marks  # from the offsets, not from the beginning
    assert read == 1 + 3  # the fence of partition 0; the two new records and the fence of 1
    assert reopened.get(b"k/1") == b"theirs" and reopened.get(b"k/new") == b"new"
    assert reopened.get(b"k/0") == b"a" and len(reopened) == 21


async def test_a_missing_corrupt_or_foreign_store_is_rebuilt_from_the_beginning(tmp_path: Path) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await log.load(store, {0})
    checkpoint(store, log, {b"k/a": (0, b"a"), b"k/b": (0, b"b")})
    path = store.path
    store.close()
    assert path is not None

    foreign = PersonStore(CHANGELOG, directory=tmp_path, partitions=3)  # written for another partition count
    await log.load(foreign, {0})
    assert log.starts == {0: 0} and foreign.get(b"k/a") == b"a"
    foreign.close()

    path.write_bytes(b"not a database" * 100)  # corrupt
    Path(f"{path}-wal").unlink(missing_ok=True)
    rebuilt = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await log.load(rebuilt, {0})
    assert log.starts == {0: 0} and rebuilt.get(b"k/b") == b"b"
    rebuilt.close()

    for p in tmp_path.glob("persons-*"):  # missing
        p.unlink()
    again = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await log.load(again, {0})
    assert log.starts == {0: 0} and again.get(b"k/a") == b"a"


async def test_an_offset_past_the_fence_or_too_old_is_not_trusted(tmp_path: Path, monkeypatch: Any) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await log.load(store, {0})
    checkpoint(store, log, {b"k/a": (0, b"a")})
    checkpoint(store, log, {b"k/stale": (0, b"x")})
    store.close()
    # A new broker: its changelog is shorter than our offset.
    fresh = Changelog()
    fresh.append(0, b"k/a", b"fresh")
    reopened = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await fresh.load(reopened, {0})
    assert fresh.starts == {0: 0} and reopened.get(b"k/a") == b"fresh" and reopened.get(b"k/stale") is None
    reopened.close()
    # An offset older than the changelog's tombstones are kept: rebuilt too.
    later = time.time() + state_module.MARK_MAX_AGE_S + 60
    monkeypatch.setattr(state_module.time, "time", lambda: later)
    old = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await fresh.load(old, {0})
    assert fresh.starts == {0: 0}


async def test_a_revoked_partition_is_forgotten_in_memory_and_on_disk(tmp_path: Path) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=2)
    await log.load(store, {0, 1})
    checkpoint(store, log, {b"k/0": (0, b"zero"), b"k/1": (1, b"one")})
    store.drop({1})
    assert store.get(b"k/1") is None and b"k/1" not in on_disk(store.path) and 1 not in store._marks
    assert store.get(b"k/0") == b"zero"
    log.append(1, b"k/1", b"changed elsewhere")  # written by the partition's next owner
    await log.load(store, {1})
    assert log.starts == {1: 0} and store.get(b"k/1") == b"changed elsewhere"


async def test_a_second_worker_on_the_same_var_dir_gets_its_own_file(tmp_path: Path) -> None:
    one = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    two = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    assert one.path != two.path
    one.close()
    three = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)  # the first's file, free again
    assert three.path == one.path


async def test_fences_are_not_states(tmp_path: Path) -> None:
    log = Changelog()
    log.append(0, FENCE_KEY, None)
    log.append(0, b"k/a", b"a")
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1)
    await log.load(store, {0})
    assert on_disk(store.path) == {b"k/a": b"a"}


async def test_staged_values_are_read_until_the_file_has_them(tmp_path: Path) -> None:
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1, cache_persons=0)
    await log.load(store, {0})
    writes: dict[bytes, tuple[int, bytes | None]] = {f"k/{i}".encode(): (0, b"v" * 500) for i in range(5000)}
    number = store.stage(writes)
    applying = asyncio.ensure_future(store.apply(number, writes, {0: 5001}))
    await asyncio.sleep(0)
    assert all(store.get(k) == b"v" * 500 for k in list(writes)[::50])  # read meanwhile, whatever the file holds
    await applying
    assert store._staged == {} and len(on_disk(store.path)) == 5000 and store._marks[0][0] == 5001
    assert store.get(b"k/4999") == b"v" * 500


async def test_a_key_deleted_then_written_again_in_one_read_keeps_its_last_value(tmp_path: Path) -> None:
    log = Changelog()
    for value in (b"v1", None, b"v2"):  # (one fetch of the fake consumer: three records)
        log.append(0, b"k/a", value)
    log.append(0, b"k/b", b"b")
    log.append(0, b"k/b", None)
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1, cache_persons=0)
    await log.load(store, {0})
    assert on_disk(store.path) == {b"k/a": b"v2"}
    assert store.get(b"k/a") == b"v2" and store.get(b"k/b") is None


async def test_every_key_on_disk_is_found_whatever_the_absent_key_filter_holds(tmp_path: Path,
                                                                                monkeypatch: Any) -> None:
    from services.correlator import key_filter

    monkeypatch.setattr(key_filter, "MIN_CAPACITY", 8)  # a tiny filter: it is rebuilt larger as keys come
    log = Changelog()
    store = PersonStore(CHANGELOG, directory=tmp_path, partitions=1, cache_persons=0)
    await log.load(store, {0})
    first = store._filter
    for i in range(300):
        checkpoint(store, log, {f"k/{i}".encode(): (0, f"state {i}".encode())})
    assert store._filter is not first and store._filter.capacity >= 300  # rebuilt larger from the file
    assert all(store.get(f"k/{i}".encode()) == f"state {i}".encode() for i in range(300))
    absent = [f"n/{i}".encode() for i in range(2000)]
    assert sum(store._filter.may_hold(k) for k in absent) < 200  # most absent keys cost no read
    assert all(store.get(k) is None for k in absent)
    store.close()
    reopened = PersonStore(CHANGELOG, directory=tmp_path, partitions=1, cache_persons=0)  # built from the file
    assert all(reopened.get(f"k/{i}".encode()) == f"state {i}".encode() for i in range(300))
