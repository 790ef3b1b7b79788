"""A small TCP fault proxy (loopback only) for the network-fault tests.

It listens on ``127.0.0.1:<port>`` and forwards to the broker's listener. While ``faults`` is
on, each new connection draws its fate: some are refused at once (accepted then closed), some
are reset (RST, SO_LINGER 0) or closed (FIN) after a random number of bytes, in either
direction, and chunks are delayed at random. Kafka clients reconnect to the address the broker
*advertises*, so the broker under test is started advertising this proxy (see
:func:`tests.support.processes.start_broker`): every connection, bootstrap or not, goes
through here.

It runs its own event loop in a daemon thread, so tests drive subprocesses synchronously
while it works. Every fault is counted (``faults_injected`` of the summary table).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field

from tests.suite_summary import count


@dataclass
class FaultPlan:
    refuse: float = 0.10          # share of connections closed at once
    reset: float = 0.20           # share reset (RST) after a random number of bytes
    close: float = 0.10           # share closed (FIN) after a random number of bytes
    delay: float = 0.30           # share of chunks delayed
    max_delay_s: float = 0.4
    max_bytes_before_fault: int = 48 * 1024


@dataclass
class FaultProxy:
    target_port: int
    port: int
    seed: int = 0
    plan: FaultPlan = field(default_factory=FaultPlan)
    faults: bool = False
    injected: Counter[str] = field(default_factory=Counter)
    connections: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        loop.run_until_complete(serve())
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def total_faults(self) -> int:
        return sum(self.injected.values())

    def _fault(self, kind: str) -> None:
        self.injected[kind] += 1
        count("faults_injected")

    # ------------------------------------------------------------------ connections
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        fate = "none"
        limit = 0
        if self.faults:
            draw = self._rng.random()
            p = self.plan
            if draw < p.refuse:
                fate = "refuse"
            elif draw < p.refuse + p.reset:
                fate = "reset"
            elif draw < p.refuse + p.reset + p.close:
                fate = "close"
            limit = self._rng.randint(0, p.max_bytes_before_fault)
        if fate == "refuse":
            self._fault("refused")
            _reset(writer)
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        budget = [limit]
        done = asyncio.Event()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while not done.is_set():
                    data = await src.read(16 * 1024)
                    if not data:
                        break
                    if self.faults and self._rng.random() < self.plan.delay:
                        self._fault("delayed")
                        await asyncio.sleep(self._rng.uniform(0.01, self.plan.max_delay_s))
                    if fate in ("reset", "close") and self.faults:
                        budget[0] -= len(data)
                        if budget[0] < 0:
                            self._fault("reset" if fate == "reset" else "closed")
                            if fate == "reset":
                                _reset(writer)
                                _reset(up_writer)
                            break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                done.set()

        tasks = [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]
        await done.wait()
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()
            self._writers.discard(w)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.close()
