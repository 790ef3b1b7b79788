"""How the correlator's time and memory grow with the volume: 10,000 to 1,000,000 people.

For each size, on a fresh embedded broker: simulate Ille-et-Vilaine's month scaled to about
that many people, publish every fund's extract through the producer, then start one
correlator worker (the real ``help-exchange correlator`` process) and time it from its start
until every published signal has its receipt. The worker's peak resident memory (VmHWM) is
read from /proc; memory per active person is the slope of peak memory against the number of
people between the smallest and the largest run.

After the largest run the worker is killed (SIGKILL, a crash) and its person state is brought
back as a restarted worker does (:meth:`services.correlator.state.PersonStore.load`, every
changelog partition to its fence, against the same broker): once from the local store it
left (the cold restart), once with the store deleted (the full rebuild from the changelog).

``python -m bench.scaling --persons 10000,100000`` (or ``BENCH_SCALING_PERSONS``; default
``10000,100000,1000000``) chooses the sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import emit
from bench.correlator import children
from bench.month import FUNDS, prepare_month
from services.correlator.app import changelog_topic
from services.correlator.state import PersonStore, remove_store, store_directory
from services.platform import kafka
from services.platform.broker import EmbeddedBroker
from services.platform.settings import Settings, load_settings
from services.platform.topics import receipt_topic
from services.producer.publish import publish_file
from tests.support.local import free_port

SIGNALS_PER_PERSON = 1.078  # the simulated month's ratio (982,104 signals for 911,076 people)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def count_receipts(settings: Settings, expect: int, proc: subprocess.Popen[bytes],
                         timeout: float) -> tuple[int, float, float]:
    """How many receipts came, and when the first and the last arrived (monotonic clock)."""
    assert settings.bootstrap_servers
    consumer = kafka.consumer(settings, settings.bootstrap_servers, *[receipt_topic(f) for f in FUNDS],
                              group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout
    try:
        while seen < expect and time.monotonic() < deadline and proc.poll() is None:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            got = sum(len(records) for records in batch.values())
            if got:
                last = time.monotonic()
                first = first or last
                seen += got
    finally:
        await consumer.stop()
    return seen, first, last


async def restore_state(settings: Settings, bootstrap: str) -> tuple[float, int, int]:
    """Bring every changelog partition's person state back as a restarted worker does:
    seconds (opening the file included), changelog records read, persons held."""
    t0 = time.monotonic()
    store = PersonStore(changelog_topic(settings.correlator_app_id),
                        directory=store_directory(settings.var_dir, settings.correlator_app_id),
                        partitions=settings.partitions, cache_persons=settings.correlator_state_cache)
    producer = kafka.producer(settings, bootstrap)
    await producer.start()

    async def send_acked(topic: str, key: bytes, value: bytes | None, partition: int) -> int:
        return int((await producer.send_and_wait(topic, value, key=key, partition=partition)).offset)

    try:
        read = await store.load(range(settings.partitions), send_acked,
                                lambda: kafka.consumer(settings, bootstrap, client_id="bench-state-loader"))
        seconds = time.monotonic() - t0
        return seconds, read, len(store)
    finally:
        await producer.stop()
        store.close()


def one_run(persons: int, *, restart: bool = False) -> dict[str, float]:
    signals = round(persons * SIGNALS_PER_PERSON)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        root = Path(tmp)
        base = load_settings(var_dir=root, key_dir=root / "keys", broker_port=free_port(), session_timeout_ms=6000)
        broker, broker_proc = EmbeddedBroker(base).start(detach=False)
        # Signals in clear (HELP_SIGNAL_SEALING=accepted), as the figures were first measured.
        settings = load_settings(var_dir=root, key_dir=root / "keys", bootstrap_servers=broker.bootstrap,
                                 session_timeout_ms=6000, signal_sealing="accepted")
        try:
            doc = prepare_month(settings, broker.bootstrap, root / "extracts", signals)
            t0 = time.monotonic()
            published = 0
            for fund in FUNDS:
                summary = asyncio.run(publish_file(settings, fund, root / "extracts" / f"{fund.value}.csv",
                                                   root / f"rejects-{fund.value}.csv"))
                published += summary.sent
            publish_s = time.monotonic() - t0
            # The worker's own knobs (HELP_CORRELATOR_*) pass through: to measure another setting.
            env = {**{k: v for k, v in os.environ.items()
                      if not k.startswith("HELP_") or k.startswith("HELP_CORRELATOR_")},
                   "HELP_BOOTSTRAP_SERVERS": broker.bootstrap, "HELP_VAR_DIR": str(root),
                   "HELP_KEY_DIR": str(root / "keys"), "HELP_SESSION_TIMEOUT_MS": "6000",
                   "HELP_DATABASE_URL": f"sqlite:///{root / 'casebook.db'}", "HELP_SIGNAL_SEALING": "accepted"}
            with (root / "correlator.log").open("wb") as log:
                worker = subprocess.Popen([sys.executable, "-m", "services.app.cli", "correlator"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT)
            t1 = time.monotonic()
            helpers: list[int] = []
            try:
                got, first, last = asyncio.run(count_receipts(settings, published, worker,
                                                              timeout=max(300.0, published / 200)))
                seconds = last - t1
                rss = peak_rss_mib(worker.pid)
                # The check helpers hold no person state: their memory does not grow with the
                # volume, but it is the worker's footprint too.
                helpers = children(worker.pid)
                helpers_rss = sum(peak_rss_mib(pid) for pid in helpers)
            finally:
                if restart:  # a crash: nothing closed, nothing flushed
                    for pid in [worker.pid, *helpers]:
                        os.kill(pid, signal.SIGKILL)
                else:
                    worker.terminate()
                worker.wait(timeout=30)
            if got < published:
                raise SystemExit(f"only {got} of {published} receipts: see {root / 'correlator.log'}")
            figures: dict[str, float] = {}
            if restart:
                reopen_s, reopen_read, held = asyncio.run(restore_state(settings, broker.bootstrap))
                remove_store(store_directory(settings.var_dir, settings.correlator_app_id))
                rebuild_s, rebuild_read, rebuilt = asyncio.run(restore_state(settings, broker.bootstrap))
                if rebuilt != held:
                    raise SystemExit(f"the rebuilt state holds {rebuilt} persons, the reopened one {held}")
                figures = {"restart_reopen_s": reopen_s, "restart_reopen_records": reopen_read,
                           "restart_rebuild_s": rebuild_s, "restart_rebuild_records": rebuild_read,
                           "restart_persons": held}
        finally:
            broker_proc.terminate()
            broker_proc.wait(timeout=10)
    # The rate is taken between the first and the last receipt: worker start-up (joining the
    # group, loading partitions) is reported on its own, not spread over the signals.
    return {"signals": published, "persons": doc["personnes"], "publish_s": publish_s, "seconds": seconds,
            "startup_s": first - t1, "rate": published / max(last - first, 1e-3), "peak_rss_mib": rss,
            "helpers_peak_rss_mib": helpers_rss, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--persons", default=os.environ.get("BENCH_SCALING_PERSONS", "10000,100000,1000000"),
                        help="sizes in people, comma-separated (default: %(default)s)")
    sizes = sorted(int(x) for x in parser.parse_args().persons.split(","))
    runs = []
    print(f"{'signals':>10} {'persons':>9} {'publish':>9} {'start-up':>9} {'correlate':>10} {'rate':>9} "
          f"{'peak RSS':>9} {'+ helpers':>9}")
    for size in sizes:
        r = one_run(size, restart=size == sizes[-1])
        runs.append(r)
        print(f"{r['signals']:>10,.0f} {r['persons']:>9,.0f} {r['publish_s']:>8.1f}s {r['startup_s']:>8.1f}s "
              f"{r['seconds']:>9.1f}s "
              f"{r['rate']:>8,.0f}/s {r['peak_rss_mib']:>7.0f} MiB {r['helpers_peak_rss_mib']:>5.0f} MiB", flush=True)
    small, large = runs[0], runs[-1]
    per_person = ((large["peak_rss_mib"] - small["peak_rss_mib"]) * 1024 * 1024
                  / max(1.0, large["persons"] - small["persons"]))
    print(f"correlator memory per active person (slope of peak RSS): {per_person:,.0f} bytes")
    figures: dict[str, object] = {"runs": runs, "bytes_per_person": per_person, "load_average": os.getloadavg()[0],
                                  "peak_rss_mib_small": small["peak_rss_mib"], "persons_small": small["persons"],
                                  "peak_rss_mib_large": large["peak_rss_mib"], "persons_large": large["persons"]}
    if len(runs) > 1:
        # The sizes before the largest: the one ten times smaller if there is one (100,000 for 1,000,000).
        tenth = min(runs[:-1], key=lambda r: abs(r["persons"] * 10 - large["persons"]))
        figures["peak_rss_ratio"] = large["peak_rss_mib"] / tenth["peak_rss_mib"]
        figures["peak_rss_mib_tenth"] = tenth["peak_rss_mib"]
        print(f"peak RSS {large['persons']:,.0f} persons / {tenth['persons']:,.0f} persons: "
              f"{figures['peak_rss_ratio']:.2f}")
    for key in ("restart_reopen_s", "restart_reopen_records", "restart_rebuild_s", "restart_rebuild_records",
                "restart_persons"):
        figures[key] = large[key]
    print(f"state of {large['restart_persons']:,.0f} persons after a kill -9: reopened in "
          f"{large['restart_reopen_s']:.1f} s ({large['restart_reopen_records']:,.0f} changelog records read), "
          f"rebuilt from the changelog in {large['restart_rebuild_s']:.1f} s "
          f"({large['restart_rebuild_records']:,.0f} records)")
    emit("scaling", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
