"""Producer benchmark: a 100,000-line extract published end to end.

``python -m bench.producer [--lines N]`` starts a fresh embedded broker on a free loopback
port, creates the topics and the keys in a temporary folder, writes a valid CSV extract
(synthetic NIRs: random, valid in form, drawn from no register), runs
``help-exchange publish`` on it as a separate process, and prints lines/s and the
publishing process's peak memory (ru_maxrss, from wait4). Exit 0 when every line was
published.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAF_CATEGORIES = ("separation", "deces_conjoint", "impaye_loyer", "perte_logement", "parent_isole",
                  "ouverture_rsa", "naissance_premier_ou_multiple", "logement_non_decent")
DEPARTEMENTS = ("35", "61", "51", "2A", "2B", "75", "971")


def synthetic_nir(rng: random.Random) -> str:
    """A NIR valid in form (key included), random: not anyone's."""
    dept = rng.choice(("35", "61", "51", "2A", "2B", "75", "13"))
    body = (f"{rng.choice('12')}{rng.randint(40, 99):02d}{rng.randint(1, 12):02d}"
            f"{dept}{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}")
    numeric = body.replace("2A", "19").replace("2B", "18")
    return f"{body}{97 - int(numeric) % 97:02d}"


def write_extract(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    today = dt.date.today()
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        f.write("nir;categorie;date_observation;departement;reference_dossier\r\n")
        for i in range(lines):
            day = today - dt.timedelta(days=rng.randint(0, 600))
            f.write(f"{synthetic_nir(rng)};{rng.choice(CAF_CATEGORIES)};{day.isoformat()};"
                    f"{rng.choice(DEPARTEMENTS)};DOS-{i:08d}\r\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the key endpoint stopped (exit {proc.returncode})")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("the key endpoint did not listen in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--sealing", choices=("accepted", "required"), default="accepted",
                        help="required: each signal's person members sealed under a key of the exchange's "
                             "key endpoint (started here), as HELP_SIGNAL_SEALING=required does")
    args = parser.parse_args()

    from services.platform.broker import EmbeddedBroker
    from services.platform.kafka import apply_topics
    from services.platform.settings import load_settings
    from services.platform.topics import load_topic_specs

    with tempfile.TemporaryDirectory(prefix="bench-producer-") as tmp:
        base = Path(tmp)
        settings = load_settings(var_dir=base / "broker", broker_port=free_port())
        broker, proc = EmbeddedBroker(settings).start(detach=False)
        try:
            asyncio.run(apply_topics(settings, broker.bootstrap,
                                     load_topic_specs(settings.schemas_dir / "asyncapi.yaml")))
            extract = base / "extrait.csv"
            write_extract(extract, args.lines)
            env = {**os.environ, "HELP_BOOTSTRAP_SERVERS": broker.bootstrap, "HELP_VAR_DIR": str(base / "var"),
                   "HELP_KEY_DIR": str(base / "var" / "keys")}
            exe = [sys.executable, "-m", "services.app.cli"]
            for cmd in (["keys", "init", "--fund", "caf"], ["keys", "init-exchange"]):
                subprocess.run([*exe, *cmd], env=env, check=True, capture_output=True)
            endpoint = None
            if args.sealing == "required":
                port = free_port()
                env = {**env, "HELP_SIGNAL_SEALING": "required", "HELP_SIGNAL_KEYS_URL": f"http://127.0.0.1:{port}",
                       "HELP_DATABASE_URL": f"sqlite:///{base / 'var' / 'exchange.db'}"}
                endpoint = subprocess.Popen([*exe, "signal-keys", "serve", "--port", str(port)], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _wait_for_port(port, endpoint)
            t0 = time.monotonic()
            child = subprocess.Popen([*exe, "publish", "--fund", "caf", "--input", str(extract)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
            elapsed = time.monotonic() - t0
            output = child.stdout.read().decode() if child.stdout else ""
            code = os.waitstatus_to_exitcode(status)
            if endpoint is not None:
                endpoint.terminate()
                endpoint.wait(timeout=10)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(output.rstrip())
    cpu = usage.ru_utime + usage.ru_stime
    print(f"bench.producer (sealing {args.sealing}): {args.lines} lines in {elapsed:.2f} s (process start included) = "
          f"{args.lines / elapsed:,.0f} lines/s; peak memory of the publishing process "
          f"{usage.ru_maxrss / 1024:.1f} MiB; CPU of the publishing process and its workers "
          f"{cpu:.2f} s ({cpu / args.lines * 1e6:.0f} µs a line); exit status {code}")
    from bench import emit

    emit("producer", {"lines": args.lines, "seconds": elapsed, "lines_per_s": args.lines / elapsed,
                      "peak_rss_mib": usage.ru_maxrss / 1024,
                      "cpu_us_per_line": cpu / args.lines * 1e6, "load_average": os.getloadavg()[0],
                      "sealing": args.sealing})
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
