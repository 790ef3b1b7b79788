"""Correlator benchmark, in one run on one embedded broker (``python -m bench.correlator``).

1. Publishes N signed signals (pairs of funds per person) on the signal topics, in the form
   the producers write them (the canonical form of the signed message, RFC 8785).
2. Raw aiokafka consumption rate of those topics (no work at all).
3. The reference point: a plain per-message Faust agent (:mod:`bench.plain_agent`: signature
   check, validation and a table write, Faust's defaults) in its own consumer group, on the
   same records, until it has processed ``BENCH_PLAIN_SIGNALS`` of them (the first it reads):
   its rate from its first to its last processed record (its own clock), per CPU-second of
   its process too, then it is stopped. The goal (issue 19) is a ratio correlator / plain
   agent of 3 or more, and the correlator ahead of Quix Streams; measured in the same run,
   on the same broker, the ratio depends far less on how fast the machine is that day than
   either rate. (The plain agent uses the correlator's group timeouts, from the session
   timeout, not Faust's 60 s, which held its first join 30 s.)
4. The Quix Streams peer (:mod:`bench.quix_peer`: the same job written with Quix Streams,
   its RocksDB state and its checkpoints) in its own consumer group over every record, with
   the processing guarantee the broker allows (:func:`transactions_verdict` probes whether
   exactly-once would hold; at-least-once otherwise, and the reason is printed): its rate
   and per CPU-second as the plain agent's; the situations on its output topic must be as
   many as our worker's on the same records, or its figures are not reported. It runs in
   the interpreter that has Quix Streams (:func:`quix_python`: ``make bench``'s
   ``.venv-bench``).
5. The correlator worker (a real ``help-exchange correlator`` process, every check on)
   on the same records: full-work rate from its first to its last receipt (the first
   fetch's receipts not counted, as the peers do not count their first record), and the
   situations it opened.
6. Latency: with the worker caught up, publish at a steady 2,000 signals/s and measure
   publish -> situation event (p50, p99), from the second signal of each person.

The machine is shared: the load average is printed, and the worker's own CPU time per
signal (user + system, from /proc) gives a rate that the other processes affect far less
than the wall-clock one ("per CPU-second"): the worker process alone, then with its check
helpers (:mod:`services.correlator.checkpool`), whose CPU is counted too; and the embedded
broker's CPU meanwhile, which competes for the same cores.

``BENCH_SIGNALS`` sets the number of signals (30,000), ``BENCH_PLAIN_SIGNALS`` how many of
them the plain agent processes (10,000; 0 skips it), ``BENCH_QUIX=0`` skips the Quix Streams
peer, ``BENCH_QUIX_PYTHON`` names its interpreter; ``BENCH_WORKER_ARGS`` passes options
to ``help-exchange correlator`` (e.g. ``--check-processes 1 --batch-max 1000``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.core.codec import canonical
from services.core.messages import Pseudonym
from services.core.person import situation_id_for
from services.core.types import Fund
from services.platform.broker import EmbeddedBroker
from services.platform.kafka import apply_topics
from services.platform.partitioning import partition_for
from services.platform.settings import Settings, load_settings
from services.platform.topics import (
    CONTRACT_PARTITIONS,
    SITUATIONS_TOPIC,
    load_topic_specs,
    receipt_topic,
    signal_topic,
)
from tests.correlator.harness import REPO, publish, start_worker, stop
from tests.support.local import free_port
from tests.support.signals import EXCHANGE_KEY, Funds

N = int(os.environ.get("BENCH_SIGNALS", "30000"))
PLAIN_N = int(os.environ.get("BENCH_PLAIN_SIGNALS", "10000"))
#: "0" skips the Quix Streams peer.
QUIX = os.environ.get("BENCH_QUIX", "1") != "0"
RATE = 2000
#: The topic the Quix Streams peer writes its situations to (not ours: its own output).
QUIX_OUTPUT = "bench-quix-situations"
LAT_SECONDS = 10


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc): the worker's check helpers."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def helpers_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def items_for(funds: Funds, prefix: str, people: int) -> list[tuple[str, bytes, bytes, int]]:
    out = []
    for i in range(people):
        for fund, cat in ((Fund.CAF, "impaye_loyer"), (Fund.URSSAF, "impaye_cotisations")):
            m = funds.signal(f"{prefix}{i}", fund, cat)
            v = m["pseudonym"]["value"]
            # As the producers write it (services/producer/sdk.py, the Node one too).
            out.append((signal_topic(fund), v.encode(), canonical(m), partition_for(v, CONTRACT_PARTITIONS)))
    return out


async def raw_rate(bootstrap: str, total: int) -> float:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    await c.start()
    tps = [TopicPartition(signal_topic(f), p) for f in Fund for p in range(CONTRACT_PARTITIONS)]
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    n, t0 = 0, time.perf_counter()
    while n < total:
        for recs in (await c.getmany(timeout_ms=500, max_records=10000)).values():
            n += len(recs)
    dt_ = time.perf_counter() - t0
    await c.stop()
    return n / dt_


@dataclass
class PeerRun:
    """What a peer (the plain agent, the Quix Streams peer) reported: its rate from its first
    to its last processed record (its own clock), its records per CPU-second of its process
    over the same span, the counts of its ``done`` line, and the seconds from its start to
    its first record and from its ``done`` to its exit."""

    rate: float
    per_cpu: float
    counts: list[int]
    up: float
    down: float


async def peer_run(argv: list[str], prefix: str, log: Path, *, timeout_s: float = 120.0,
                   stops_itself: bool = False) -> PeerRun:
    """Run a peer process (``argv``) whose stdout says ``<prefix> first <t>`` and ``<prefix>
    done <n> <counts...> <t_first> <t_last>``; terminate it after ``done``, or, if it
    ``stops_itself`` (its last checkpoint), wait up to 60 s for its exit first."""
    t_start = time.monotonic()
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err,
                                                    start_new_session=True)
    assert proc.stdout is not None
    cpu0 = float("nan")
    t_seen = t_start
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                line = b""
            if not line:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{argv[2]} gave no 'done' (exit {proc.returncode}); {log}:\n{tail}")
            words = line.decode().split()
            if words[:2] == [prefix, "first"]:
                cpu0 = cpu_seconds(proc.pid)
                t_seen = time.monotonic()
            elif words[:2] == [prefix, "done"]:
                cpu1 = cpu_seconds(proc.pid)
                counts = [int(w) for w in words[2:-2]]
                t_first, t_last = float(words[-2]), float(words[-1])
                t_done = time.monotonic()
                break
        if stops_itself:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    n = counts[0]
    rate = (n - 1) / (t_last - t_first) if t_last > t_first else float("nan")
    per_cpu = (n - 1) / (cpu1 - cpu0) if cpu1 > cpu0 else float("nan")
    return PeerRun(rate, per_cpu, counts, t_seen - t_start, time.monotonic() - t_done)


async def plain_agent_rate(bootstrap: str, registry: Path, var: Path, count: int,
                           session_timeout_ms: int) -> PeerRun:
    """:mod:`bench.plain_agent` (its own consumer group) until it has processed ``count``
    records; its counts: processed, accepted, refused."""
    return await peer_run(
        [sys.executable, "-m", "bench.plain_agent", "--bootstrap", bootstrap, "--registry", str(registry),
         "--app-id", "bench-plain-agent", "--count", str(count), "--datadir", str(var / "plain-agent"),
         "--session-timeout-ms", str(session_timeout_ms)], "PLAIN", var / "plain-agent.log")


def quix_python() -> str | None:
    """The interpreter that has Quix Streams: ``BENCH_QUIX_PYTHON``, else the bench venv that
    ``make bench`` installs (``.venv-bench``), else this one if it has it; None: none has."""
    if os.environ.get("BENCH_QUIX_PYTHON"):
        return os.environ["BENCH_QUIX_PYTHON"]
    venv = REPO / ".venv-bench" / "bin" / "python"
    if venv.exists():
        return str(venv)
    import importlib.util

    return sys.executable if importlib.util.find_spec("quixstreams") else None


async def quix_peer_rate(python: str, bootstrap: str, registry: Path, var: Path, count: int,
                         session_timeout_ms: int, guarantee: str, changelog: bool) -> PeerRun:
    """:mod:`bench.quix_peer` (its own consumer group) over ``count`` records, then its own
    stop; its counts: processed, accepted, refused, situations produced."""
    argv = [python, "-m", "bench.quix_peer", "--bootstrap", bootstrap, "--registry", str(registry),
            "--output", QUIX_OUTPUT, "--count", str(count), "--guarantee", guarantee,
            "--group", f"bench-quix-{guarantee}", "--state-dir", str(var / "quix-peer" / guarantee),
            "--session-timeout-ms", str(session_timeout_ms)]
    if not changelog:
        argv.append("--no-changelog")
    return await peer_run(argv, "QUIX", var / "quix-peer.log", timeout_s=300, stops_itself=True)


def aborted_visible(bootstrap: str, topic: str = "bench-transactions-probe") -> bool:
    """Whether a ``read_committed`` consumer of this broker receives the records of an
    aborted transaction (confluent-kafka, i.e. librdkafka, as Quix Streams uses it):
    one committed, one aborted, one committed transaction, then a fetch at read_committed."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as CTopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures fail once it is collected
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-producer"})
    producer.init_transactions(30)
    for value, commit in ((b"committed-1", True), (b"aborted", False), (b"committed-2", True)):
        producer.begin_transaction()
        producer.produce(topic, value)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-consumer",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([CTopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + 15
    try:
        while b"committed-2" not in got and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got.append(message.value())
    finally:
        consumer.close()
    if b"committed-2" not in got:
        raise RuntimeError(f"the transactions probe read {got} at read_committed, not the last committed record")
    return b"aborted" in got


