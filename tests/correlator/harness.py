"""Helpers for the correlator's integration tests: worker subprocesses, a publisher, a collector,
and scenarios (kill -9, rebalance) checked against an independent ground truth."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.core.registry import ExchangeKeyEntry
from services.core.types import Fund
from services.platform.datakeys import KeyRing, KeyStore
from services.platform.db import make_engine
from services.platform.partitioning import partition_for
from services.platform.sealed_situations import situation_docs
from services.platform.settings import Settings
from services.platform.topics import DEADLETTER_TOPIC, SITUATIONS_TOPIC, receipt_topic, signal_topic
from tests.support.signals import EXCHANGE_KEY, Funds, wire

#: The newer exchange key of a rotation scenario (``run_scenario(rotation=True)``).
ROTATED_KEY = "xk-20260601-bbbb"

REPO = Path(__file__).resolve().parents[2]
OUTPUT_TOPICS = [SITUATIONS_TOPIC, DEADLETTER_TOPIC, *(receipt_topic(f) for f in Fund)]


@functools.cache
def _ring(database_url: str, key_dir: Path) -> KeyRing:
    """The worker's data keys, read as the worker reads them (one per database)."""
    return KeyRing(KeyStore(make_engine(database_url)), (key_dir / "markers" / "marker.key").read_bytes())


def deadletter_payload(settings: Settings, letter: dict[str, Any]) -> bytes:
    """A dead letter's payload as the worker received it: opened with the person's data key
    when the worker sealed it (``;raw_sealed``: a signal refused after its checks)."""
    raw = base64.b64decode(letter["raw"])
    if not str(letter["detail"]).endswith(";raw_sealed"):
        return raw
    opened = _ring(settings.database_url, settings.key_dir).open(None, DEADLETTER_TOPIC, raw)
    assert opened is not None, f"a sealed dead letter whose key is gone: {letter['deadletter_id']}"
    return opened


def start_worker(settings: Settings, app_id: str, log: Path, *extra: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "HELP_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
           "HELP_KEY_DIR": str(settings.key_dir), "HELP_VAR_DIR": str(settings.var_dir),
           "HELP_DATABASE_URL": settings.database_url,
           "HELP_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms), **(env or {})}
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.app.cli", "correlator", "--app-id", app_id, *extra],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc


def stop(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def publish(bootstrap: str, items: Iterable[tuple[str, bytes | None, bytes, int | None]],
                  ) -> list[tuple[str, int, int]]:
    """Publish (topic, key, value, partition or None); returns each record's position."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k, partition=p) for t, k, v, p in items]
        metas = await asyncio.gather(*futures)
        return [(m.topic, m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


def open_situation_values(database_url: str | None, values: list[bytes]) -> list[dict[str, Any] | None]:
    """Situation records as dicts, a sealed one opened with its person's data key in the
    worker's database (None: its key is gone, an erased person's)."""
    if not any(b'"sealed"' in v for v in values):
        return situation_docs("", values)
    assert database_url is not None, "sealed situation events: give the collector the worker's database"
    try:
        return situation_docs(database_url, values)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # No key table yet: these are another test's events (a worker of an earlier test on
        # the shared broker, still publishing), sealed under keys this database never held.
        return [json.loads(v) if b'"sealed"' not in v else None for v in values]


@dataclass
class Collector:
    """Reads the correlator's output topics from their current end (no consumer group);
    ``database_url``: the worker's, whose data keys open the sealed situation events."""

    bootstrap: str
    database_url: str | None = None
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by receipt_id
    receipt_count: int = 0
    #: (topic, partition, offset) of every source record that got a receipt.
    receipted: set[tuple[str, int, int]] = field(default_factory=set)
    deadletters: dict[str, dict[str, Any]] = field(default_factory=dict)
    situations: list[dict[str, Any]] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    #: Situation events read after their key was destroyed (an erased person's).
    unreadable: int = 0
    consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                         fetch_max_wait_ms=50)
        await self.consumer.start()
        tps = []
        for topic in OUTPUT_TOPICS:
            parts = self.consumer.partitions_for_topic(topic)
            if parts is None:
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in parts]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end positions now, before anything is published
            await self.consumer.position(tp)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def poll(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
        for tp, records in batches.items():
            if tp.topic == SITUATIONS_TOPIC:
                self.tombstones += [r.key.decode() for r in records if r.value is None]
                events = open_situation_values(self.database_url, [r.value for r in records if r.value is not None])
                self.situations += [e for e in events if e is not None]
                self.unreadable += sum(e is None for e in events)
                continue
            for r in records:
                if tp.topic == DEADLETTER_TOPIC:
                    d = json.loads(r.value)
                    self.deadletters[d["deadletter_id"]] = d
                else:
                    d = json.loads(r.value)
                    self.receipt_count += 1
                    self.receipts[d["receipt_id"]] = d
                    s = d["source"]
                    self.receipted.add((s["topic"], s["partition"], s["offset"]))

    async def until(self, cond: Callable[[Collector], bool], timeout: float = 60.0,
                    alive: Callable[[], bool] = lambda: True) -> None:
        """Poll until ``cond``; fail after ``timeout`` or as soon as ``alive()`` turns false."""
        deadline = time.monotonic() + timeout
        while not cond(self):
            if not alive():
                raise AssertionError("a worker died while waiting")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {len(self.receipts)} receipts, "
                                     f"{len(self.deadletters)} dead letters, "
                                     f"{len(self.situations)} situation events")
            await self.poll()

    def receipt_for(self, topic: str, partition: int, offset: int) -> dict[str, Any] | None:
        for r in self.receipts.values():
            s = r["source"]
            if (s["topic"], s["partition"], s["offset"]) == (topic, partition, offset):
                return r
        return None

    def latest_situations(self) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for ev in self.situations:
            cur = latest.get(ev["situation_id"])
            if cur is None or ev["version"] > cur["version"]:
                latest[ev["situation_id"]] = ev
        for sid in self.tombstones:
            latest.pop(sid, None)
        return latest


