"""A chained hand-over (issue #20, contract §4.3): the previous pseudonym's own state is still
waiting for an older one's when the newest asks for it — two rotations inside one window, or a
rotation during the v1 → v2 migration. The chain resolves in order: the middle pseudonym answers
once its own answer has come and the records it held are processed; one situation, never split
or doubled, within a partition and across partitions, through crashes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from services.core.messages import Pseudonym
from services.core.person import situation_id_for
from services.core.types import Fund
from services.correlator.engine import REPARTITION_TOPIC
from services.platform.datakeys import KeyRing, KeyStore, is_sealed
from services.platform.db import open_engine
from services.platform.partitioning import partition_for
from tests.correlator.test_rotation import NEW, OLD, PARTITIONS, V1, engine, person_of, pseudonym, publish, signal
from tests.support.cluster import Cluster

CHAIN = (V1, OLD, NEW)  # oldest first: a migration v1 -> v2, then a v2 rotation


def part(person: str, key_id: str) -> int:
    return partition_for(pseudonym(person, key_id)["value"], PARTITIONS)


def persons(*, same: bool, count: int) -> list[str]:
    """Persons whose middle and newest pseudonyms share a partition (``same``) or not."""
    found = [p for p in (f"chain-{i}" for i in range(400))
             if (part(p, OLD) == part(p, NEW)) == same and part(p, V1) != part(p, OLD)]
    return found[:count]


def first_two(p: str) -> list[dict[str, Any]]:
    return [signal(p, Fund.CAF, "impaye_loyer", V1), signal(p, Fund.URSSAF, "impaye_cotisations", V1)]


def check_one_situation(cluster: Cluster, people: list[str], funds: set[str]) -> None:
    live = {sid: json.loads(v) for sid, v in cluster.situations.items()}
    assert len(live) == len(people)  # none split, none doubled
    for p in people:
        sid = situation_id_for(Pseudonym(**pseudonym(p, V1)))  # opened under V1: its id goes on
        assert sid in live, p
        assert set(live[sid]["funds"]) == funds, p
        assert live[sid]["pseudonym"] == pseudonym(p, NEW)
        # The oldest points to the middle one, or to the newest when the middle one had moved
        # before the oldest's link was read (the link is then followed from the newest).
        for older, newer in ((V1, (OLD, NEW)), (OLD, (NEW,))):
            pointer = person_of(cluster, older, p)
            assert pointer is not None and pointer.moved_to in [Pseudonym(**pseudonym(p, k)) for k in newer], (p, older)
            assert not pointer.signals and pointer.situation is None and pointer.successor is None
        newest = person_of(cluster, NEW, p)
        assert newest is not None and newest.awaiting is None and not newest.parked
        assert {Pseudonym(**pseudonym(p, k)) for k in (V1, OLD)} <= set(newest.merged_from)
    assert not cluster.deadletters
    statuses = {json.loads(r)["status"] for r in cluster.receipts}
    assert statuses == {"accepte"}


@pytest.mark.parametrize("same", [True, False], ids=["within-a-partition", "across-partitions"])
def test_the_newest_asks_while_the_middle_one_still_waits(same: bool) -> None:
    """Forced: the oldest pseudonym's partition does not answer until the newest has asked."""
    people = persons(same=same, count=4)
    cluster = Cluster(engine(), rng=random.Random(5), batch=3)
    for p in people:
        for msg in first_two(p):
            publish(cluster, msg)
    cluster.run()
    assert len(cluster.situations) == len(people)
    # The oldest pseudonyms' partitions stop answering.
    cluster.blocked = {(REPARTITION_TOPIC, part(p, V1)) for p in people}
    for p in people:
        publish(cluster, signal(p, Fund.CPAM, "non_recours_c2s_puma", OLD, link=V1))
    cluster.run()
    for p in people:
        middle = person_of(cluster, OLD, p)
        assert middle is not None and middle.awaiting == Pseudonym(**pseudonym(p, V1))
    for p in people:
        publish(cluster, signal(p, Fund.CARSAT, "passage_retraite_rupture_ressources", NEW, link=OLD))
        publish(cluster, signal(p, Fund.MSA, "difficulte_msa", OLD, link=V1, n=1))
    cluster.run()
    blocked = {part(q, V1) for q in people}
    asked = [p for p in people if part(p, OLD) not in blocked]  # the newest's request was read
    assert asked
    for p in asked:  # the middle one keeps the request: it answers once its own answer has come
        middle = person_of(cluster, OLD, p)
        assert middle is not None and middle.successor == Pseudonym(**pseudonym(p, NEW))
        assert middle.moved_to is None and len(middle.parked) == 2
    assert len(cluster.situations) == len(people)  # nothing moved yet, nothing doubled
    cluster.blocked = set()
    cluster.run()
    check_one_situation(cluster, people, {"caf", "urssaf", "cpam", "carsat", "msa"})


