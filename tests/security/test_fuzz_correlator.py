"""Fuzzing the correlator (issue 8, item 4): 10,000+ malformed and adversarial messages on the
real broker, at a real worker process. The worker never stops; every message gets a dead letter
with a reason code, and a receipt to the fund that owns the topic it came on; none is accepted.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.core.reasons import Reason
from services.core.types import Fund
from services.correlator.checks import MAX_MESSAGE_BYTES
from services.platform.settings import Settings
from services.platform.topics import DEADLETTER_TOPIC, fund_of_signal_topic, receipt_topic, signal_topic
from services.producer.sdk import SignalInput
from tests.correlator.harness import deadletter_payload
from tests.reliability.pipeline import FUNDS, init_keys, simulate_month
from tests.security.fuzz import Case, Signer, hypothesis_messages, mutations
from tests.suite_summary import count
from tests.support.processes import broker, settings_for, start_service, terminate

pytestmark = pytest.mark.integration

HYPOTHESIS_CASES = 2_500
MUTATION_CASES = 7_700


def records_of(extracts: Path, fund: Fund, limit: int = 200) -> list[SignalInput]:
    out = []
    with (extracts / f"{fund.value}.csv").open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            out.append(SignalInput(row["nir"], row["categorie"], row["date_observation"], row["departement"],
                                   row["reference_dossier"], None, row.get("finalite") or None))
            if len(out) >= limit:
                break
    return out


def build_corpus(settings: Settings, extracts: Path, seed: int, n_hyp: int, n_mut: int) -> list[Case]:
    rng = random.Random(seed)
    signer = Signer(settings, {f: records_of(extracts, f) for f in FUNDS})
    cases = mutations(signer, n_mut, rng)
    topics = [signal_topic(f) for f in Fund]
    for kind, raw in hypothesis_messages(n_hyp):
        cases.append(Case(f"hypothesis_{kind}", rng.choice(topics), raw, rng.choice([None, raw[:43] or b"k"])))
    return cases


#: A message's members a dead letter may show (its envelope, the receipt's keys).
_SHOWN = {"schema_version", "fund", "emitter", "emitted_at", "signal_id"}


def _values(raw: bytes) -> set[str]:
    """The long strings a message holds (member values, names of members the sender chose,
    and the envelope's members excepted): what a dead letter must not echo."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return set()
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return set()
    found: set[str] = set()

    def walk(node: Any, top: bool) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if not (top and name in _SHOWN):
                    walk(name, False)
                    walk(value, False)
        elif isinstance(node, list):
            for value in node:
                walk(value, False)
        elif isinstance(node, str) and len(node) >= 12:
            found.add(node)

    try:
        walk(obj, True)
    except RecursionError:
        return set()
    return found


async def publish_cases(bootstrap: str, cases: list[Case]) -> list[tuple[str, int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_request_size=2 * 1024 * 1024, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(c.topic, c.value, key=c.key) for c in cases]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in metas]


Pos = tuple[str, int, int]


async def collect(bootstrap: str, positions: set[Pos], proc: Any,
                  timeout: float) -> tuple[dict[Pos, dict[str, Any]], dict[Pos, list[dict[str, Any]]]]:
    """Dead letters and receipts by source position, until every position has both."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    letters: dict[tuple[str, int, int], dict[str, Any]] = {}
    receipts: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    try:
        tps = []
        for topic in [DEADLETTER_TOPIC, *(receipt_topic(f) for f in Fund)]:
            await consumer._client.force_metadata_update()
            tps += [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            if positions <= receipts.keys():
                # every message answered: its dead letter went out before its receipt
                settle_until = settle_until or time.monotonic() + 2
                if positions <= letters.keys() or time.monotonic() > settle_until:
                    break
            if proc.poll() is not None:
                raise AssertionError(f"the correlator stopped (status {proc.returncode}) under fuzzing")
            if time.monotonic() > deadline:
                missing = sorted(positions - letters.keys())[:5]
                raise AssertionError(f"timed out (missing e.g. {missing}): "
                                     f"{len(positions & letters.keys())} dead letters, "
                                     f"{len(positions & receipts.keys())} receipts of {len(positions)}")
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    doc = json.loads(m.value)
                    s = doc["source"]
                    pos = (s["topic"], s["partition"], s["offset"])
                    if tp.topic == DEADLETTER_TOPIC:
                        letters[pos] = doc
                    else:
                        receipts.setdefault(pos, []).append(doc)
    finally:
        await consumer.stop()
    return letters, receipts


async def test_10000_malformed_and_adversarial_messages_are_all_dead_lettered(tmp_path: Path) -> None:
    n = await fuzz_the_correlator(tmp_path, n_hyp=HYPOTHESIS_CASES, n_mut=MUTATION_CASES, seed=8)
    assert n >= 10_000


async def fuzz_the_correlator(tmp_path: Path, *, n_hyp: int, n_mut: int, seed: int) -> int:
    """Publish the corpus, run a worker, check every answer; returns how many were fuzzed."""
    t0 = time.monotonic()
    with broker(tmp_path / "broker") as b:
        # The mutations work on the clear form's members: signals in clear, to a worker that
        # takes them (the sealed form's refusals: tests/correlator/test_sealed_signals.py).
        settings = settings_for(tmp_path / "var", b.listener, signal_sealing="accepted", signal_keys_url="")
        init_keys(settings)
        extracts = tmp_path / "extraits"
        simulate_month(settings, extracts, scale=0.2, seed=4)
        cases = build_corpus(settings, extracts, seed=seed, n_hyp=n_hyp, n_mut=n_mut)
        built = time.monotonic() - t0
        positions = await publish_cases(b.listener, cases)
        count("inputs_fuzzed", len(cases))
        proc = start_service(settings, tmp_path / "correlator.log", "correlator", "--app-id", "corr-fuzz")
        try:
            wait = 240 + len(cases) / 100
            letters, receipts = await collect(b.listener, set(positions), proc, timeout=wait)
            assert proc.poll() is None, "the worker must not stop for bad input"
        finally:
            terminate(proc)
    by_kind: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    accepted: list[str] = []  # defects: fuzzed messages the correlator accepted
    for case, pos in zip(cases, positions, strict=True):
        letter = letters.get(pos)
        if letter is None:
            accepted.append(f"{case.kind} (no dead letter): {receipts[pos]} {case.value[:600]!r}")
            continue
        reason = Reason(letter["reason"])
        kept = deadletter_payload(settings, letter)
        assert (letter["raw_size"], letter["raw_sha256"]) == (len(case.value), hashlib.sha256(case.value).hexdigest())
        if letter["detail"].endswith(";raw_sealed"):  # a verified signal's, under its person's key
            assert kept == case.value, pos
        else:  # refused before its checks: nothing of it kept...
            assert kept == b"" and letter["detail"].endswith(";raw_withheld"), pos
        # ...and nothing it holds echoed elsewhere (the envelope's members aside)
        echoed = [v for v in _values(case.value) if v in json.dumps({**letter, "envelope": None})]
        assert not echoed, (pos, echoed, letter)
        owner = fund_of_signal_topic(case.topic)
        got = receipts[pos]
        assert {r["fund"] for r in got} == {owner.value if owner else None}, pos
        if any(r["status"] != "rejete" or r["reason"] != reason.value for r in got):
            accepted.append(f"{case.kind}: {got}")
        by_kind[case.kind] += 1
        by_reason[reason.value] += 1
    print(f"fuzzed {len(cases)} messages ({n_hyp} from hypothesis, {n_mut} "
          f"mutations of valid signed signals; corpus built in {built:.0f} s, total {time.monotonic() - t0:.0f} s)")
    print("  by kind:   " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
    print("  by reason: " + ", ".join(f"{k} {n}" for k, n in by_reason.most_common()))
    print(f"  dead letters {len(letters)}, receipts {sum(len(v) for v in receipts.values())}, worker alive")
    assert not accepted, accepted[:5]
    return len(cases)
