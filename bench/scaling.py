"""How the correlator's time and memory grow with the volume: 10,000 to 1,000,000 signals.

For each size, on a fresh embedded broker: simulate Ille-et-Vilaine's month scaled to that
many signals, publish every fund's extract through the producer, then start one correlator
worker (the real ``help-exchange correlator`` process) and time it from its start until
every published signal has its receipt. The worker's peak resident memory (VmHWM) is read
from /proc before it stops. Memory per active person is the slope of peak memory against
the number of people between the smallest and the largest run.

``BENCH_SCALING_SIZES`` (default ``10000,100000,1000000``) chooses the sizes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import emit
from bench.correlator import children
from services.core.types import Fund
from services.platform import kafka
from services.platform.broker import EmbeddedBroker
from services.platform.kafka import apply_topics
from services.platform.settings import Settings, load_settings
from services.platform.topics import load_topic_specs, receipt_topic
from services.producer.keys import init_exchange_key, init_fund_keys
from services.producer.publish import publish_file
from services.simulator.cli import simulate, today_paris
from tests.support.local import free_port

FUNDS = (Fund.URSSAF, Fund.CAF, Fund.CPAM, Fund.CARSAT)
SIGNALS_AT_SCALE_1 = 3_160  # Ille-et-Vilaine's month at scale 1 (the demo's month)


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


def one_run(signals: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        root = Path(tmp)
        base = load_settings(var_dir=root, key_dir=root / "keys", broker_port=free_port(), session_timeout_ms=6000)
        broker, broker_proc = EmbeddedBroker(base).start(detach=False)
        settings = load_settings(var_dir=root, key_dir=root / "keys", bootstrap_servers=broker.bootstrap,
                                 session_timeout_ms=6000)
        try:
            asyncio.run(apply_topics(settings, broker.bootstrap,
                                     load_topic_specs(settings.schemas_dir / "asyncapi.yaml")))
            for fund in FUNDS:
                init_fund_keys(settings.key_dir, fund)
            init_exchange_key(settings.key_dir)
            today = today_paris()
            doc = simulate("35", today.strftime("%Y-%m"), root / "extracts", seed=1, schemas=settings.schemas_dir,
                           today=today, scale=signals / SIGNALS_AT_SCALE_1)
            t0 = time.monotonic()
            published = 0
            for fund in FUNDS:
                summary = asyncio.run(publish_file(settings, fund, root / "extracts" / f"{fund.value}.csv",
                                                   root / f"rejects-{fund.value}.csv"))
                published += summary.sent
            publish_s = time.monotonic() - t0
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("HELP_")},
                   "HELP_BOOTSTRAP_SERVERS": broker.bootstrap, "HELP_VAR_DIR": str(root),
                   "HELP_KEY_DIR": str(root / "keys"), "HELP_SESSION_TIMEOUT_MS": "6000",
                   "HELP_DATABASE_URL": f"sqlite:///{root / 'casebook.db'}"}
            with (root / "correlator.log").open("wb") as log:
                worker = subprocess.Popen([sys.executable, "-m", "services.app.cli", "correlator"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT)
            t1 = time.monotonic()
            try:
                got, first, last = asyncio.run(count_receipts(settings, published, worker,
                                                              timeout=max(300.0, published / 200)))
                seconds = last - t1
                rss = peak_rss_mib(worker.pid)
                # The check helpers hold no person state: their memory does not grow with the
                # volume, but it is the worker's footprint too.
                helpers_rss = sum(peak_rss_mib(pid) for pid in children(worker.pid))
            finally:
                worker.terminate()
                worker.wait(timeout=30)
            if got < published:
                raise SystemExit(f"only {got} of {published} receipts: see {root / 'correlator.log'}")
        finally:
            broker_proc.terminate()
            broker_proc.wait(timeout=10)
    # The rate is taken between the first and the last receipt: worker start-up (joining the
    # group, loading partitions) is reported on its own, not spread over the signals.
    return {"signals": published, "persons": doc["personnes"], "publish_s": publish_s, "seconds": seconds,
            "startup_s": first - t1, "rate": published / max(last - first, 1e-3), "peak_rss_mib": rss,
            "helpers_peak_rss_mib": helpers_rss}


def main() -> int:
    sizes = [int(x) for x in os.environ.get("BENCH_SCALING_SIZES", "10000,100000,1000000").split(",")]
    runs = []
    print(f"{'signals':>10} {'persons':>9} {'publish':>9} {'start-up':>9} {'correlate':>10} {'rate':>9} "
          f"{'peak RSS':>9} {'+ helpers':>9}")
    for size in sizes:
        r = one_run(size)
        runs.append(r)
        print(f"{r['signals']:>10,.0f} {r['persons']:>9,.0f} {r['publish_s']:>8.1f}s {r['startup_s']:>8.1f}s "
              f"{r['seconds']:>9.1f}s "
              f"{r['rate']:>8,.0f}/s {r['peak_rss_mib']:>7.0f} MiB {r['helpers_peak_rss_mib']:>5.0f} MiB", flush=True)
    small, large = runs[0], runs[-1]
    per_person = ((large["peak_rss_mib"] - small["peak_rss_mib"]) * 1024 * 1024
                  / max(1.0, large["persons"] - small["persons"]))
    print(f"correlator memory per active person (slope of peak RSS): {per_person:,.0f} bytes")
    emit("scaling", {"runs": runs, "bytes_per_person": per_person, "load_average": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
