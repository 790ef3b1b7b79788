"""A key rotation in the middle of a month: every link kept (issue #20, contract §4.3).

A simulated population (``services.simulator``: Ille-et-Vilaine, scaled to ``--persons``)
publishes its month under pseudonym scheme v2. Its pseudonyms come from the
pseudonymisation service (blind, a batch evaluated under one key version with one proof,
the proof checked, finalised: :class:`~services.producer.pseudonym_v2.PseudonymClient` over
an in-process :class:`~services.pseudonymiser.service.Pseudonymiser`); with ``--oprf direct``
(the default above 100,000 persons) they are the same values computed as
``Evaluate(skS, input)``, which skips the blinding, the proof and its check — at a million
persons those would cost more than the rest of the run (the service's own cost is measured
by ``bench/pseudonymiser.py``).

Half-way through the month the service publishes a new key version: from then on each fund,
on its own day (staggered: some still publish under the old version while others link),
publishes under the new version with the link to the old one. At the end the old version is
destroyed (retired in the registry) and the correlator's retention sweep runs.

The correlator is the real :class:`~services.correlator.engine.Engine` (every check on,
Ed25519 included) over 8 partitions served in random order (:class:`tests.support.cluster.Cluster`),
its hand-overs crossing partitions on the repartition topic. Checked against the simulator's
ground truth (:func:`services.simulator.truth.ground_truth`): every situation found exactly,
none split, none doubled; every person seen under both versions ends in one state.

    python -m bench.rotation [--persons 1000000] [--oprf auto|service|direct]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import resource
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench import emit
from services.core import oprf
from services.core.person import PersonState
from services.core.policy import conditions_met, load_policy
from services.core.registry import ExchangeKeyEntry, Registry
from services.core.signing import b64u, b64u_decode
from services.core.taxonomy import load_taxonomy
from services.core.types import Fund, Purpose
from services.correlator.checkpool import CheckPool
from services.correlator.engine import Engine
from services.platform.partitioning import partition_for
from services.platform.settings import DEFAULT_SCHEMAS_DIR
from services.platform.topics import signal_topic
from services.producer.pseudonym_v2 import PseudonymClient, oprf_input
from services.pseudonymiser.keystore import KEY_INFO
from services.pseudonymiser.service import Pseudonymiser
from services.simulator.extracts import plan_lines
from services.simulator.population import TERRITORIES, expected_volumes, generate
from services.simulator.truth import ground_truth
from tests.correlator.core_fixtures import context
from tests.support.cluster import Cluster
from tests.support.signals import Funds, wire

OLD, NEW = "pk-00000a01", "pk-00000b02"
PARTITIONS = 8
MONTH = "2026-11"
NOW = dt.datetime(2026, 11, 30, 20, 0, tzinfo=dt.UTC)
#: The day each fund moves to the new version (days after the rotation): staggered.
ADOPTION = {"caf": 0, "cpam": 3, "urssaf": 6, "carsat": 9}


def registry(funds: Funds, *, old_retired: bool = False) -> Registry:
    base = funds.registry()
    old = ExchangeKeyEntry(key_id=OLD, created_at="2026-06-01T00:00:00.000000Z") if not old_retired else \
        ExchangeKeyEntry(key_id=OLD, status="retired", created_at="2026-06-01T00:00:00.000000Z",
                         retired_at="2026-11-30T20:00:00.000000Z")
    return base.model_copy(update={"exchange_keys": (
        old, ExchangeKeyEntry(key_id=NEW, created_at="2026-11-15T00:00:00.000000Z"))})


@dataclass
class Pseudonyms:
    """Each person's v2 pseudonyms per version, asked by each fund for its own people."""

    direct: bool
    evaluators: dict[str, oprf.Evaluator]
    service: Pseudonymiser
    asked: int = 0
    values: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (fund, version, nir) -> value

    def fill(self, fund: str, version: str, nirs: list[str]) -> None:
        todo = [n for n in dict.fromkeys(nirs) if (fund, version, n) not in self.values]
        self.asked += len(todo)
        if self.direct:
            ev = self.evaluators[version]
            for n in todo:
                self.values[(fund, version, n)] = oprf.pseudonym_value_v2(ev.evaluate(oprf_input(n)))
            return
        client = PseudonymClient(Fund(fund), {v: e.public_key for v, e in self.evaluators.items()}, version,
                                 self._transport, batch_limit=4096)
        client.prefetch(todo)
        for n in todo:
            self.values[(fund, version, n)] = client.pseudonym(n)["value"]

    def _transport(self, doc: dict[str, object]) -> dict[str, object]:
        blinded = [b64u_decode(str(x)) for x in doc["blinded"]]  # type: ignore[attr-defined]
        version = doc.get("key_version")
        answer = self.service.evaluate(Fund(str(doc["fund"])), str(doc["request_id"]), blinded,
                                       version if isinstance(version, str) else None)
        return {"key_version": answer.key_version, "evaluated": b64u(answer.evaluated)}

    def member(self, fund: str, version: str, nir: str) -> dict[str, str]:
        return {"key_id": version, "value": self.values[(fund, version, nir)]}


