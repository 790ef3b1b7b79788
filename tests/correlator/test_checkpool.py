"""The checks in helper processes give exactly the verdicts, and the engine exactly the
outputs, of the checks run inline; a helper that dies stops the batch instead of guessing;
one that dies between batches is noticed within a second and replaced."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.core.codec import canonical
from services.core.types import Fund
from services.correlator.checkpool import REPLACEMENTS_MAX, CheckPool, CheckPoolError, watch
from services.correlator.checks import Checker, from_plain, to_plain
from services.correlator.engine import Engine, Record
from services.platform.partitioning import partition_for
from services.platform.topics import CONSENTS_TOPIC, signal_topic
from tests.correlator.core_fixtures import context
from tests.security.fuzz import hypothesis_messages
from tests.support.signals import RETIRED_KEY, Funds, wire

AT = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def corpus(funds: Funds) -> list[tuple[bytes | None, str]]:
    """Valid signals and consents, and one of each way of failing a check, in a mixed order."""
    items: list[tuple[bytes | None, str]] = []
    for i in range(60):
        fund = (Fund.CAF, Fund.URSSAF, Fund.CPAM, Fund.CARSAT)[i % 4]
        cat = {Fund.CAF: "impaye_loyer", Fund.URSSAF: "impaye_cotisations", Fund.CPAM: "non_recours_c2s_puma",
               Fund.CARSAT: "veuvage_pension_reversion"}[fund]
        good = funds.signal(f"p{i}", fund, cat, n=i)
        items.append((wire(good), signal_topic(fund)))
        # As the producers write it: the checks' fast path (services.correlator.canonical_signal).
        items.append((canonical(funds.signal(f"q{i}", fund, cat, n=i)), signal_topic(fund)))
        variant = i % 10
        if variant == 0:
            items.append((wire({**good, "territory": "52"}), signal_topic(fund)))  # tampered
            items.append((canonical({**good, "territory": "52"}), signal_topic(fund)))
        elif variant == 1:
            items.append((wire(good), signal_topic(Fund.MSA)))  # another fund's topic
        elif variant == 2:
            items.append((wire(funds.signal(f"p{i}", fund, cat, signer=Fund.MSA)), signal_topic(fund)))
        elif variant == 3:
            items.append((wire(funds.signal(f"p{i}", fund, cat, key_id=RETIRED_KEY)), signal_topic(fund)))
        elif variant == 4:
            items.append((wire(funds.signal(f"p{i}", fund, cat, territory="2C")), signal_topic(fund)))
        elif variant == 5:
            items.append((wire(good)[:-7], signal_topic(fund)))
        elif variant == 6:
            items.append((b"x" * 20_000, signal_topic(fund)))
        elif variant == 7:
            items.append((None, signal_topic(fund)))
        elif variant == 8:
            items.append((wire(funds.consent(f"p{i}", "consentement_donne")), CONSENTS_TOPIC))
        else:
            raw = wire(good)
            items.append((raw.replace(b'"purpose"', b'"category":"x","purpose"', 1), signal_topic(fund)))
    for _, value in hypothesis_messages(150):
        items.append((value, signal_topic(Fund.CAF)))
    return items


@pytest.fixture(scope="module")
def funds() -> Funds:
    return Funds(now=AT)  # signals of the engine's day (its clock is AT)


@pytest.fixture
def pool(funds: Funds) -> Iterator[CheckPool]:
    p = CheckPool(funds.registry(), 2, partitions=8, chunk=7)  # odd chunks, two helpers
    yield p
    p.close()


def test_helpers_answer_as_the_inline_checker(funds: Funds, pool: CheckPool) -> None:
    items = corpus(funds)
    inline = Checker(funds.registry(), 8)
    expected = [inline.check(v, t) for v, t in items]
    reference = Checker(funds.registry(), 8, fast=False)
    assert [reference.check(v, t) for v, t in items] == expected
    for _ in range(2):  # a second batch on the same helpers
        verdict = pool.start(items)
        assert [verdict(i) for i in range(len(items))] == expected
    reasons = {v.reason for v in expected}
    assert None in reasons and len(reasons) >= 8, reasons  # the corpus exercises the checks
    assert any(v.signal is not None for v in expected)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 111, 112, 113, 1000])
def test_a_batch_is_cut_in_a_ramp_of_requests_then_whole_chunks(n: int) -> None:
    from services.correlator.checkpool import _chunks

    bounds = _chunks(n, 128)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))  # each record once, in order
    sizes, full = [b - a for a, b in bounds], [16, 32, 64, *[128] * n]
    assert sizes == [*full[:len(sizes) - 1], n - sum(full[:len(sizes) - 1])] if sizes else n == 0
    assert all(b > a for a, b in _chunks(n, 1))


def test_verdicts_survive_the_trip_between_processes(funds: Funds) -> None:
    inline = Checker(funds.registry(), 8)
    for value, topic in corpus(funds):
        verdict = inline.check(value, topic)
        assert from_plain(to_plain(verdict)) == verdict


def test_checked_signal_holds_the_validated_values(funds: Funds) -> None:
    msg = funds.signal("someone", Fund.CAF, "impaye_loyer")
    verdict = Checker(funds.registry(), 8).check(wire(msg), signal_topic(Fund.CAF))
    assert verdict.reason is None and verdict.signal is not None
    s = verdict.signal
    assert (s.signal_id, s.fund, s.category, s.purpose.value, s.observed_on.isoformat(), s.territory) == (
        msg["signal_id"], Fund.CAF, "impaye_loyer", msg["purpose"], msg["observed_on"], msg["territory"])
    assert s.pseudonym == (msg["pseudonym"]["key_id"], msg["pseudonym"]["value"])
    assert s.sealed_ref == (msg["sealed_ref"]["key_id"], msg["sealed_ref"]["value"])
    assert s.partition == partition_for(msg["pseudonym"]["value"], 8)


def test_engine_outputs_are_the_same_with_helpers_and_in_steps(funds: Funds, pool: CheckPool) -> None:
    items = corpus(funds)
    # Pairs of funds per person so that situations open; records on their person's partition.
    for i in range(40):
        for fund, cat in ((Fund.CAF, "impaye_loyer"), (Fund.URSSAF, "impaye_cotisations")):
            items.append((wire(funds.signal(f"pair{i}", fund, cat)), signal_topic(fund)))
    records = []
    for offset, (value, topic) in enumerate(items):
        partition = 0
        if value:
            with contextlib.suppress(ValueError, KeyError, TypeError, UnicodeDecodeError):
                partition = partition_for(json.loads(value)["pseudonym"]["value"], 8)
        records.append(Record(topic, partition, offset, 1_763_640_000_000, None, value))

    pauses = [0]

    def stepped(engine: Engine, chunk: list[Record], load: Any) -> Any:
        steps = engine.steps(chunk, load, every=7)
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value
            pauses[0] += 1

    def run(engine: Engine, *, steps: bool = False) -> tuple[list[Any], dict[bytes, bytes]]:
        table: dict[bytes, bytes] = {}
        outputs = []
        for start in range(0, len(records), 50):
            chunk = records[start:start + 50]
            batch = stepped(engine, chunk, table.get) if steps else engine.process(chunk, table.get)
            table.update({k: v for k, (_, v) in batch.writes.items()})
            outputs.append((batch.outputs, batch.accepted, batch.rejected))
        return outputs, table

    inline = run(Engine(context(), funds.registry(), clock=lambda: AT))
    pooled = run(Engine(context(), funds.registry(), clock=lambda: AT, checks=pool))
    assert inline == pooled
    # As the worker runs it: paused every few records, the same outputs and states.
    assert run(Engine(context(), funds.registry(), clock=lambda: AT, checks=pool), steps=True) == inline
    assert pauses[0] == sum(len(records[s:s + 50]) // 7 for s in range(0, len(records), 50))
    assert inline[1] and any(o.topic == "help.situations.v1" for batch in inline[0] for o in batch[0])


def test_a_dead_helper_stops_the_batch(funds: Funds) -> None:
    pool = CheckPool(funds.registry(), 1, partitions=8, chunk=32)  # several requests
    try:
        items = [(wire(funds.signal(f"d{i}", Fund.CAF, "impaye_loyer")), signal_topic(Fund.CAF))
                 for i in range(100)]
        verdict = pool.start(items)
        assert verdict(0).reason is None
        os.kill(pool.helpers[0].proc.pid, signal.SIGKILL)
        pool.helpers[0].proc.wait(timeout=10)
        with pytest.raises(CheckPoolError):
            for i in range(len(items)):
                verdict(i)
        with pytest.raises(CheckPoolError):  # and stays stopped: no batch goes unchecked
            pool.start(items)(0)
    finally:
        pool.close()


async def test_a_helper_killed_while_idle_is_noticed_within_a_second_and_replaced(funds: Funds,
                                                                                   pool: CheckPool) -> None:
    items = corpus(funds)
    expected = [Checker(funds.registry(), 8).check(v, t) for v, t in items]
    verdict = pool.start(items)
    assert [verdict(i) for i in range(len(items))] == expected  # the helpers have started
    noticed: asyncio.Queue[tuple[float, list[int]]] = asyncio.Queue()

    async def on_death(dead: list[int]) -> None:
        noticed.put_nowait((time.monotonic(), dead))
        assert pool.replace_dead() == len(dead)

    watching = asyncio.create_task(watch(pool, on_death))
    try:
        await asyncio.sleep(0.2)  # idle, watched
        victim = pool.helpers[1].proc
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        at, dead = await asyncio.wait_for(noticed.get(), timeout=5)
        assert dead == [1] and at - killed_at < 1.0, at - killed_at
        assert pool.replacements == 1 and pool.helpers[1].proc is not victim
        assert pool.dead() == []
        del victim
        gc.collect()  # (the dead helper's pipes, once collected, must not close the new one's)
        verdict = pool.start(items)  # the next batch, checked as before
        assert [verdict(i) for i in range(len(items))] == expected
        os.kill(pool.helpers[0].proc.pid, signal.SIGKILL)  # still watched after a replacement
        _, dead = await asyncio.wait_for(noticed.get(), timeout=5)
        assert dead == [0] and pool.replacements == 2
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


def test_a_helper_owing_verdicts_is_not_replaced_and_dying_helpers_stop_the_worker(funds: Funds) -> None:
    pool = CheckPool(funds.registry(), 1, partitions=8, chunk=32)
    try:
        items = [(wire(funds.signal(f"r{i}", Fund.CAF, "impaye_loyer")), signal_topic(Fund.CAF))
                 for i in range(100)]
        verdict = pool.start(items)
        assert verdict(0).reason is None
        os.kill(pool.helpers[0].proc.pid, signal.SIGKILL)
        pool.helpers[0].proc.wait(timeout=10)
        with pytest.raises(CheckPoolError, match="during a batch"):
            pool.replace_dead()  # its batch fails instead: the worker stops without commit
    finally:
        pool.close()
    pool = CheckPool(funds.registry(), 1, partitions=8)
    try:
        for _ in range(REPLACEMENTS_MAX):
            os.kill(pool.helpers[0].proc.pid, signal.SIGKILL)
            pool.helpers[0].proc.wait(timeout=10)
            assert pool.replace_dead() == 1
        os.kill(pool.helpers[0].proc.pid, signal.SIGKILL)
        pool.helpers[0].proc.wait(timeout=10)
        with pytest.raises(CheckPoolError, match="keep dying"):
            pool.replace_dead()
    finally:
        pool.close()


def test_a_helper_ignores_the_stop_signals_of_its_process_group(funds: Funds, pool: CheckPool) -> None:
    items = corpus(funds)
    verdict = pool.start(items)
    verdict(len(items) - 1)  # started and serving
    for helper in pool.helpers:
        os.kill(helper.proc.pid, signal.SIGINT)
        os.kill(helper.proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert pool.dead() == []
    verdict = pool.start(items)
    assert verdict(len(items) - 1) == Checker(funds.registry(), 8).check(*items[-1])
