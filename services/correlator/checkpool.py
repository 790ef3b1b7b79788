"""The stateless checks of :mod:`services.correlator.checks`, in helper processes.

Why processes, not threads: the signature check is the largest part of a signal's cost and
libsodium releases the GIL, but a thread that comes back from C must wait for the GIL,
which the busy engine thread gives up only every switch interval: a checking thread then
managed one signature per switch interval. A helper process has its own interpreter; with
the JSON parsing and the canonical form it takes most of every signal's cost off the
worker's thread, on another core (``bench/correlator.py`` measures both).

Protocol, over the helper's stdin/stdout, each frame a 4-byte little-endian length and a
pickle: first the registry (its JSON) and the partition count, then requests — a list of ``(value, source topic)``
— each answered in order by the list of their verdicts (:func:`~.checks.to_plain`), and,
between requests, a new registry when the worker reloaded it — a tuple ``("registry",
JSON)``, not answered — which applies to every request after it (:meth:`CheckPool.update`). The
engine asks for the verdicts in record order; a batch is cut in chunks spread over the
helpers (the first ones smaller: the engine starts after a few records' checks), written
ahead within a bounded window, so the first verdicts come back while the helpers are still
checking the rest and the engine's own work overlaps theirs. The same
:class:`~.checks.Checker` runs in the helper as inline, so the verdicts are the same.

A helper that dies or answers nonsense during a batch raises :class:`CheckPoolError`: the
worker stops without committing (the batch is read again after a restart). A helper that
dies between batches (an idle worker) loses nothing: :func:`watch` notices it as it happens
(the kernel's process descriptor, ``os.pidfd_open``, readable at the helper's exit; where
there is none, a look every :data:`WATCH_POLL_S`), the worker logs it at ERROR and, between
two batches, :meth:`CheckPool.replace_dead` starts a new helper with the current registry
and counts it (:attr:`CheckPool.replacements`); helpers that keep dying
(:data:`REPLACEMENTS_MAX` within :data:`REPLACEMENTS_WINDOW_S`) stop the worker instead.
A helper whose worker dies reads the end of its stdin and exits; it ignores SIGINT and
SIGTERM (a Ctrl-C reaches the whole process group): its worker stops it by closing its
stdin once the batch in progress is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

from services.core.registry import Registry
from services.correlator.checks import Checker, Verdict, WireVerdict, from_plain, to_plain
from services.errors import HelpExchangeError
from services.platform.runtime import tune_for_streaming
from services.platform.topics import CONTRACT_PARTITIONS

#: Records per request: small enough that the first verdicts come back quickly, large enough
#: that the pipe writes and wake-ups stay few (128 beat 32 in the correlator bench's A/B).
CHUNK = 128
#: Bytes of requests a helper may have unanswered (within the pipe, which is made larger).
WINDOW_BYTES = 512 * 1024
_F_SETPIPE_SZ = 1031  # Linux fcntl: pipe capacity
_HEADER = struct.Struct("<I")
#: First member of the frame that hands a helper a reloaded registry.
REGISTRY_MESSAGE = "registry"
#: Where the kernel gives no process descriptor: how often :func:`watch` looks at the helpers.
WATCH_POLL_S = 0.2
#: More replacements than this within the window stop the worker (something kills them).
REPLACEMENTS_MAX = 5
REPLACEMENTS_WINDOW_S = 60.0

log = logging.getLogger("help.correlator")


class CheckPoolError(HelpExchangeError):
    """A checking helper died or broke the protocol: the worker must stop without commit."""


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError):  # not Linux, or above the system's limit: the default
        pass


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        data = os.read(fd, n)
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_frame(fd: int) -> bytes | None:
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    return _read_exact(fd, _HEADER.unpack(header)[0])


class _Helper:
    def __init__(self, registry_json: bytes, partitions: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.correlator.checkpool"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.out_fd = self.proc.stdout.fileno()
        _grow_pipe(self.stdin.fileno())
        _grow_pipe(self.out_fd)
        #: Sizes of the requests written and not yet answered, oldest first.
        self.unanswered: list[int] = []
        self.send(pickle.dumps((registry_json, partitions)), expect_answer=False)

    def send(self, payload: bytes, *, expect_answer: bool = True) -> None:
        try:
            _write_frame(self.stdin, payload)
        except (BrokenPipeError, OSError) as exc:
            raise CheckPoolError(f"a checking helper is gone (exit {self.proc.poll()})",
                                 "see the worker's log; it restarts from the last commit") from exc
        if expect_answer:
            self.unanswered.append(len(payload))

    def use_registry(self, registry_json: bytes) -> None:
        self.send(pickle.dumps((REGISTRY_MESSAGE, registry_json)), expect_answer=False)

    def in_flight(self) -> int:
        return sum(self.unanswered)

    def receive(self) -> list[WireVerdict]:
        payload = _read_frame(self.out_fd)
        if payload is None:
            raise CheckPoolError(f"a checking helper is gone (exit {self.proc.poll()})",
                                 "see the worker's log; it restarts from the last commit")
        self.unanswered.pop(0)
        answer: Any = pickle.loads(payload)
        if not isinstance(answer, list):
            raise CheckPoolError("a checking helper answered out of protocol", "report it as a bug")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stdout is not None:  # (through its file object, which owns the fd)
            self.proc.stdout.close()


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    """The requests of a batch of ``n`` records: ``chunk`` records each, after a ramp of
    smaller ones (an eighth, a quarter, a half): the engine waits for its first verdicts
    the time of a few records' checks, not of a whole chunk's."""
    sizes = [max(1, chunk // 8), max(1, chunk // 4), max(1, chunk // 2)]
    bounds, start = [], 0
    while start < n:
        end = min(n, start + (sizes.pop(0) if sizes else chunk))
        bounds.append((start, end))
        start = end
    return bounds


class CheckPool:
    """``processes`` helpers running the checks for one engine (one batch at a time)."""

    def __init__(self, registry: Registry, processes: int = 1, *, partitions: int = CONTRACT_PARTITIONS,
                 chunk: int = CHUNK) -> None:
        if processes < 1:
            raise ValueError("a check pool needs at least one process")
        self._registry_json = registry.model_dump_json().encode()
        self._partitions = partitions
        self.helpers = [_Helper(self._registry_json, partitions) for _ in range(processes)]
        self.chunk = chunk
        #: Helpers replaced since the start (a dead helper found between batches); the worker
        #: counts them in ``help_correlator_check_helpers_replaced`` too.
        self.replacements = 0
        self._recent: deque[float] = deque(maxlen=REPLACEMENTS_MAX)

    def update(self, registry: Registry) -> None:
        """Check with ``registry`` from the next request on, in every helper."""
        registry_json = registry.model_dump_json().encode()
        self._registry_json = registry_json
        for helper in self.helpers:
            helper.use_registry(registry_json)

    def dead(self) -> list[int]:
        """The index of every helper that has exited."""
        return [i for i, helper in enumerate(self.helpers) if helper.proc.poll() is not None]

    def replace_dead(self) -> int:
        """Between batches: a new helper, with the current registry, for each one that has
        exited; how many. Raises :class:`CheckPoolError` if a dead helper still owed
        verdicts (a batch in progress: the batch fails instead) or if helpers keep dying."""
        replaced = 0
        for i in self.dead():
            old = self.helpers[i]
            if old.unanswered:
                raise CheckPoolError("a checking helper died during a batch",
                                     "see the worker's log; it restarts from the last commit")
            now = time.monotonic()
            if len(self._recent) == REPLACEMENTS_MAX and now - self._recent[0] < REPLACEMENTS_WINDOW_S:
                raise CheckPoolError(f"checking helpers keep dying ({REPLACEMENTS_MAX} replaced within "
                                     f"{REPLACEMENTS_WINDOW_S:.0f} s)",
                                     "see the worker's log and the system's (out of memory?); "
                                     "the worker restarts from the last commit")
            old.close()
            self.helpers[i] = _Helper(self._registry_json, self._partitions)
            self._recent.append(now)
            self.replacements += 1
            replaced += 1
        return replaced

    def start(self, items: Sequence[tuple[bytes | None, str]]) -> Callable[[int], Verdict]:
        chunk, helpers = self.chunk, self.helpers
        for helper in helpers:  # the previous batch's verdicts were all taken
            if helper.unanswered:
                raise CheckPoolError("a check pool was given a batch before the last was read",
                                     "report it as a bug")
        requests = [pickle.dumps(list(items[start:end]), protocol=pickle.HIGHEST_PROTOCOL)
                    for start, end in _chunks(len(items), chunk)]
        written = received = 0

        def write_ahead() -> None:
            nonlocal written
            while written < len(requests):
                helper = helpers[written % len(helpers)]
                if helper.unanswered and helper.in_flight() + len(requests[written]) > WINDOW_BYTES:
                    return
                helper.send(requests[written])
                written += 1

        write_ahead()
        answers: list[Verdict] = []

        def verdict(i: int) -> Verdict:
            nonlocal received
            while i >= len(answers):
                if received >= written:
                    write_ahead()
                answers.extend(from_plain(v) for v in helpers[received % len(helpers)].receive())
                received += 1
                write_ahead()
            return answers[i]

        return verdict

    def close(self) -> None:
        for helper in self.helpers:
            helper.close()


async def watch(pool: CheckPool, on_death: Callable[[list[int]], Awaitable[None]]) -> None:
    """Forever: wait until a helper of ``pool`` exits, then await ``on_death(indexes of the
    dead helpers)`` (which replaces them, or stops the worker), and watch again."""
    while True:
        await _any_exit([helper.proc for helper in pool.helpers])
        dead = pool.dead()
        if dead:
            await on_death(dead)


async def _any_exit(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Return once one of ``procs`` has exited: at once through process descriptors, which
    the kernel makes readable at the exit; without them, by looking every WATCH_POLL_S."""
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    fds: list[int] = []
    try:
        for proc in procs:
            try:
                fd = os.pidfd_open(proc.pid)
            except ProcessLookupError:  # already exited and reaped
                exited.set()
                continue
            fds.append(fd)
            loop.add_reader(fd, exited.set)
        if any(proc.poll() is not None for proc in procs):
            return
        await exited.wait()
    except (AttributeError, NotImplementedError, OSError):  # no pidfd here (not Linux 5.3+)
        while all(proc.poll() is None for proc in procs):
            await asyncio.sleep(WATCH_POLL_S)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """The helper's loop: the registry, then requests answered in order until end of input
    (and reloaded registries, taken between two requests)."""
    first = _read_frame(stdin_fd)
    if first is None:
        return 0
    registry_json, partitions = pickle.loads(first)
    checker = Checker(Registry.model_validate_json(registry_json), partitions)
    check = checker.check
    with os.fdopen(stdout_fd, "wb", buffering=0, closefd=False) as out:
        while True:
            payload = _read_frame(stdin_fd)
            if payload is None:
                return 0
            items = pickle.loads(payload)
            if type(items) is tuple and items[0] == REGISTRY_MESSAGE:
                checker.use(Registry.model_validate_json(items[1]))
                continue
            _write_frame(out, pickle.dumps([to_plain(check(value, topic)) for value, topic in items],
                                           protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    # The worker decides when a helper stops (the end of its stdin): a Ctrl-C or a SIGTERM
    # sent to the process group must not end a batch's checks before the worker has drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_for_streaming()  # as the worker (services.platform.runtime)
    sys.exit(serve())