# ----------------------------------------------------------------------------- scenarios
# A run of signals against one or more workers that a script kills, stops and restarts,
# checked at the end against a ground truth computed here, independently of the core.

ANCHORS = {"difficulte_economique_declaree", "impaye_cotisations", "demande_action_sociale_urssaf",
           "cessation_activite"}
CATEGORIES = {
    Fund.URSSAF: ["difficulte_economique_declaree", "impaye_cotisations", "taxations_office_repetees"],
    Fund.CAF: ["impaye_loyer", "separation", "parent_isole"],
    Fund.CPAM: ["non_recours_c2s_puma", "demande_aide_individuelle"],
    Fund.CARSAT: ["passage_retraite_rupture_ressources", "exoneration_csg"],
}


def plan(seed: int, people: int, prefix: str) -> list[tuple[str, Fund, str, int]]:
    """(person, fund, category, n): 1 to 4 signals a person, from random funds, shuffled."""
    rnd = random.Random(seed)
    out = []
    for i in range(people):
        for n in range(rnd.choice([1, 1, 2, 2, 3, 4])):
            fund = rnd.choice(list(CATEGORIES))
            out.append((f"{prefix}{i}", fund, rnd.choice(CATEGORIES[fund]), n))
    rnd.shuffle(out)
    return out


def ground_truth(signals: list[tuple[str, Fund, str, int]], funds: Funds) -> dict[str, dict[str, Any]]:
    """Expected final situation per pseudonym, from the rules as a reader of rules.yaml states them."""
    by_person: dict[str, set[tuple[Fund, str]]] = defaultdict(set)
    for person, fund, category, _ in signals:
        by_person[person].add((fund, category))
    truth = {}
    for person, cats in by_person.items():
        involved = {f for f, _ in cats}
        if len(involved) < 2:
            continue
        rules = {"situation_partagee"}
        if any(f is Fund.URSSAF and c in ANCHORS for f, c in cats):
            rules.add("help_travailleur_independant")
        truth[funds.pseudonym(person)] = {"funds": {f.value for f in involved},
                                          "categories": {(f.value, c) for f, c in cats},
                                          "rules": rules}
    return truth


@dataclass
class Workers:
    """Named correlator worker processes of one consumer group, each with its own log."""

    settings: Settings
    app_id: str
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    def start(self, name: str) -> None:
        self.procs[name] = start_worker(self.settings, self.app_id, self.log_dir / f"worker-{name}.log")
        self.events.append(f"start {name}")

    def kill(self, name: str) -> None:
        stop(self.procs.pop(name), kill=True)  # kill -9: no commit, no flush
        self.events.append(f"kill -9 {name}")

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        stop(proc)  # SIGTERM: Faust leaves the group, the others rebalance
        self.events.append(f"stop {name} (exit {proc.returncode})")

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def logs(self, limit: int = 3000) -> str:
        text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-limit:]}"
                         for p in sorted(self.log_dir.glob("worker-*.log")))
        return text.replace("\x1b[?25l", "").replace("\x1b[?25h", "").replace("\x08", "")