async def transactions_verdict(bootstrap: str) -> tuple[str, str]:
    """Quix Streams' processing guarantee for this broker, and why: exactly-once when a
    read_committed consumer does not see aborted transactions, else at-least-once."""
    try:
        leaks = await asyncio.to_thread(aborted_visible, bootstrap)
    except Exception as exc:  # any failure of the transaction APIs: say which
        return "at-least-once", f"exactly-once not possible here, the broker's transactions failed: {exc!r}"
    if leaks:
        return "at-least-once", ("exactly-once not used: the broker accepts transactions but a read_committed "
                                 "fetch returns the records of an aborted one (probed), so Quix Streams' "
                                 "exactly-once would not hold; at-least-once, its default")
    return "exactly-once", "the broker hides aborted transactions from read_committed consumers (probed)"


async def count_keys(bootstrap: str, topic: str, wanted: int, quiet_s: float = 5.0) -> int:
    """Distinct keys on ``topic`` (every partition, from the start, committed records only):
    read until ``wanted`` are seen or nothing new came for ``quiet_s`` seconds."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100,
                         auto_offset_reset="earliest", isolation_level="read_committed")
    await c.start()
    try:
        await c.topics()  # the cluster's metadata, so that the topic's partitions are known
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return 0
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        keys: set[bytes] = set()
        last_new = time.monotonic()
        while len(keys) < wanted and time.monotonic() - last_new < quiet_s:
            for recs in (await c.getmany(timeout_ms=200, max_records=10000)).values():
                for r in recs:
                    if r.key is not None and r.value is not None:
                        keys.add(r.key)
                if recs:
                    last_new = time.monotonic()
        return len(keys)
    finally:
        await c.stop()


async def outputs(bootstrap: str) -> AIOKafkaConsumer:
    # 100 ms, not less: every fetch costs the embedded broker ≈ 6 ms of CPU, taken from the worker
    # (a fetch answers as soon as records arrive; the wait only bounds an idle one).
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    await c.start()
    tps = [TopicPartition(receipt_topic(f), p) for f in Fund for p in range(4)]
    tps += [TopicPartition(SITUATIONS_TOPIC, p) for p in range(4)]
    c.assign(tps)
    await c.seek_to_end(*tps)
    for tp in tps:
        await c.position(tp)
    return c


@dataclass
class Bench:
    settings: Settings
    funds: Funds
    items: list[tuple[str, bytes, bytes, int]]
    broker: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def published(prefix: str, signals: int) -> AsyncIterator[Bench]:
    """A fresh embedded broker with every topic and a key registry, and ``signals`` signed
    signals (pairs of funds per person) published on it; stopped on exit."""
    var = Path(tempfile.mkdtemp(prefix=f"help-{prefix}-"))
    settings = load_settings(var_dir=var, broker_port=free_port(), key_dir=var / "keys",
                             session_timeout_ms=6000)
    _, proc = EmbeddedBroker(settings).start(detach=False)
    try:
        bootstrap = f"{settings.broker_host}:{settings.broker_port}"
        await apply_topics(settings, bootstrap, load_topic_specs(settings.schemas_dir / "asyncapi.yaml"))
        settings = load_settings(var_dir=var, key_dir=var / "keys", bootstrap_servers=bootstrap,
                                 session_timeout_ms=6000, database_url=f"sqlite:///{var / 'casebook.db'}")
        funds = Funds()
        funds.write_registry(settings.key_dir)
        items = items_for(funds, prefix, signals // 2)
        for i in range(0, len(items), 5000):
            await publish(bootstrap, items[i:i + 5000])
        yield Bench(settings, funds, items, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def main() -> None:
    async with published("b", N) as bench:
        await measure(bench)


async def measure(bench: Bench) -> None:
    settings, funds, items, proc = bench.settings, bench.funds, bench.items, bench.broker
    bootstrap, var = settings.bootstrap_servers or "", settings.var_dir
    worker = None
    try:
        raw = await raw_rate(bootstrap, len(items))
        registry = settings.key_dir / "registry.json"
        plain = plain_cpu = float("nan")
        plain_n = min(PLAIN_N, len(items))
        if plain_n > 1:
            pload0 = os.getloadavg()
            run = await plain_agent_rate(bootstrap, registry, var, plain_n, settings.session_timeout_ms)
            plain, plain_cpu = run.rate, run.per_cpu
            pload1 = os.getloadavg()
            if run.counts[1] != plain_n:
                print(f"WARNING: the plain agent refused {run.counts[2]} of {plain_n} signals", flush=True)
            print(f"plain agent: {plain_n} signals; {run.up:.1f} s from its start to its first record, "
                  f"{run.down:.1f} s to stop; load average {pload0[0]:.2f} -> {pload1[0]:.2f}", flush=True)
        quix = quix_cpu = float("nan")
        quix_situations = -1
        python = quix_python() if QUIX else None
        if QUIX and python is None:
            print("Quix Streams peer: skipped, Quix Streams is not installed (`make bench` installs it in "
                  ".venv-bench; or set BENCH_QUIX_PYTHON)", flush=True)
        if python is not None:
            guarantee, why = await transactions_verdict(bootstrap)
            print(f"Quix Streams peer: processing_guarantee={guarantee}: {why}", flush=True)
            qload0 = os.getloadavg()
            try:
                run = await quix_peer_rate(python, bootstrap, registry, var, len(items),
                                           settings.session_timeout_ms, guarantee, changelog=True)
            except RuntimeError as exc:  # the peer's failure is reported; ours is still measured
                print(f"WARNING: the Quix Streams peer failed, its figures are not reported: {exc}", flush=True)
            else:
                quix, quix_cpu = run.rate, run.per_cpu
                qload1 = os.getloadavg()
                quix_situations = await count_keys(bootstrap, QUIX_OUTPUT, run.counts[3])
                if run.counts[1] != len(items):
                    print(f"WARNING: the Quix Streams peer refused {run.counts[2]} of {len(items)} signals",
                          flush=True)
                print(f"Quix Streams peer: {len(items)} signals; {run.up:.1f} s from its start to its first "
                      f"record, {run.down:.1f} s to its exit; {run.counts[3]} situations said, {quix_situations} "
                      f"on its topic; load average {qload0[0]:.2f} -> {qload1[0]:.2f}", flush=True)
        out = await outputs(bootstrap)
        worker = start_worker(settings, "bench-correlator", var / "worker.log",
                              *os.environ.get("BENCH_WORKER_ARGS", "").split())
        seen, first, last, first_n = 0, None, 0.0, 0
        ours: set[bytes] = set()  # situation ids of this run
        cpu0 = cpu1 = bcpu0 = bcpu1 = hcpu0 = hcpu1 = float("nan")
        helpers: list[int] = []
        load0 = os.getloadavg()
        while seen < len(items):
            for tp, recs in (await out.getmany(timeout_ms=500, max_records=10000)).items():
                if tp.topic.startswith("help.receipts"):
                    now = time.perf_counter()
                    if first is None:
                        first, cpu0, bcpu0 = now, cpu_seconds(worker.pid), cpu_seconds(proc.pid)
                        helpers = children(worker.pid)
                        hcpu0 = helpers_cpu(helpers)
                        first_n = len(recs)
                    last = now
                    seen += len(recs)
                elif tp.topic == SITUATIONS_TOPIC:
                    ours.update(r.key for r in recs if r.key is not None and r.value is not None)
        cpu1, bcpu1, hcpu1 = cpu_seconds(worker.pid), cpu_seconds(proc.pid), helpers_cpu(helpers)
        load1 = os.getloadavg()
        # As the peers count theirs: the records after the first (here, the first fetch's).
        full = (seen - first_n) / (last - first) if first and last > first else float("nan")
        per_cpu = (seen - first_n) / (cpu1 - cpu0) if cpu1 > cpu0 else float("nan")
        all_cpu = (cpu1 - cpu0) + (hcpu1 - hcpu0)
        per_cpu_all = (seen - first_n) / all_cpu if all_cpu > 0 else float("nan")
        # The situations of the last batch follow its receipts closely.
        deadline = time.monotonic() + 10
        while len(ours) < quix_situations and time.monotonic() < deadline:
            for tp, recs in (await out.getmany(timeout_ms=200, max_records=10000)).items():
                if tp.topic == SITUATIONS_TOPIC:
                    ours.update(r.key for r in recs if r.key is not None and r.value is not None)
        # Latency at a steady 2,000 signals/s.
        lat_items = items_for(funds, "lat", RATE * LAT_SECONDS // 2)
        # The events are sealed (the pseudonym inside): matched by the situation id, the
        # record's key, which the pseudonym derives.
        situation_of = {k: situation_id_for(Pseudonym(key_id=EXCHANGE_KEY, value=k.decode()))
                        for _, k, _, _ in lat_items}
        sent: dict[str, float] = {}
        lat: list[float] = []

        async def pace() -> None:
            step = RATE // 20
            t0 = time.perf_counter()
            for k, i in enumerate(range(0, len(lat_items), step)):
                chunk = lat_items[i:i + step]
                now = time.perf_counter()
                for _, key, _, _ in chunk:
                    sent[situation_of[key]] = now
                await publish_fast(chunk)
                await asyncio.sleep(max(0.0, t0 + (k + 1) / 20 - time.perf_counter()))

        from aiokafka import AIOKafkaProducer
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks="all")
        await prod.start()

        async def publish_fast(chunk: list[tuple[str, bytes, bytes, int]]) -> None:
            for t, k, v, p in chunk:
                await prod.send(t, v, key=k, partition=p)

        pacer = asyncio.create_task(pace())
        wanted = len(lat_items) // 2
        deadline = time.monotonic() + LAT_SECONDS + 30
        while len(lat) < wanted and time.monotonic() < deadline:
            for tp, recs in (await out.getmany(timeout_ms=100, max_records=10000)).items():
                if tp.topic == SITUATIONS_TOPIC:
                    now = time.perf_counter()
                    for r in recs:
                        sid = r.key.decode() if r.key is not None and r.value is not None else ""
                        if sid in sent:
                            lat.append(now - sent[sid])
        await pacer
        await prod.stop()
        await out.stop()
        lat.sort()
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
        print(f"signals: {len(items)}")
        print(f"raw aiokafka consumption: {raw:,.0f} signals/s")
        print(f"correlator full work:     {full:,.0f} signals/s (every check on)")
        print(f"ratio correlator/raw:     {full / raw:.3f}")
        print(f"situations: correlator {len(ours)}"
              + (f", Quix Streams peer {quix_situations}" if quix_situations >= 0 else "")
              + f" (people with signals from two funds: {len(items) // 2})")
        # A wrong peer is no peer: its figures count only if it found the same situations.
        quix_ok = quix_situations == len(ours) and quix_situations > 0
        if quix_situations >= 0 and not quix_ok:
            print(f"WARNING: the Quix Streams peer found {quix_situations} situations where the correlator "
                  f"found {len(ours)}: its rate is not reported", flush=True)
        if quix_ok:
            print(f"Quix Streams peer: {quix:,.0f} signals/s (signature, schema, policy, RocksDB state, one rule; "
                  f"{quix_cpu:,.0f} per CPU-second of its process)")
            print(f"correlator / Quix Streams peer: {full / quix:.2f} (goal: above 1); per CPU-second, "
                  f"worker and check helpers against its process: {per_cpu_all / quix_cpu:.2f}")
        if plain_n > 1:
            print(f"plain per-message Faust agent: {plain:,.0f} signals/s (signature, validation, table write; "
                  f"{plain_cpu:,.0f} per CPU-second of its process)")
            print(f"correlator / plain agent: {full / plain:.2f} (goal: 3 or more); per CPU-second, "
                  f"worker and check helpers against its process: {per_cpu_all / plain_cpu:.2f}")
        print(f"correlator per CPU-second: {per_cpu:,.0f} signals of the worker process (CPU {cpu1 - cpu0:.1f} s), "
              f"{per_cpu_all:,.0f} with its {len(helpers)} check helper(s) (+{hcpu1 - hcpu0:.1f} s); "
              f"load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs")
        print(f"embedded broker CPU meanwhile: {bcpu1 - bcpu0:.1f} s "
              f"({(bcpu1 - bcpu0) / seen * 1e6:.0f} µs per signal)")
        print(f"latency publish->situation at {RATE}/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
              f"({len(lat)} situations)")
        from bench import emit

        # The plain agent's figures only when it ran (the report says "non mesuré" otherwise).
        plain_figures = {"plain_rate": float(plain), "ratio_plain": float(full / plain),
                         "plain_signals_per_cpu_second": float(plain_cpu),
                         "ratio_plain_per_cpu": float(per_cpu_all / plain_cpu)} if plain_n > 1 else {}
        quix_figures = {"quix_rate": float(quix), "ratio_quix": float(full / quix),
                        "quix_signals_per_cpu_second": float(quix_cpu),
                        "ratio_quix_per_cpu": float(per_cpu_all / quix_cpu),
                        "situations": float(len(ours))} if quix_ok else {}
        emit("correlator", {"raw_rate": float(raw), "full_rate": float(full), "ratio": float(full / raw),
                            **plain_figures, **quix_figures,
                            "latency_p50_ms": float(p50), "latency_p99_ms": float(p99),
                            "load_average": float(max(load0[0], load1[0])),
                            "signals_per_cpu_second": float(per_cpu),
                            "signals_per_cpu_second_with_helpers": float(per_cpu_all),
                            "broker_cpu_us_per_signal": float((bcpu1 - bcpu0) / seen * 1e6)})
    finally:
        if worker is not None:
            stop(worker)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
