"""A batch's checkpoint: its state writes acknowledged, then its outputs, then its offsets.

On the pattern of Quix Streams' ``Checkpoint.commit`` (produce, wait for every delivery,
then commit the consumed offsets, and nothing after a step that failed), adapted to a state
kept on a changelog topic:

(The data keys the batch made for its persons are in the key table before its checkpoint
is handed over: :meth:`~.processing.Processor._store_new_keys`.)

1. the person states the batch touched, written to the changelog and acknowledged: a
   situation event is only ever sent for a state already on the changelog, so version N of
   a situation means one content forever; then (``written``) the same states to the local
   store with the changelog offsets they reached (:meth:`~.state.PersonStore.applied`), so
   the local file never holds a state the changelog does not;
2. the outputs (receipts, dead letters, forwards, situation events), acknowledged;
3. the data keys the batch's erasures retired, destroyed (:mod:`services.platform.datakeys`:
   the states written under the new keys are on the broker by then; a crash before this
   step processes the records again, which destroys them then);
4. the next offsets of what the batch processed, committed.

A step that raises stops the sequence: nothing after it runs, so no offset is committed
past an effect that is not on the broker. The records come again after a restart, and the
engine recognises them (same signal id at the same position) and answers identically.

:class:`Checkpoints` runs the checkpoints of successive batches one after another while the
next batch is computed: a batch's checkpoint starts only when the previous one is done (the
broker sees the sequence that running the batches one by one gives), and at most one batch
is computed ahead of what is committed. The waits for acknowledgements were, measured on
the embedded broker, a quarter of a worker's time with the CPU otherwise idle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from services.correlator.engine import Output
from services.platform.stopping import EXIT_UNDRAINED

log = logging.getLogger("help.correlator")

#: The exit status of a worker that stops because a batch's effects failed (the platform's
#: status of a stop that left work uncommitted: services.platform.stopping).
EXIT_FATAL = EXIT_UNDRAINED

#: Send records and return once the broker has acknowledged every one; per topic partition,
#: the offset after the last record acknowledged (None: not known, e.g. a test's fake).
SendAll = Callable[[Sequence[Output]], Awaitable[Mapping[tuple[str, int], int] | None]]
#: Commit next offsets (the consumer group's).
Commit = Callable[[dict[TP, int]], Awaitable[None]]


@dataclass(frozen=True)
class Checkpoint:
    """What a batch leaves on the broker, in the order it must get there."""

    writes: Sequence[Output] = ()
    outputs: Sequence[Output] = ()
    offsets: dict[TP, int] = field(default_factory=dict)
    #: Destroys the data keys the batch retired (None: it retired none).
    destroy: Callable[[], Awaitable[None]] | None = None
    #: Told the next offsets the state writes reached, once acknowledged (the local store).
    written: Callable[[Mapping[tuple[str, int], int]], Awaitable[None]] | None = None

    async def commit(self, send: SendAll, commit: Commit) -> None:
        """State writes acknowledged (and kept locally), then outputs acknowledged, then the
        retired keys destroyed, then the offsets committed; an exception from a step is raised
        before the next one starts."""
        acked = await send(self.writes)
        if self.written is not None:
            await self.written(acked or {})
        await send(self.outputs)
        if self.destroy is not None:
            await self.destroy()
        if self.offsets:  # (a retention sweep's writes commit no offset)
            await commit(self.offsets)


class Checkpoints:
    """Checkpoints of successive batches, one after another, one batch ahead at most.

    A failure stops the process (``on_failure``, by default :func:`stop_now`): a later
    checkpoint never runs after a failed one."""

    def __init__(self, send: SendAll, commit: Commit,
                 on_failure: Callable[[BaseException], None] | None = None,
                 timed: Callable[[float], None] | None = None) -> None:
        self._send = send
        self._commit = commit
        self._last: asyncio.Task[None] | None = None
        self._on_failure = on_failure or stop_now
        #: told how long each checkpoint took, from its start after its predecessor (metrics)
        self._timed = timed

    async def submit(self, checkpoint: Checkpoint) -> None:
        """Start ``checkpoint`` after the previous one; return once the previous one is done."""
        effect = checkpoint.commit(self._send, self._commit)
        previous = self._last
        task = asyncio.ensure_future(self._after(previous, effect, self._timed))
        task.add_done_callback(self._done)
        self._last = task
        if previous is not None:
            await asyncio.shield(previous)

    @staticmethod
    async def _after(previous: asyncio.Task[None] | None, effect: Coroutine[Any, Any, None],
                     timed: Callable[[float], None] | None = None) -> None:
        if previous is not None:
            try:
                await asyncio.shield(previous)
            except BaseException:
                effect.close()  # never run after a failed predecessor
                raise
        started = time.perf_counter()
        await effect
        if timed is not None:
            timed(time.perf_counter() - started)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_failure(exc)

    async def drain(self) -> None:
        """Wait until every submitted checkpoint is done (a revocation, a stop)."""
        if self._last is not None:
            await asyncio.shield(self._last)


def stop_now(exc: BaseException) -> None:
    """Stop the process at once, committing nothing more (a bug or a broker failure)."""
    # (A task cancelled means the worker is stopping: nothing after it is committed either.)
    log.critical("correlator: a batch's effects failed, stopping without commit",
                 exc_info=(type(exc), exc, exc.__traceback__))
    logging.shutdown()
    os._exit(EXIT_FATAL)