async def poll_for(collector: Collector, seconds: float) -> None:
    """Keep reading outputs for ``seconds`` (the collector must not fall behind)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await collector.poll()


Script = Callable[[Workers, Collector, random.Random], Awaitable[None]]


@dataclass
class ScenarioResult:
    signals: int
    replays: int
    seconds: float
    events: list[str]


async def run_scenario(settings: Settings, tmp_path: Path, script: Script, *, people: int, rate: float,
                       seed: int, app_id: str, wait_s: float = 150.0, rotation: bool = False) -> ScenarioResult:
    """Publish ``people``'s signals at ``rate``/s (then ~20 genuine replays) while ``script``
    starts, kills and stops workers; then check, against the ground truth: every record got
    a receipt, every original accepted and every replay refused as ``doublon``; the latest
    version of each situation is exactly the expected one, none missing, none extra; one
    situation per person; an event id always means the same bytes; no signal accepted twice.

    ``rotation``: the second half of the signals is published under a newer exchange key with
    the link to the previous pseudonym (contract §4.3): each person's state must move to its
    new pseudonym, across partitions, through the kills, with the same outcome."""
    started = time.monotonic()
    funds = Funds(more_exchange_keys=(ExchangeKeyEntry(key_id=ROTATED_KEY, created_at="2026-06-01T00:00:00Z"),)
                  if rotation else ())
    funds.write_registry(settings.key_dir)
    signals = plan(seed, people, f"{app_id}-")
    moved: set[str] = set()

    def build(i: int, p: str, f: Fund, c: str, n: int) -> dict[str, Any]:
        if not rotation or i < len(signals) // 2:
            return funds.signal(p, f, c, n=n)
        moved.add(p)
        return funds.signal(p, f, c, n=n, pseudonym={"key_id": ROTATED_KEY, "value": funds.pseudonym("new/" + p)},
                            pseudonym_previous={"key_id": EXCHANGE_KEY, "value": funds.pseudonym(p)})

    messages = [build(i, *s) for i, s in enumerate(signals)]
    replays = [messages[i] for i in range(0, len(messages), max(1, len(messages) // 20))]

    def item(m: dict[str, Any]) -> tuple[str, bytes, bytes, int]:
        value = m["pseudonym"]["value"]
        return signal_topic(Fund(m["fund"])), value.encode(), wire(m), partition_for(value, 8)

    items = [item(m) for m in messages]
    bootstrap = settings.bootstrap_servers or ""
    positions: list[tuple[str, int, int]] = []
    replay_positions: list[tuple[str, int, int]] = []

    async def producer() -> None:
        chunk = max(1, int(rate / 10))
        for i in range(0, len(items), chunk):
            positions.extend(await publish(bootstrap, items[i:i + chunk]))
            await asyncio.sleep(0.1)
        replay_positions.extend(await publish(bootstrap, [item(m) for m in replays]))

    collector = Collector(bootstrap, settings.database_url)
    await collector.start()
    workers = Workers(settings, app_id, tmp_path)
    publishing = asyncio.create_task(producer())
    try:
        await script(workers, collector, random.Random(seed))
        await publishing
        wanted = set(positions) | set(replay_positions)
        try:
            await collector.until(lambda c: wanted <= c.receipted, timeout=wait_s, alive=workers.alive)
        except AssertionError as exc:
            missing = sorted(wanted - collector.receipted)
            raise AssertionError(f"{exc}: {len(missing)} receipts missing, e.g. {missing[:10]}; "
                                 f"{workers.events}\n{workers.logs()}") from None
        assert workers.alive(), workers.logs()
        await poll_for(collector, 1.0)  # anything sent late would show up as a difference below
    finally:
        workers.stop_all()
        publishing.cancel()
        await collector.stop()

    wanted_replays = set(replay_positions)
    receipts = {(r["source"]["topic"], r["source"]["partition"], r["source"]["offset"]): r
                for r in collector.receipts.values()}
    receipts = {pos: r for pos, r in receipts.items() if pos in wanted}
    # Every original signal accepted (a redelivery after a kill is not a duplicate)...
    bad = [r for pos, r in receipts.items() if pos not in wanted_replays and r["status"] != "accepte"]
    assert bad == [], bad[:3]
    # ...every genuine replay refused as a duplicate, and no signal accepted at two positions.
    assert {receipts[p]["reason"] for p in wanted_replays} == {"doublon"}
    accepted_at: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
    for pos, r in receipts.items():
        if r["status"] == "accepte":
            accepted_at[r["signal_id"]].add(pos)
    assert len(accepted_at) == len(messages)
    assert all(len(where) == 1 for where in accepted_at.values())
    # Situations: the latest version of each equals the ground truth; none missing, none extra.
    truth = ground_truth(signals, funds)
    person_of = {funds.pseudonym(p): p for p, *_ in signals}
    if rotation:  # a moved person's situation names its new pseudonym
        person_of.update({funds.pseudonym("new/" + p): p for p in moved})
        truth = {(funds.pseudonym("new/" + person_of[k]) if person_of[k] in moved else k): v for k, v in truth.items()}
    mine = set(person_of)
    ours = {v["pseudonym"]["value"]: v for v in collector.latest_situations().values()
            if v["pseudonym"]["value"] in mine}
    assert set(ours) == set(truth), (len(set(truth) - set(ours)), len(set(ours) - set(truth)))
    wrong = []
    for pseudo, want in truth.items():
        got = ours[pseudo]
        if (set(got["funds"]) != want["funds"]
                or {(c["fund"], c["code"]) for c in got["categories"]} != want["categories"]
                or set(got["rules"]) != want["rules"] or got["kind"] not in ("ouverte", "mise_a_jour")):
            wrong.append((pseudo, want, got))
    assert wrong == [], f"{len(wrong)} situations differ from the ground truth, e.g. {wrong[:1]}"
    # None doubled: one situation per person, and an event id always means the same bytes.
    by_id: dict[str, str] = {}
    for ev in collector.situations:
        text = json.dumps(ev, sort_keys=True)
        assert by_id.setdefault(ev["event_id"], text) == text, ev["event_id"]
    per_person = defaultdict(set)
    for ev in collector.situations:
        per_person[person_of.get(ev["pseudonym"]["value"], ev["pseudonym"]["value"])].add(ev["situation_id"])
    assert all(len(ids) == 1 for ids in per_person.values())
    return ScenarioResult(len(messages), len(replays), time.monotonic() - started, workers.events)


def kill_9_script(kills: int, low: float = 4.0, high: float = 9.0) -> Script:
    """One worker, killed with SIGKILL at random moments and restarted at once, ``kills`` times."""
    async def script(workers: Workers, collector: Collector, rnd: random.Random) -> None:
        workers.start("a")
        for _ in range(kills):
            await poll_for(collector, rnd.uniform(low, high))
            workers.kill("a")
            workers.start("a")
    return script


def check_helpers(pid: int) -> list[int]:
    """The worker's check helper processes (its children, from Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def _replaced(pid: int, victim: int, count: int) -> bool:
    now = check_helpers(pid)
    return victim not in now and len(now) == count


