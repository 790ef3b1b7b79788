"""Pseudonym scheme v2 benchmark: the pseudonymisation service and the producer through it.

``python -m bench.pseudonymiser [--lines N] [--evaluations N]`` prints:

1. the service's evaluations per second on one core, batched (``BlindEvaluateBatch`` of
   4096 elements with one proof, quota and ledger recording included; in process, CPU time);
2. the extra CPU per new person: the fund's blind + finalise (proof check included) and the
   service's evaluation, against one v1 HMAC;
3. the producer end to end with the service on: a fresh embedded broker, the service as its
   own process, ``help-exchange publish`` of an N-line extract with ``HELP_PSEUDONYM_SCHEME=v2``
   and no exchange key at the fund (lines/s, process start included), every person new; then a
   second file of the same people (the fund's local cache answers);
4. the CPU a line of each process of that run (the publishing process and its workers, the
   service, the broker), for each file: their sum for new people is what the machine's cores
   share (the ceiling it sets: cores / CPU a line), and the difference between the two files
   is the extra CPU a new person costs end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.producer import free_port, write_extract

BATCH = 4096


def service_rate(evaluations: int, base: Path) -> tuple[float, float]:
    """(evaluations per CPU second, per wall second) of the service, ledger on (SQLite)."""
    from services.core import oprf
    from services.core.types import Fund
    from services.ledger.pseudonymisation import PseudonymiserLog
    from services.ledger.store import Ledger
    from services.platform.settings import load_settings
    from services.pseudonymiser.service import Pseudonymiser

    settings = load_settings(var_dir=base / "svc", key_dir=base / "svc" / "keys",
                             database_url=f"sqlite:///{base / 'svc' / 'ledger.db'}")
    book = Ledger.open(settings, sign=False)
    ev = oprf.Evaluator.from_seed("pk-0bench00", secrets.token_bytes(32))
    svc = Pseudonymiser({ev.key_version: ev}, ev.key_version, quota_per_day=10**9, batch_limit=BATCH,
                        log=PseudonymiserLog(book))
    elements = [oprf.blind(b"help-exchange/pseudonym/v2\x00" + f"1850578006{i:05d}".encode()).element
                for i in range(BATCH)]
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while done < evaluations:
        svc.evaluate(Fund.CAF, secrets.token_hex(16), elements)
        done += BATCH
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return done / cpu, done / wall


def per_person_cpu(n: int = 20_000) -> dict[str, float]:
    """CPU microseconds per person: fund side (blind, finalise), service side, and v1 HMAC."""
    from services.core import oprf
    from services.producer.pseudonym import pseudonym_value

    ev = oprf.Evaluator.from_seed("pk-0bench00", secrets.token_bytes(32))
    inputs = [b"help-exchange/pseudonym/v2\x00" + f"2530735{i:08d}".encode() for i in range(n)]
    t = time.process_time()
    blinded = [oprf.blind(x) for x in inputs]
    blind_us = (time.process_time() - t) / n * 1e6
    t = time.process_time()
    answers = [ev.evaluate_batch([b.element for b in blinded[i:i + BATCH]]) for i in range(0, n, BATCH)]
    eval_us = (time.process_time() - t) / n * 1e6
    t = time.process_time()
    for k, i in enumerate(range(0, n, BATCH)):
        oprf.finalize_batch(blinded[i:i + BATCH], answers[k], ev.public_key)
    final_us = (time.process_time() - t) / n * 1e6
    key = secrets.token_bytes(32)
    t = time.process_time()
    for i in range(n):
        pseudonym_value(key, f"2530735{i:08d}")
    hmac_us = (time.process_time() - t) / n * 1e6
    return {"fund_blind_us": blind_us, "fund_finalize_us": final_us, "service_eval_us": eval_us,
            "v2_total_us": blind_us + final_us + eval_us, "v1_hmac_us": hmac_us}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def producer_rate(lines: int, base: Path) -> tuple[float, float, int, str, dict[str, float]]:
    """(lines/s for new people, lines/s for people already seen, exit status, output, CPU µs a
    line of the publishing process (its workers included), of the service and of the broker,
    for each file)."""
    from services.platform.broker import EmbeddedBroker
    from services.platform.kafka import apply_topics
    from services.platform.settings import load_settings
    from services.platform.topics import load_topic_specs

    settings = load_settings(var_dir=base / "broker", broker_port=free_port())
    broker, proc = EmbeddedBroker(settings).start(detach=False)
    service: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(apply_topics(settings, broker.bootstrap, load_topic_specs(settings.schemas_dir / "asyncapi.yaml")))
        extract = base / "extrait.csv"
        write_extract(extract, lines)
        port = free_port()
        env = {**os.environ, "HELP_BOOTSTRAP_SERVERS": broker.bootstrap, "HELP_VAR_DIR": str(base / "var"),
               "HELP_KEY_DIR": str(base / "var" / "keys"), "HELP_PSEUDONYM_SCHEME": "v2",
               "HELP_PSEUDONYMISER_URL": f"http://127.0.0.1:{port}",
               "HELP_PSEUDONYMISER_KEY_DIR": str(base / "service-keys"),
               "HELP_DATABASE_URL": f"sqlite:///{base / 'var' / 'ledger.db'}"}
        exe = [sys.executable, "-m", "services.app.cli"]
        for cmd in (["keys", "init", "--fund", "caf"], ["pseudonymiser", "init-key"]):
            subprocess.run([*exe, *cmd], env=env, check=True, capture_output=True)
        service = subprocess.Popen([*exe, "pseudonymiser", "serve", "--port", str(port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/keys", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # The same people in a second file (new references): their pseudonyms come from the
        # fund's local cache, as in a month's later extracts.
        later = base / "extrait-suivant.csv"
        later.write_text(extract.read_text(encoding="utf-8-sig").replace(";DOS-", ";DOT-"), encoding="utf-8")
        rates = []
        codes = []
        outputs = []
        cpu: dict[str, float] = {}
        for path, suffix in ((extract, ""), (later, "_cached")):
            service_cpu, broker_cpu = _cpu_s(service.pid), _cpu_s(proc.pid)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            done = subprocess.run([*exe, "publish", "--fund", "caf", "--input", str(path)], env=env,
                                  capture_output=True, text=True)
            rates.append(lines / (time.monotonic() - t0))
            codes.append(done.returncode)
            outputs.append((done.stdout + done.stderr).strip())
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            cpu[f"publisher_cpu_us_per_line{suffix}"] = used / lines * 1e6
            cpu[f"service_cpu_us_per_line{suffix}"] = (_cpu_s(service.pid) - service_cpu) / lines * 1e6
            cpu[f"broker_cpu_us_per_line{suffix}"] = (_cpu_s(proc.pid) - broker_cpu) / lines * 1e6
        for suffix in ("", "_cached"):
            cpu[f"total_cpu_us_per_line{suffix}"] = sum(
                cpu[f"{part}_cpu_us_per_line{suffix}"] for part in ("publisher", "service", "broker"))
        cpu["extra_cpu_us_per_new_person"] = cpu["total_cpu_us_per_line"] - cpu["total_cpu_us_per_line_cached"]
        cpu["cpu_ceiling_lines_per_s"] = (os.cpu_count() or 1) * 1e6 / cpu["total_cpu_us_per_line"]
        return rates[0], rates[1], max(codes), "\n".join(outputs), cpu
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=10)
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--evaluations", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pseudonymiser-") as tmp:
        cpu_rate, wall_rate = service_rate(args.evaluations, Path(tmp))
        print(f"bench.pseudonymiser: service, batches of {BATCH} with one proof, ledger on: "
              f"{cpu_rate:,.0f} evaluations per CPU second (one core), {wall_rate:,.0f}/s wall (target ≥ 5,000)")
        cost = per_person_cpu()
        print("bench.pseudonymiser: extra CPU per new person (µs): fund blind {fund_blind_us:.1f} + finalise "
              "(proof checked) {fund_finalize_us:.1f} + service {service_eval_us:.1f} = {v2_total_us:.1f} "
              "(v1 HMAC: {v1_hmac_us:.2f})".format(**cost))
        rate, cached, code, output, cpu = producer_rate(args.lines, Path(tmp))
        print(output[-2500:])
        print(f"bench.pseudonymiser: producer with the service on, {args.lines} lines end to end (process start "
              f"included): {rate:,.0f} lines/s with every person new, {cached:,.0f} lines/s with the same people "
              f"again (local cache) (target ≥ 5,000); exit status {code}")
        for suffix, who in (("", "every person new"), ("_cached", "the same people again")):
            part = {name: cpu[f"{name}_cpu_us_per_line{suffix}"]
                    for name in ("publisher", "service", "broker", "total")}
            print(f"bench.pseudonymiser: CPU a line, {who}: publishing process and its workers "
                  f"{part['publisher']:.0f} µs + service {part['service']:.0f} µs + broker {part['broker']:.0f} µs "
                  f"= {part['total']:.0f} µs")
        print(f"bench.pseudonymiser: extra CPU per new person end to end (new minus cached, all three processes): "
              f"{cpu['extra_cpu_us_per_new_person']:.0f} µs; the {os.cpu_count()} cores of this machine at "
              f"{cpu['total_cpu_us_per_line']:.0f} µs a line cap the run at {cpu['cpu_ceiling_lines_per_s']:,.0f} "
              f"lines/s (5,000 lines/s on 2 cores leaves 400 µs a line)")
    from bench import emit

    emit("pseudonymiser", {"service_evals_per_cpu_s": cpu_rate, "service_evals_per_s": wall_rate,
                           "producer_lines_per_s": rate, "producer_cached_lines_per_s": cached,
                           "lines": args.lines, **cost, **cpu,
                           "load_average": os.getloadavg()[0]})
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
