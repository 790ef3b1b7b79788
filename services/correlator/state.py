"""Person state for the correlator worker: in memory, one changelog topic, rebuilt exactly.

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
  the partition from the beginning until the position is past ``F``. Every state write
  acknowledged before the fence (every write of the previous owner of the partition: it
  acknowledges them before it commits or gives the partition up) is at an offset below
  ``F``, on Tansu as on Apache Kafka, whatever either reports as end offset;
- a partition is loaded by the agent itself, before it processes the first record of that
  partition, and dropped when the partition is revoked, so a state is never read stale.

Values are the engine's bytes (sealed under the person's data key when the worker has a
key ring: :mod:`services.platform.datakeys`), re-validated by the engine on every read.
Given ``key_of``, the changelog's keys are not the engine's person keys (``key_id/value``,
the pseudonym) but ``key_of`` of them, a keyed digest: a record's key then names no one to
a reader without the exchange's marker key. Keys of an earlier version (they hold a ``/``)
are mapped the same way when a partition is loaded, so their states are found; their
records stay on the changelog until compaction. Fence records (key starting with NUL, value
null) never collide with either and are compacted away like any tombstone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("help.correlator.state")

FENCE_KEY = b"\x00fence"

#: Sends (topic, key, value, partition) and returns the offset the broker gave the record.
SendAcked = Callable[[str, bytes, bytes | None, int], Awaitable[int]]


class StoreLoadError(RuntimeError):
    """The changelog could not be read to the fence in time: the worker must stop."""


class PersonStore:
    """Person key -> state JSON, for the changelog partitions this worker has loaded."""

    def __init__(self, changelog: str, key_of: Callable[[bytes], bytes] | None = None) -> None:
        self.changelog = changelog
        #: The changelog key of an engine's key (None: the same).
        self.key_of = key_of
        self._values: dict[bytes, bytes] = {}
        self._partition_of: dict[bytes, int] = {}
        self.loaded: set[int] = set()
        self._sweep: list[bytes] = []
        self._sweep_done = False

    def changelog_key(self, key: bytes) -> bytes:
        return key if self.key_of is None else self.key_of(key)

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key if self.key_of is None else self.key_of(key))

    def put(self, key: bytes, partition: int, value: bytes | None) -> None:
        """Keep ``value`` for the engine's ``key`` (None: forget it)."""
        self._put(key if self.key_of is None else self.key_of(key), partition, value)

    def _put(self, key: bytes, partition: int, value: bytes | None) -> None:
        if value is None:
            self._values.pop(key, None)
            self._partition_of.pop(key, None)
        else:
            self._values[key] = value
            self._partition_of[key] = partition

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (revoked): reloaded from the changelog if they come back."""
        gone = set(partitions) & self.loaded
        if not gone:
            return
        for key in [k for k, p in self._partition_of.items() if p in gone]:
            del self._values[key]
            del self._partition_of[key]
        self.loaded -= gone

    def __len__(self) -> int:
        return len(self._values)

    def sweep_page(self, n: int) -> list[tuple[bytes, int, bytes]]:
        """The next ``n`` persons of a pass over every state held (a snapshot of the keys
        taken when a pass starts; keys gone since are skipped), as (changelog key, partition,
        value).
        An empty list ends a pass; the next call starts another."""
        if not self._sweep:
            if self._sweep_done:
                self._sweep_done = False
                return []
            self._sweep = list(self._values)
        page: list[tuple[bytes, int, bytes]] = []
        while self._sweep and len(page) < n:
            key = self._sweep.pop()
            value = self._values.get(key)
            if value is not None:
                page.append((key, self._partition_of[key], value))
        if not self._sweep:
            self._sweep_done = True
        return page

    async def load(self, partitions: Iterable[int], send_acked: SendAcked,
                   make_consumer: Callable[[], AIOKafkaConsumer], *, limit_s: float = 300.0) -> int:
        """Rebuild ``partitions`` from the changelog, exactly (see the module docstring).

        Returns the number of changelog records read."""
        wanted = sorted(set(partitions) - self.loaded)
        if not wanted:
            return 0
        fences = {p: await send_acked(self.changelog, FENCE_KEY, None, p) for p in wanted}
        tps = {TopicPartition(self.changelog, p): f for p, f in fences.items()}
        consumer = make_consumer()
        await consumer.start()
        read = 0
        try:
            consumer.assign(list(tps))
            await consumer.seek_to_beginning(*tps)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit_s
            pending = dict(tps)
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
                for tp, records in batch.items():
                    for r in records:
                        read += 1
                        if r.key is None or r.key.startswith(b"\x00"):
                            continue
                        key = r.key
                        if self.key_of is not None and b"/" in key:  # an earlier version's key
                            key = self.key_of(key)
                        self._put(key, tp.partition, r.value)
                for tp, fence in list(pending.items()):
                    if await consumer.position(tp) > fence:
                        del pending[tp]
                if pending and loop.time() > deadline:
                    raise StoreLoadError(f"changelog {self.changelog} not read to its fence within "
                                         f"{limit_s:.0f} s: {sorted(tp.partition for tp in pending)}")
        finally:
            await consumer.stop()
        self.loaded.update(wanted)
        log.info("state: loaded changelog partitions %s (%d records, %d persons held)",
                 wanted, read, len(self))
        return read