def kill_helper_script(kills: int, low: float = 4.0, high: float = 8.0) -> Script:
    """One worker; a check helper of it is killed with SIGKILL at random moments. Killed
    during a batch, the worker must stop by itself (exit 75, nothing committed past what it
    finished) and is restarted; killed between batches, it must be replaced (a new helper,
    the worker going on)."""
    async def script(workers: Workers, collector: Collector, rnd: random.Random) -> None:
        workers.start("a")
        for _ in range(kills):
            await poll_for(collector, rnd.uniform(low, high))
            proc = workers.procs["a"]
            # On a loaded machine a (re)started worker may not have started its helpers yet
            # at the chosen moment: wait for them (the kill is meant for a running worker).
            helpers = check_helpers(proc.pid)
            deadline = time.monotonic() + 60
            while not helpers and proc.poll() is None and time.monotonic() < deadline:
                await collector.poll()
                helpers = check_helpers(proc.pid)
            assert helpers, "the worker has no check helper"
            victim = rnd.choice(helpers)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30

            while (proc.poll() is None and not _replaced(proc.pid, victim, len(helpers))
                   and time.monotonic() < deadline):
                await collector.poll()
            if proc.poll() is None:
                assert _replaced(proc.pid, victim, len(helpers)), (
                    "the dead helper was neither replaced nor did the worker stop", workers.logs())
                workers.events.append("kill -9 of a check helper: replaced between batches")
                continue
            assert proc.returncode == 75, (proc.returncode, workers.logs())
            workers.procs.pop("a")
            workers.events.append("kill -9 of a check helper: worker stopped itself (75)")
            workers.start("a")
    return script


def rebalance_script(stop_after: float, restart_after: float) -> Script:
    """Two workers share the partitions; one is stopped mid-run (its partitions move to the
    other), then started again (they are shared again)."""
    async def script(workers: Workers, collector: Collector, rnd: random.Random) -> None:
        workers.start("a")
        workers.start("b")
        await poll_for(collector, stop_after)
        workers.stop("b")
        await poll_for(collector, restart_after)
        workers.start("b")
    return script
