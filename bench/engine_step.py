"""The correlator engine's own step, alone: ``python -m bench.engine_step``.

What the worker's thread does per signal once the check helpers have given their verdict
(person state, policy, dates, rules, situation events, receipts, the state's bytes at the
batch's end), timed without Kafka, Faust or the helpers: the verdicts are computed once,
beforehand, and handed to the engine in order as the check pool would. Workload: the
correlator bench's (pairs of funds per person, so half the signals open a situation), and
a third signal per person of another fund (an open situation's update) for a third of
them; batches of ``BENCH_ENGINE_BATCH`` records (1,000) whose states are read back from a
dict as the worker's store gives them.

Two engines run the same records alternately, several rounds: the reference step
(``Engine(fast=False)``: the pydantic models throughout) and the fast one (the default);
their outputs and state bytes must be identical, or the bench fails. The figure is CPU time
(``time.process_time``) per signal, steadier than wall-clock time on a shared machine.
``BENCH_ENGINE_SIGNALS`` (30,000) sets the number of signals, ``BENCH_ENGINE_ROUNDS`` (3)
the rounds.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence

from bench import emit
from services.core.types import Fund
from services.correlator.checks import Checker, Verdict
from services.correlator.engine import Batch, Engine, Record
from services.platform.partitioning import partition_for
from services.platform.runtime import tune_for_streaming
from services.platform.topics import CONTRACT_PARTITIONS, signal_topic
from tests.correlator.core_fixtures import context
from tests.support.signals import Funds, wire

N = int(os.environ.get("BENCH_ENGINE_SIGNALS", "30000"))
ROUNDS = int(os.environ.get("BENCH_ENGINE_ROUNDS", "3"))
BATCH = int(os.environ.get("BENCH_ENGINE_BATCH", "1000"))
AT = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
PLAN = ((Fund.CAF, "impaye_loyer"), (Fund.URSSAF, "impaye_cotisations"), (Fund.CPAM, "non_recours_c2s_puma"))


class Prepared:
    """Verdicts computed once, handed out in record order (what the check pool does)."""

    def __init__(self, verdicts: dict[bytes, Verdict]) -> None:
        self.verdicts = verdicts

    def start(self, items: Sequence[tuple[bytes | None, str]]) -> Callable[[int], Verdict]:
        verdicts = self.verdicts
        return lambda i: verdicts[items[i][0] or b""]

    def update(self, registry: object) -> None:
        pass


def workload(n: int) -> tuple[list[list[Record]], Funds]:
    funds = Funds(now=AT)
    signals: list[tuple[Fund, bytes, str]] = []
    person = 0
    while len(signals) < n:
        plan = PLAN if person % 3 == 0 else PLAN[:2]
        for fund, category in plan:
            m = funds.signal(f"p{person}", fund, category)
            signals.append((fund, wire(m), m["pseudonym"]["value"]))
        person += 1
    signals = signals[:n]
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for i, (fund, value, pseudonym) in enumerate(signals):
        topic, partition = signal_topic(fund), partition_for(pseudonym, CONTRACT_PARTITIONS)
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        records.append(Record(topic, partition, offset, int(AT.timestamp() * 1000) + i, None, value))
    return [records[i:i + BATCH] for i in range(0, len(records), BATCH)], funds


def run(engine: Engine, batches: list[list[Record]]) -> tuple[float, list[Batch]]:
    table: dict[bytes, bytes | None] = {}
    out = []
    gc.collect()
    started = time.process_time()
    for records in batches:
        batch = engine.process(records, table.get)
        for key, (_, value) in batch.writes.items():
            table[key] = value
        out.append(batch)
        gc.freeze()  # as the worker does after every batch (services.platform.runtime.HeapPolicy)
    spent = time.process_time() - started
    gc.unfreeze()
    return spent, out


def main() -> None:
    tune_for_streaming()  # the worker's collector thresholds
    batches, funds = workload(N)
    registry = funds.registry()
    checker = Checker(registry, CONTRACT_PARTITIONS)
    verdicts = {rec.value or b"": checker.check(rec.value, rec.topic) for recs in batches for rec in recs}
    assert all(v.reason is None for v in verdicts.values()), "a prepared signal failed its checks"
    ctx = context()
    times: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, list[Batch]] = {}
    for r in range(ROUNDS):
        for fast in ((False, True) if r % 2 == 0 else (True, False)):
            engine = Engine(ctx, registry, clock=lambda: AT, checks=Prepared(verdicts), fast=fast)
            spent, out = run(engine, batches)
            times[fast].append(spent)
            results[fast] = out
    for ref, new in zip(results[False], results[True], strict=True):
        if ref.outputs != new.outputs or ref.writes != new.writes:
            raise SystemExit("the fast step's outputs differ from the reference's")
    situations = sum(1 for b in results[True] for o in b.outputs if o.topic == "help.situations.v1")
    ref_us = statistics.median(times[False]) / N * 1e6
    fast_us = statistics.median(times[True]) / N * 1e6
    print(f"Étape du moteur seule, {N} signaux ({situations} événements de situation), lots de {BATCH}, "
          f"{ROUNDS} tours alternés (temps CPU, médiane)")
    print(f"  référence (modèles pydantic) : {ref_us:7.1f} µs/signal  "
          f"({', '.join(f'{t:.2f}' for t in times[False])} s)")
    print(f"  chemin rapide                : {fast_us:7.1f} µs/signal  "
          f"({', '.join(f'{t:.2f}' for t in times[True])} s)")
    print(f"  gain : {1 - fast_us / ref_us:.0%} de CPU en moins par signal (sorties identiques octet pour octet)")
    emit("engine_step", {"reference_us": round(ref_us, 1), "fast_us": round(fast_us, 1),
                         "cpu_saved": round(1 - fast_us / ref_us, 3), "signals": N})


if __name__ == "__main__":
    main()
