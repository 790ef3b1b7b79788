"""What the worker does with a batch, a rebalance and a retention tick, under one lock.

Per batch, in this order: choose the records to process (:class:`~.positions.Positions`);
load the state of partitions seen for the first time (:class:`~.state.PersonStore`); run the
engine, letting the event loop run between its steps (the previous batch's checkpoint
progresses meanwhile); keep the touched states; hand the batch's
:class:`~.checkpoint.Checkpoint` (state writes, outputs, next offsets) to
:class:`~.checkpoint.Checkpoints`. A revocation takes the same lock and waits for the
checkpoints, so a partition is revoked between batches, never during one, and only once
what was processed of it is committed. A stop (:meth:`Processor.stop`, on SIGTERM or SIGINT)
takes the lock too: the batch in progress finishes, its checkpoint and every one before it
complete, and no batch or sweep starts after it (what was fetched and not processed is not
committed: it is read again at the next start).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from faust.types import TP

from services.correlator.checkpoint import Checkpoint, Checkpoints
from services.correlator.delivery import to_record
from services.correlator.engine import REPARTITION_TOPIC, Batch, Engine, Output, Record
from services.correlator.gauges import WorkerGauges
from services.correlator.holds import Backpressure
from services.correlator.positions import Positions
from services.correlator.state import PersonStore, SendAcked
from services.platform.datakeys import SUBJECT_BYTES, KeyRing, envelope, is_sealed
from services.platform.runtime import HeapPolicy

#: The engine lets the event loop run after every so many records of a batch.
STEP_RECORDS = 256
#: Times a batch is computed at most when its new keys lose their insert to another writer
#: (each time the ring takes the keys that won; a third loss in a row stops the worker).
KEY_RACES = 3

log = logging.getLogger("help.correlator")


class Processor:
    """The correlator's batches, rebalances and retention sweep, for one worker."""

    def __init__(self, engine: Engine, store: PersonStore, positions: Positions,
                 checkpoints: Checkpoints, heap: HeapPolicy, *, topics: set[str],
                 send_one: SendAcked, loader: Callable[[], AIOKafkaConsumer],
                 gauges: WorkerGauges | None = None, keys: KeyRing | None = None,
                 backpressure: Backpressure | None = None) -> None:
        self.engine = engine
        #: Pauses the partitions holding too many records for hand-overs (None: never).
        self.backpressure = backpressure
        #: The persons' data keys the engine seals states with (None: states in clear).
        self.keys = keys
        self.store = store
        self.positions = positions
        self.checkpoints = checkpoints
        self.heap = heap
        self.topics = topics
        self._send_one = send_one
        self._loader = loader
        self.gauges = gauges
        self.lock = asyncio.Lock()
        #: Set by :meth:`stop`: nothing new starts.
        self.stopping = False

    async def batch(self, received: Sequence[Any]) -> None:
        """Process a batch of fetched messages (after the one in progress)."""
        async with self.lock:
            if not self.stopping:
                await self._batch(received)

    async def _batch(self, received: Sequence[Any]) -> None:
        messages = await self.positions.select(received)
        if not messages:
            return
        started = time.perf_counter()
        store = self.store
        await store.load({m.partition for m in messages}, self._send_one, self._loader)
        records = [to_record(m) for m in messages]
        if self.keys is not None:  # the batch's keys in one lookup
            await asyncio.to_thread(self._prefetch, records)
        for attempt in range(KEY_RACES):
            steps = self.engine.steps(records, store.get, every=STEP_RECORDS)
            batch: Batch
            while True:  # the previous batch's checkpoint progresses between the steps
                try:
                    next(steps)
                except StopIteration as end:
                    batch = end.value
                    break
                await asyncio.sleep(0)
            if not await self._store_new_keys(attempt):
                break
        # The offsets now: the next batch advances the positions before this one commits.
        offsets = self.positions.offsets({m.tp for m in messages})
        writes, written = self._keep(batch.writes)
        await self.checkpoints.submit(Checkpoint(writes, batch.outputs, offsets, written=written,
                                                 destroy=self._destroy_keys()))
        if self.backpressure is not None:
            self.backpressure.after_batch(self.positions.assigned)
        if self.gauges is not None:  # (once per batch: the time includes waiting for the previous checkpoint)
            self.gauges.batch_done(time.perf_counter() - started, len(messages), batch.accepted, batch.reasons)
        self.heap.after_batch()

    def _keep(self, writes: Mapping[bytes, tuple[int, bytes | None]]
              ) -> tuple[list[Output], Callable[[Mapping[tuple[str, int], int]], Awaitable[None]]]:
        """Stage the touched states (the next batch reads them); their changelog records, and
        what writes them to the local store once the changelog has acknowledged them."""
        store, changelog = self.store, self.store.changelog
        # Staged under their changelog keys (a keyed digest of the person key, see state.py).
        staged = {store.changelog_key(key): write for key, write in writes.items()}
        number = store.stage(staged)

        async def written(acked: Mapping[tuple[str, int], int]) -> None:
            await store.apply(number, staged, {p: o for (t, p), o in acked.items() if t == changelog})

        return [Output(changelog, key, value, partition) for key, (partition, value) in staged.items()], written

    def _prefetch(self, records: Sequence[Record]) -> None:
        """Look up the data keys of the batch's persons at once: a fund's record is keyed by
        the pseudonym's value, one on the repartition topic by the person's subject (an
        earlier version's, for the topic's 7 days, by the pseudonym's value)."""
        assert self.keys is not None
        values: set[bytes] = set()
        subjects: set[bytes] = set()
        for r in records:
            if not r.key:
                continue
            if r.topic == REPARTITION_TOPIC and len(r.key) == 2 * SUBJECT_BYTES:
                try:
                    subjects.add(bytes.fromhex(r.key.decode("ascii")))
                    continue
                except ValueError:
                    pass
            values.add(r.key)
        self.keys.prefetch_subjects(subjects | {self.keys.subject(v) for v in values})

    async def _store_new_keys(self, attempt: int) -> bool:
        """Insert the keys the batch made, before anything sealed under them is handed to
        the checkpoint; True if some were made meanwhile by another writer (the key endpoint
        handing a fund the person's first key): the ring takes those, and the batch must be
        computed again, its values sealed under them (a race of the first keys, rare).

        (Inserted here, not in the checkpoint while the next batch is computed: a key that
        loses its insert must be known before any value sealed under it is on its way.)"""
        keys = self.keys
        if keys is None:
            return False
        new = keys.take_new()
        if not new:
            return False
        taken = await asyncio.to_thread(keys.store.insert, new)
        if not taken:
            return False
        if attempt == KEY_RACES - 1:
            raise RuntimeError(f"the key table kept changing under {len(taken)} persons' new keys")
        keys.adopt(taken)
        log.warning("correlator: %d persons' new keys made meanwhile by another writer (the key endpoint): "
                    "the batch is computed again with theirs", len(taken))
        return True

    def _destroy_keys(self) -> Callable[[], Awaitable[None]] | None:
        """The checkpoint's step that destroys the keys the batch retired (after its writes
        and outputs are on the broker)."""
        keys = self.keys
        if keys is None:
            return None
        store = keys.store
        retired = keys.take_retired()

        async def destroy() -> None:
            await asyncio.to_thread(store.destroy, retired)

        return destroy if retired else None

    async def sweep(self, page: int) -> int:
        """One page of the retention sweep, between batches (a state is never swept and
        processed at once); its writes are checkpointed as a batch's, with no offset."""
        if self.backpressure is not None:  # holds age while nothing comes: reported all the same
            self.backpressure.after_batch(self.positions.assigned)
        if self.keys is not None:  # destroyed keys out of SQLite's WAL too, in time
            await asyncio.to_thread(self.keys.store.maybe_scrub)
        async with self.lock:
            if self.stopping:
                return 0
            items = self.store.sweep_page(page)
            if self.keys is not None:  # the page's keys in one lookup, not one per person
                subjects = [envelope(raw)[0] for _, _, raw in items if is_sealed(raw)]
                await asyncio.to_thread(self.keys.prefetch_subjects, subjects)
            for attempt in range(KEY_RACES):
                events: list[Output] = []  # the situations of rotated persons, published again
                writes = self.engine.sweep(items, events)
                if not await self._store_new_keys(attempt):
                    break
            if writes:
                outputs, written = self._keep(writes)
                await self.checkpoints.submit(Checkpoint(outputs, events, written=written,
                                                         destroy=self._destroy_keys()))
        return len(writes)

    async def stop(self) -> None:
        """After the batch in progress, with every checkpoint done; no batch starts after."""
        self.stopping = True
        async with self.lock:
            await self.checkpoints.drain()

    async def revoked(self, tps: set[TP]) -> None:
        """After the batch in progress, with what was processed on the broker and committed."""
        async with self.lock:
            await self.checkpoints.drain()
            ours = {tp for tp in tps if tp.topic in self.topics}
            self.positions.revoke(ours)
            still = {tp.partition for tp in self.positions.assigned}
            self.store.drop({tp.partition for tp in ours} - still)
            if self.backpressure is not None:  # their holds are another worker's now
                self.backpressure.revoked({tp.partition for tp in ours} - still)
            if self.keys is not None:  # another worker may rotate those persons' keys now
                self.keys.clear()

    async def assigned(self, tps: set[TP]) -> None:
        async with self.lock:
            self.positions.assign({tp for tp in tps if tp.topic in self.topics})
