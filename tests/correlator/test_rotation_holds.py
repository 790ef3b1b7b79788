"""Records held back during a cross-partition hand-over are bounded (issue #20): when the
previous pseudonym's partition does not answer, the worker holds at most about
HELP_CORRELATOR_HOLD_MAX records and pauses the fund partitions that would add to the hold
(the records stay on the broker), never drops one and never processes one out of order; the
held count and the oldest hold's age are reported, a hold past its time bound is logged once."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import pytest

from services.core.messages import Pseudonym
from services.core.types import Fund
from services.correlator.engine import REPARTITION_TOPIC
from services.correlator.holds import Backpressure, Holds
from services.platform.partitioning import partition_for
from services.platform.topics import signal_topic
from tests.correlator.test_rotation import NEW, OLD, PARTITIONS, engine, person_of, pseudonym, publish, signal
from tests.support.cluster import Cluster

CATEGORIES = [(Fund.CARSAT, "passage_retraite_rupture_ressources"), (Fund.CPAM, "non_recours_c2s_puma"),
              (Fund.MSA, "difficulte_msa"), (Fund.CAF, "perte_logement"), (Fund.URSSAF, "cessation_activite")]


def part(person: str, key_id: str) -> int:
    return partition_for(pseudonym(person, key_id)["value"], PARTITIONS)


def crossing(count: int) -> list[str]:
    return [p for p in (f"held-{i}" for i in range(200)) if part(p, OLD) != part(p, NEW)][:count]


def sources(receipts: list[bytes]) -> list[tuple[str, int, int]]:
    out = []
    for raw in receipts:
        src = json.loads(raw)["source"]
        out.append((src["topic"], src["partition"], src["offset"]))
    return out


def test_a_partition_that_never_answers_pauses_the_holders_and_loses_nothing() -> None:
    people = crossing(6)
    limit = 8
    cluster = Cluster(engine(), rng=random.Random(4), batch=2, hold_max=limit)
    for p in people:
        publish(cluster, signal(p, Fund.CAF, "impaye_loyer", OLD))
        publish(cluster, signal(p, Fund.URSSAF, "impaye_cotisations", OLD))
    cluster.run()
    assert len(cluster.situations) == len(people)
    cluster.blocked = {(REPARTITION_TOPIC, part(p, OLD)) for p in people}  # their worker is down
    sent: list[dict[str, Any]] = []
    for p in people:
        sent.append(signal(p, Fund.CPAM, "non_recours_c2s_puma", NEW, link=OLD))
        sent += [signal(p, fund, category, NEW, n=10 + k) for k, (fund, category) in enumerate(CATEGORIES)]
    for msg in sent:
        publish(cluster, msg)
    cluster.run()  # settles: the holders' partitions are paused, the rest is blocked
    held = cluster.engine.holds.total
    # Past the bound, each partition that holds stops at once; one that holds nothing yet may
    # still add its batch (a first hold) before it stops too: at most a batch per partition.
    holding = len(cluster.engine.holds.partitions())
    assert limit <= held <= limit + cluster.batch * holding
    assert cluster.most_held == held
    fund_topics = {signal_topic(f) for f in Fund}
    left = sum(len(q) for (t, _), q in cluster.queues.items() if t in fund_topics)
    # The rest stays on the broker, unread (records of a fund topic read before the link
    # was were processed at once: nothing waited for them).
    assert left > 0 and left + held <= len(sent)
    assert cluster.engine.holds.to_pause(limit) == {part(p, NEW) for p in people if person_of(
        cluster, NEW, p) is not None and person_of(cluster, NEW, p).parked}  # type: ignore[union-attr]
    cluster.blocked = set()  # the worker comes back: answers release the holds, partitions resume
    cluster.run()
    assert cluster.engine.holds.total == 0 and cluster.pending() == 0
    assert not cluster.deadletters
    receipts = [json.loads(r) for r in cluster.receipts]
    assert len(receipts) == 2 * len(people) + len(sent) and {r["status"] for r in receipts} == {"accepte"}
    by_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in sources(cluster.receipts):
        by_partition.setdefault((topic, partition), []).append(offset)
    assert all(offsets == sorted(offsets) for offsets in by_partition.values())  # never out of order
    for p in people:
        state = person_of(cluster, NEW, p)
        assert state is not None and state.awaiting is None and len(state.signals) == 2 + 1 + len(CATEGORIES)


def test_the_holds_are_counted_per_partition_aged_and_reported_once() -> None:
    now = [100.0]
    holds = Holds(clock=lambda: now[0])
    holds.note(b"a", 3, 2, 5)
    now[0] += 10
    holds.note(b"b", 3, 1, 6)
    holds.note(b"c", 4, 4, 5)
    assert (holds.total, holds.held(3), holds.held(4)) == (7, 3, 4)
    assert holds.oldest_age() == 10.0
    assert holds.to_pause(8) == set() and holds.to_pause(7) == {3, 4}
    assert holds.overdue(10.0) == [(3, 2, 5, 10.0)] and holds.overdue(10.0) == []  # once
    holds.note(b"a", 3, 0)  # its answer came
    assert (holds.total, holds.held(3), holds.oldest_age()) == (5, 1, 0.0)
    holds.drop({4})  # revoked
    assert (holds.total, holds.partitions()) == (1, {3})


class TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition

    def __repr__(self) -> str:
        return f"{self.topic}:{self.partition}"


def test_the_backpressure_pauses_the_fund_partitions_only_and_resumes_them(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    holds = Holds(clock=lambda: now[0])
    paused: set[str] = set()
    told: list[frozenset[tuple[str, int]]] = []
    reported: list[tuple[int, float]] = []
    fund_topics = {signal_topic(Fund.CAF), signal_topic(Fund.CPAM)}
    bp = Backpressure(holds, 5, 60.0, topics=fund_topics,
                      pause=lambda tps: paused.update(map(repr, tps)),
                      resume=lambda tps: paused.difference_update(map(repr, tps)),
                      paused_now=told.append, report=lambda n, s: reported.append((n, s)))
    assigned = [TP(t, p) for t in (*fund_topics, REPARTITION_TOPIC) for p in range(3)]
    holds.note(b"x", 1, 4, 2)
    with caplog.at_level(logging.WARNING, logger="help.correlator"):
        bp.after_batch(assigned)
        assert paused == set() and reported[-1] == (4, 0.0)
        holds.note(b"x", 1, 5, 2)
        bp.after_batch(assigned)
        assert paused == {f"{t}:1" for t in fund_topics}  # never the repartition topic: answers come there
        assert told[-1] == frozenset((t, 1) for t in fund_topics)
        now[0] = 61.0
        bp.after_batch(assigned)
        bp.after_batch(assigned)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("fetching paused for partition(s) [1]" in m for m in lines) == 1
    assert sum("held 5 record(s) for 61 s waiting for a hand-over answer from partition 2" in m for m in lines) == 1
    assert not any("pk-" in m or "xk-" in m for m in lines)  # no pseudonym in the log
    holds.note(b"x", 1, 0)  # the answer came
    bp.after_batch(assigned)
    assert paused == set() and told[-1] == frozenset() and reported[-1] == (0, 0.0)


def test_a_pointer_person_key_is_not_in_the_holds_after_release() -> None:
    """The engine notes the holds itself at the end of every batch (what the worker pauses on)."""
    people = crossing(2)
    cluster = Cluster(engine(), rng=random.Random(1), batch=4)
    for p in people:
        publish(cluster, signal(p, Fund.CAF, "impaye_loyer", OLD))
    cluster.run()
    cluster.blocked = {(REPARTITION_TOPIC, part(p, OLD)) for p in people}
    for p in people:
        publish(cluster, signal(p, Fund.CPAM, "non_recours_c2s_puma", NEW, link=OLD))
    cluster.run()
    assert cluster.engine.holds.total == len(people)
    assert all(person_of(cluster, NEW, p).awaiting == Pseudonym(**pseudonym(p, OLD))  # type: ignore[union-attr]
               for p in people)
    cluster.blocked = set()
    cluster.run()
    assert cluster.engine.holds.total == 0 and cluster.engine.holds.partitions() == set()
