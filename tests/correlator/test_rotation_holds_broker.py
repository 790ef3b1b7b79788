"""Held-back hand-over records on the real embedded broker (issue #20): two workers of one
group; the worker that owns the previous pseudonyms' partitions is frozen (SIGSTOP), so the
hand-over answers are delayed on purpose. The other worker holds the linked persons' records,
pauses the fund partitions that hold them past ``HELP_CORRELATOR_HOLD_MAX`` (the records stay
on the broker, uncommitted), reports the held count, the oldest hold's age and the pause
(``help_partition_paused``, not ``help_partition_stalled``), logs the hold past its time bound;
killed with -9 while holding and restarted, it loses nothing: once the frozen worker is back,
every record gets its accepted receipt and each person has one situation with every fund."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.core.registry import ExchangeKeyEntry
from services.core.types import Fund
from services.correlator.engine import REPARTITION_TOPIC
from services.platform.partitioning import partition_for
from services.platform.settings import Settings, load_settings
from services.platform.topics import signal_topic
from tests.correlator.harness import Collector, publish, start_worker, stop
from tests.correlator.test_rotation import pseudonym
from tests.support.local import free_port
from tests.support.signals import Funds, wire

pytestmark = pytest.mark.integration

OLD, NEW = "pk-0000000a", "pk-0000000b"
FUNDS = Funds(more_exchange_keys=(ExchangeKeyEntry(key_id=OLD, created_at="2026-03-01T00:00:00.000000Z"),
                                  ExchangeKeyEntry(key_id=NEW, created_at="2026-06-01T00:00:00.000000Z")))
LATER = [(Fund.CARSAT, "exoneration_csg"), (Fund.MSA, "difficulte_msa"), (Fund.CAF, "perte_logement")]
HOLD_MAX = 3
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def owned(samples: Samples) -> set[int]:
    """The partitions a worker measures the lag of: the ones assigned to it."""
    return {int(labels["partition"]) for labels, _ in samples.get("help_consumer_lag_records", [])
            if labels["topic"] == REPARTITION_TOPIC}


def value(samples: Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


async def until(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = probe()
            if last:
                return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def item(msg: dict[str, Any]) -> tuple[str, bytes, bytes, int]:
    value_ = msg["pseudonym"]["value"]
    return signal_topic(Fund(msg["fund"])), value_.encode(), wire(msg), partition_for(value_, 8)


def linked(person: str, fund: Fund, category: str, key_id: str, link: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"pseudonym": pseudonym(person, key_id)}
    if link is not None:
        extra["pseudonym_previous"] = pseudonym(person, link)
    return FUNDS.signal(person, fund, category, **extra)


async def test_a_delayed_answer_pauses_the_holder_and_a_kill_9_while_holding_loses_nothing(
        tmp_path: Path, private_bootstrap: str) -> None:
    settings: Settings = load_settings(bootstrap_servers=private_bootstrap, var_dir=tmp_path / "var",
                                       key_dir=tmp_path / "var" / "keys", session_timeout_ms=30_000)
    FUNDS.write_registry(settings.key_dir)
    ports = {"a": free_port(), "b": free_port()}

    def env(name: str) -> dict[str, str]:
        return {"HELP_METRICS_PORT": str(ports[name]), "HELP_METRICS_HOST": "127.0.0.1",
                "HELP_LAG_PROBE_EVERY_S": "0.5", "HELP_WATCHDOG_STALL_S": "3",
                "HELP_CORRELATOR_HOLD_MAX": str(HOLD_MAX), "HELP_CORRELATOR_HOLD_WARN_S": "1",
                "HELP_CORRELATOR_SWEEP_EVERY_S": "0.5", "HELP_CORRELATOR_CHECK_PROCESSES": "0"}

    logs = {name: tmp_path / f"worker-{name}.log" for name in ports}
    procs = {name: start_worker(settings, "corr-holds", logs[name], env=env(name)) for name in ports}
    frozen: list[int] = []
    collector = Collector(private_bootstrap, settings.database_url)
    await collector.start()
    try:
        def split() -> tuple[set[int], set[int]] | None:
            a, b = owned(scrape(ports["a"])), owned(scrape(ports["b"]))
            return (a, b) if a and b and not a & b and len(a | b) == 8 else None

        holder_parts, frozen_parts = await until("both workers with partitions", split, timeout=120)
        # Persons whose previous pseudonym lives with the worker to be frozen, the new one with the other.
        people = [p for p in (f"hold-{i}" for i in range(500))
                  if partition_for(pseudonym(p, OLD)["value"], 8) in frozen_parts
                  and partition_for(pseudonym(p, NEW)["value"], 8) in holder_parts][:2]
        assert len(people) == 2
        first = [item(linked(p, f, c, OLD)) for p in people
                 for f, c in ((Fund.CAF, "impaye_loyer"), (Fund.URSSAF, "impaye_cotisations"))]
        sent = await publish(private_bootstrap, first)
        await collector.until(lambda c: set(sent) <= c.receipted and len(c.latest_situations()) == 2, timeout=90)

        os.kill(procs["b"].pid, signal.SIGSTOP)  # the previous pseudonyms' partitions stop answering
        frozen.append(procs["b"].pid)
        waves = [[item(linked(p, Fund.CPAM, "non_recours_c2s_puma", NEW, OLD)) for p in people]]
        waves += [[item(linked(p, f, c, NEW)) for p in people] for f, c in LATER]
        second: list[tuple[str, int, int]] = []
        for wave in waves:  # one wave at a time: each fund topic's record after the link
            second += await publish(private_bootstrap, wave)
            await asyncio.sleep(1.0)
        holding = await until("the holder paused", lambda: (s := scrape(ports["a"])) and any(
            v == 1 for _, v in s.get("help_partition_paused", [])) and s, timeout=30)
        held = value(holding, "help_correlator_held_records")
        assert HOLD_MAX <= held < len(second), held
        assert value(holding, "help_partition_stalled") == 0  # paused on purpose: not a stall
        paused = {(labels["topic"], int(labels["partition"]))
                  for labels, v in holding["help_partition_paused"] if v == 1}
        assert all(topic != REPARTITION_TOPIC for topic, _ in paused)  # the answers still come there
        await until("the hold's age", lambda: value(scrape(ports["a"]), "help_correlator_oldest_hold_seconds") >= 1)
        text = await until("the WARNING lines", lambda: (t := logs["a"].read_text(errors="replace"))
                           and "fetching paused" in t and "waiting for a hand-over answer" in t and t)
        assert "pk-" not in text and "hold-" not in text  # no pseudonym, no person in the log
        assert not set(second) <= collector.receipted  # held and paused records: no receipt yet

        stop(procs["a"], kill=True)  # kill -9 while holding
        procs["a"] = start_worker(settings, "corr-holds", logs["a"], env=env("a"))
        os.kill(procs["b"].pid, signal.SIGCONT)
        frozen.clear()
        await collector.until(lambda c: set(second) <= c.receipted, timeout=180,
                              alive=lambda: all(p.poll() is None for p in procs.values()))
        await asyncio.sleep(2.0)
        await collector.poll()
        for pos in [*sent, *second]:
            receipt = collector.receipt_for(*pos)
            assert receipt is not None and receipt["status"] == "accepte", (pos, receipt)
        assert not collector.deadletters
        situations = collector.latest_situations()
        assert len(situations) == 2  # one per person: none split, none doubled
        for p in people:
            (s,) = [s for s in situations.values() if s["pseudonym"] == pseudonym(p, NEW)]
            assert set(s["funds"]) == {"caf", "urssaf", "cpam", "carsat", "msa"}, s
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(
            f"--- {n}\n{log.read_text(errors='replace')[-3000:]}" for n, log in logs.items())) from None
    finally:
        await collector.stop()
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for proc in procs.values():
            stop(proc)