@pytest.mark.parametrize("seed", range(4))
def test_chains_resolve_whatever_the_order_and_through_crashes(seed: int) -> None:
    """Both rotations' links race each other and the late signals under every older pseudonym."""
    people = persons(same=True, count=6) + persons(same=False, count=6)
    cluster = Cluster(engine(), rng=random.Random(seed), batch=3)
    for p in people:
        for msg in first_two(p):
            publish(cluster, msg)
    cluster.run()
    for p in people:
        publish(cluster, signal(p, Fund.CPAM, "non_recours_c2s_puma", OLD, link=V1))
        publish(cluster, signal(p, Fund.CARSAT, "passage_retraite_rupture_ressources", NEW, link=OLD))
        publish(cluster, signal(p, Fund.MSA, "difficulte_msa", V1))
    cluster.run(crash_every=3 if seed % 2 else 0)
    check_one_situation(cluster, people, {"caf", "urssaf", "cpam", "carsat", "msa"})


def test_a_signal_under_a_moved_pseudonym_links_an_older_one_that_never_joined() -> None:
    """The middle pseudonym moved to the newest before any signal linked it to the oldest
    (a fund still migrating sends middle + link to v1 afterwards): the link is followed from
    the newest, and the oldest's situation joins there."""
    people = persons(same=False, count=3)
    cluster = Cluster(engine(), rng=random.Random(2), batch=2)
    for p in people:
        for msg in first_two(p):
            publish(cluster, msg)
        publish(cluster, signal(p, Fund.CPAM, "non_recours_c2s_puma", OLD))
    cluster.run()
    assert len(cluster.situations) == len(people)  # V1's; OLD holds one signal, no situation
    for p in people:
        publish(cluster, signal(p, Fund.CARSAT, "passage_retraite_rupture_ressources", NEW, link=OLD))
    cluster.run()
    for p in people:
        publish(cluster, signal(p, Fund.MSA, "difficulte_msa", OLD, link=V1))
    cluster.run()
    check_one_situation(cluster, people, {"caf", "urssaf", "cpam", "carsat", "msa"})


def test_with_states_sealed_the_chain_resolves_through_crashes(tmp_path: Path) -> None:
    """The answers of a chain are sealed under each previous pseudonym's key, as a single
    hand-over's are."""
    ring = KeyRing(KeyStore(open_engine(f"sqlite:///{tmp_path / 'keys.db'}")), b"m" * 32)
    people = persons(same=True, count=3) + persons(same=False, count=3)
    cluster = Cluster(engine(ring), rng=random.Random(7), batch=3)
    for p in people:
        for msg in first_two(p):
            publish(cluster, msg)
    cluster.run()
    cluster.blocked = {(REPARTITION_TOPIC, part(p, V1)) for p in people}
    for p in people:
        publish(cluster, signal(p, Fund.CPAM, "non_recours_c2s_puma", OLD, link=V1))
        publish(cluster, signal(p, Fund.CARSAT, "passage_retraite_rupture_ressources", NEW, link=OLD))
        publish(cluster, signal(p, Fund.MSA, "difficulte_msa", OLD))
    cluster.run()
    cluster.blocked = set()
    cluster.run(crash_every=3)
    check_one_situation(cluster, people, {"caf", "urssaf", "cpam", "carsat", "msa"})
    assert all(is_sealed(v) for v in cluster.store.values())