def sealed(fund: str, reference: str) -> str:
    """A stand-in sealed reference: unique per line, and it maps back to the line (bench only)."""
    return b64u(hashlib.sha256(f"{fund}:{reference}".encode()).digest())


def run(persons: int, *, direct: bool, seed: int = 7, batch: int = 256, check_processes: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    territory = TERRITORIES["35"]
    scale = persons / sum(expected_volumes(territory).values())
    month = generate("35", MONTH, seed=seed, today=NOW.date(), scale=scale)
    truth = ground_truth(month, DEFAULT_SCHEMAS_DIR)
    lines = [line for fund_lines in plan_lines(month).values() for line in fund_lines if line.fault is None]
    lines.sort(key=lambda ln: (ln.signal.observed_on, ln.signal.fund, ln.signal.reference))
    rotation_day = month.first_day + dt.timedelta(days=14)
    policy = load_policy(DEFAULT_SCHEMAS_DIR / "policy.yaml")
    first_purpose = {c.code: c.purposes[0] for c in load_taxonomy(DEFAULT_SCHEMAS_DIR / "taxonomy.yaml").categories
                     if c.purposes}
    funds = Funds(now=NOW)
    evaluators = {v: oprf.Evaluator.from_seed(v, hashlib.sha256(f"bench rotation {v}".encode()).digest(), KEY_INFO)
                  for v in (OLD, NEW)}
    pseudonyms = Pseudonyms(direct, evaluators, Pseudonymiser(evaluators, NEW, quota_per_day=10**9,
                                                              batch_limit=4096))

    def adopted(line: Any) -> bool:
        return line.signal.observed_on >= rotation_day + dt.timedelta(days=ADOPTION[line.signal.fund])

    t_prep = time.perf_counter()
    # Each fund asks for its people: under the old version before it moves, under both after.
    wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
    for line in lines:
        wanted[(line.signal.fund, OLD)].append(line.person.nir)
        if adopted(line):
            wanted[(line.signal.fund, NEW)].append(line.person.nir)
    for (fund, version), nirs in wanted.items():
        pseudonyms.fill(fund, version, nirs)
    t_pseudo = time.perf_counter()

    pool = CheckPool(registry(funds), check_processes, partitions=PARTITIONS) if check_processes else None
    engine = Engine(context(), registry(funds), partitions=PARTITIONS, clock=lambda: NOW, checks=pool)
    cluster = Cluster(engine, rng=random.Random(seed), batch=batch, keep_receipts=False)
    stamp = int(NOW.timestamp() * 1000)
    under: dict[int, set[str]] = defaultdict(set)  # person number -> versions its signals were under
    ref_person: dict[str, int] = {}
    ref_label: dict[str, str] = {}
    built = signed_s = 0.0
    day = None
    for n, line in enumerate(lines):
        s, p = line.signal, line.person
        if s.observed_on != day:  # the exchange keeps up day by day: the queues stay short
            cluster.run()
            day = s.observed_on
        t = time.perf_counter()
        purpose = Purpose(s.purpose) if s.purpose else first_purpose[s.category]
        extra: dict[str, Any] = {"pseudonym": pseudonyms.member(s.fund, OLD, p.nir)}
        version = OLD
        if adopted(line):
            version = NEW
            extra = {"pseudonym": pseudonyms.member(s.fund, NEW, p.nir),
                     "pseudonym_previous": pseudonyms.member(s.fund, OLD, p.nir)}
        under[p.number].add(version)
        value = sealed(s.fund, s.reference)
        ref_person[value] = p.number
        ref_label[value] = f"{s.fund}:{s.reference}"
        msg = funds.signal(p.nir, Fund(s.fund), s.category, n=n, observed_on=s.observed_on, purpose=purpose.value,
                           legal_basis={"code": "L115-2-1",
                                        "conditions": list(conditions_met(policy, purpose, age=p.age))},
                           territory=p.departement, sealed_ref={"key_id": f"{s.fund}-seal-1", "value": value},
                           **extra)
        signed_s += time.perf_counter() - t
        cluster.publish(signal_topic(Fund(s.fund)), partition_for(extra["pseudonym"]["value"], PARTITIONS),
                        wire(msg), stamp)
        built += 1
    cluster.run()
    t_run = time.perf_counter()

    # The end of the window: the old version destroyed, the correlator's sweep.
    engine.registry = registry(funds, old_retired=True)
    engine.checks.update(engine.registry)
    items = [(k, partition_for(k.decode().partition("/")[2], PARTITIONS), v) for k, v in cluster.store.items()]
    for key, (_, value) in engine.sweep(items).items():
        if value is None:
            cluster.store.pop(key, None)
        else:
            cluster.store[key] = value
    t_end = time.perf_counter()

    # ----------------------------------------------------------------- against the truth
    refused = cluster.refused
    # The simulator draws NIRs at random: at a million persons a few hundred share one with
    # another person. The exchange rightly sees one person there, the truth two: left out.
    nir_count: dict[str, int] = defaultdict(int)
    for person in month.persons:
        nir_count[person.nir] += 1
    shared = {person.number for person in month.persons if nir_count[person.nir] > 1}
    expected = {s["personne"]: s for s in truth["situations"] if s["personne"] not in shared}
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    strays = 0
    for event in (json.loads(v) for v in cluster.situations.values()):
        owners = {ref_person[r["sealed_ref"]["value"]] for r in event["refs"]}
        if owners & shared:
            continue
        if len(owners) != 1:
            strays += 1  # one situation for two people
            continue
        found[owners.pop()].append(event)
    exact = split = doubled = 0
    for number, want in expected.items():
        got = found.get(number, [])
        if len(got) > 1:
            doubled += 1
            continue
        if not got:
            split += 1
            continue
        refs = sorted(ref_label[r["sealed_ref"]["value"]] for r in got[0]["refs"])
        exact += (refs == want["references"] and sorted(got[0]["rules"]) == want["regles"]
                  and got[0]["priority"] == want["priorite"])
        split += refs != want["references"]
    doubled += sum(1 for number in found if number not in expected) + strays
    # every person seen under both versions: all its signals in one state
    holders: dict[int, set[bytes]] = defaultdict(set)
    pointers = 0
    for key, raw in cluster.store.items():
        st = PersonState.model_validate_json(raw)
        pointers += st.moved_to is not None
        for sig in st.signals:
            holders[ref_person[sig.sealed_ref.value]].add(key)
    linked = [n for n, versions in under.items() if versions == {OLD, NEW}]
    kept = sum(1 for n in linked if len(holders.get(n, ())) == 1)
    old_states = sum(1 for k in cluster.store if k.startswith(f"{OLD}/".encode()))
    # after the window: a signal under the old version, or a link to it, is refused
    probe = funds.signal("probe", Fund.CAF, "impaye_loyer", pseudonym={"key_id": OLD, "value": "A" * 43})
    probe_link = funds.signal("probe", Fund.CAF, "impaye_loyer", n=1, pseudonym={"key_id": NEW, "value": "B" * 43},
                              pseudonym_previous={"key_id": OLD, "value": "A" * 43})
    for msg in (probe, probe_link):
        cluster.publish(signal_topic(Fund.CAF), partition_for(msg["pseudonym"]["value"], PARTITIONS), wire(msg), stamp)
    cluster.run()
    after = [json.loads(r)["reason"] for r in cluster.receipts[-2:]]
    if pool is not None:
        pool.close()
    assert cluster.refused == refused + 2
    return {
        "persons": len(month.persons), "signals": int(built), "refused": refused,
        "truth_situations": len(expected), "exact": exact, "split": split, "doubled": doubled,
        "linked_persons": len(linked), "links_kept": kept,
        "links_kept_pct": 100.0 * kept / len(linked) if linked else 100.0,
        "pointers_left": pointers, "shared_nir_persons": len(shared), "old_states_left": old_states,
        "after_window": after,
        "service_evaluations": pseudonyms.asked, "via_service": not direct,
        "prep_s": t_prep - t0, "pseudonyms_s": t_pseudo - t_prep, "sign_s": signed_s,
        "correlate_s": (t_run - t_pseudo) - signed_s, "window_end_s": t_end - t_run, "total_s": t_end - t0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def n(value: int) -> str:
    """12 345 (a comma would read as a decimal point to a French reader)."""
    return f"{value:,}".replace(",", "\u202f")


def d(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}".replace(".", ",")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # make bench runs this module without arguments: HELP_BENCH_ROTATION_PERSONS sets its scale there.
    parser.add_argument("--persons", type=int, default=int(os.environ.get("HELP_BENCH_ROTATION_PERSONS", 1_000_000)))
    parser.add_argument("--oprf", choices=("auto", "service", "direct"), default="auto",
                        help="pseudonyms blinded through the service, or as Evaluate(skS, input); "
                             "auto: the service up to 100,000 persons")
    parser.add_argument("--check-processes", type=int, default=1,
                        help="the correlator's check helper processes, as HELP_CORRELATOR_CHECK_PROCESSES")
    args = parser.parse_args(argv)
    direct = args.oprf == "direct" or (args.oprf == "auto" and args.persons > 100_000)
    r = run(args.persons, direct=direct, check_processes=args.check_processes)
    print(f"rotation de clé au milieu du mois : {n(r['persons'])} personnes, {n(r['signals'])} signalements, "
          f"{r['refused']} refusés")
    print(f"  pseudonymes v2 : {n(r['service_evaluations'])} évaluations "
          f"({'par le service, aveuglées, preuve vérifiée' if r['via_service'] else 'Evaluate direct'}) "
          f"en {d(r['pseudonyms_s'], 1)} s")
    print(f"  liens conservés : {n(r['links_kept'])} / {n(r['linked_persons'])} personnes vues sous les deux "
          f"versions ({d(r['links_kept_pct'], 2)} %)")
    print(f"  situations : {n(r['exact'])} exactes sur {n(r['truth_situations'])} attendues, "
          f"{r['split']} scindées, {r['doubled']} en double ({n(r['shared_nir_persons'])} personnes dont le NIR "
          f"tiré par le simulateur est aussi celui d'une autre, hors comparaison)")
    print(f"  fin de fenêtre : ancienne version détruite, {r['pointers_left']} pointeurs restants ; "
          f"{n(r['old_states_left'])} personnes non revues pendant la fenêtre (un demi-mois, plus court que la "
          f"fenêtre de corrélation) gardent leur état sous l'ancienne clé ; ensuite refusés : "
          f"{', '.join(sorted(r['after_window']))}")
    print(f"  durées : préparation {d(r['prep_s'], 1)} s, pseudonymes {d(r['pseudonyms_s'], 1)} s, signature "
          f"{d(r['sign_s'], 1)} s, corrélation {d(r['correlate_s'], 1)} s ; total {d(r['total_s'], 1)} s ; "
          f"mémoire max {d(r['peak_rss_mib'], 0)} Mio")
    emit("rotation", {k: v for k, v in r.items() if k != "after_window"})
    ok = (r["links_kept"] == r["linked_persons"] and r["split"] == 0 and r["doubled"] == 0
          and r["exact"] == r["truth_situations"] and r["refused"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
