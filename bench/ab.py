"""Correlator A/B: a base revision's worker against this tree's, on one broker, interleaved.

``python -m bench.ab [--base REV] [--rounds N]`` checks ``REV`` (default ``main``) out into a
temporary ``git worktree``, starts one embedded broker, publishes ``BENCH_SIGNALS`` signed
signals (30,000: pairs of funds per person) once, then runs the two workers alternately —
``base, new`` in even rounds, ``new, base`` in odd ones — each in a fresh consumer group, so
each processes every signal with every check on. A run's rate is its full-work rate, as in
:mod:`bench.correlator`: receipts from the first to the last. The machine is shared: the two
workers meet the same neighbours because they alternate; the ratio of the medians is the
figure, each round's ratio shows the spread. A warm-up run (not counted) goes first. Per
CPU-second: the worker process alone, and with its check helpers (their CPU counted too: they
share the machine's cores with it and the broker).

The base worker runs the base tree's code (its ``services/`` and ``schemas/``, first on the
path from its working directory) with this environment's packages. ``--new-env NAME=VALUE``
gives this tree's worker a setting the base's does not get: with ``--base HEAD`` it compares
two settings of the same code (one check helper against two, say).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.correlator import children, cpu_seconds, helpers_cpu, outputs, published
from services.platform.settings import Settings
from tests.correlator.harness import REPO, stop

N = int(os.environ.get("BENCH_SIGNALS", "30000"))


def worktree(rev: str) -> Path:
    """A detached checkout of ``rev`` in a temporary directory."""
    path = Path(tempfile.mkdtemp(prefix="help-ab-base-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), rev],
                   check=True, capture_output=True)
    found = subprocess.run([sys.executable, "-c", "import services; print(services.__file__)"],
                           cwd=path, check=True, capture_output=True, text=True).stdout.strip()
    if not found.startswith(str(path)):
        raise RuntimeError(f"the base tree's services are not the ones imported there: {found}")
    return path


def entrypoint(tree: Path) -> str:
    """The root command's module in that revision (it moved from the platform to services/app)."""
    return "services.app.cli" if (tree / "services" / "app" / "cli.py").exists() else "services.platform.cli"


def start(tree: Path, settings: Settings, app_id: str, log: Path,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(tree),
           "HELP_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
           "HELP_KEY_DIR": str(settings.key_dir), "HELP_VAR_DIR": str(settings.var_dir),
           "HELP_DATABASE_URL": settings.database_url,
           "HELP_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", entrypoint(tree), "correlator", "--app-id", app_id],
                                cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def run_once(tree: Path, settings: Settings, app_id: str, total: int,
                   extra_env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """One worker over every signal: its full-work rate, signals per CPU-second of its
    process, and per CPU-second of its process and its check helpers together."""
    out = await outputs(settings.bootstrap_servers or "")
    # The embedded broker's end offset is the start of its last record batch (see
    # services/correlator/state.py): the previous run's last receipts are read again after a
    # seek to the end. Read them away first, or they would count, and start the clock early.
    while any((await out.getmany(timeout_ms=1000, max_records=10000)).values()):
        pass
    log = settings.var_dir / f"{app_id}.log"
    # A database of its own for each run: the two trees' migrations differ (a base behind a
    # revision cannot open a database the new tree upgraded), and each run makes every
    # person's data key, as the first one did.
    settings = settings.model_copy(update={"database_url": f"sqlite:///{settings.var_dir / app_id}.db"})
    worker = start(tree, settings, app_id, log, extra_env)
    try:
        seen, first, last, cpu0, hcpu0 = 0, 0.0, 0.0, float("nan"), float("nan")
        helpers: list[int] = []
        deadline = time.monotonic() + 600
        while seen < total:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{app_id}: worker gone or too slow ({seen}/{total}); see {log}")
            for tp, recs in (await out.getmany(timeout_ms=500, max_records=10000)).items():
                if tp.topic.startswith("help.receipts"):
                    now = time.perf_counter()
                    if not first:
                        first, cpu0 = now, cpu_seconds(worker.pid)
                        helpers = children(worker.pid)
                        hcpu0 = helpers_cpu(helpers)
                    last = now
                    seen += len(recs)
        cpu = cpu_seconds(worker.pid) - cpu0
        every = cpu + helpers_cpu(helpers) - hcpu0
        return (seen / (last - first), seen / cpu if cpu > 0 else float("nan"),
                seen / every if every > 0 else float("nan"))
    finally:
        await out.stop()
        stop(worker)


async def main(base_rev: str, rounds: int, new_env: dict[str, str] | None = None) -> None:
    base = worktree(base_rev)
    try:
        async with published("ab", N) as bench:
            await compare(base_rev, base, bench.settings, len(bench.items), rounds, new_env)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], capture_output=True)


async def compare(base_rev: str, base: Path, settings: Settings, total: int, rounds: int,
                  new_env: dict[str, str] | None = None) -> None:
    trees = {"base": base, "new": REPO}
    rates: dict[str, list[float]] = {"base": [], "new": []}
    per_cpu: dict[str, list[float]] = {"base": [], "new": []}
    per_all: dict[str, list[float]] = {"base": [], "new": []}
    print(f"A/B: base {base_rev} ({_head(base)}) against this tree ({_head(REPO)})"
          + "".join(f" with {k}={v}" for k, v in (new_env or {}).items())
          + f", {total} signals, {rounds} rounds", flush=True)
    # A first run of the whole session was faster than any later one (a fresh broker):
    # one warm-up run, not counted, so that every counted run meets a used broker.
    await run_once(REPO, settings, "ab-warmup", total, new_env)
    for r in range(rounds):
        order = ("base", "new") if r % 2 == 0 else ("new", "base")
        for name in order:
            rate, cpu_rate, all_rate = await run_once(trees[name], settings, f"ab-{name}-{r}", total,
                                                      new_env if name == "new" else None)
            rates[name].append(rate)
            per_cpu[name].append(cpu_rate)
            per_all[name].append(all_rate)
        load = os.getloadavg()[0]
        print(f"round {r + 1}: base {rates['base'][-1]:,.0f}/s ({per_cpu['base'][-1]:,.0f} per CPU-s, "
              f"{per_all['base'][-1]:,.0f} with helpers), new {rates['new'][-1]:,.0f}/s "
              f"({per_cpu['new'][-1]:,.0f} per CPU-s, {per_all['new'][-1]:,.0f} with helpers), "
              f"ratio {rates['new'][-1] / rates['base'][-1]:.3f}; load {load:.2f}", flush=True)
    b, n = statistics.median(rates["base"]), statistics.median(rates["new"])
    bc, nc = statistics.median(per_cpu["base"]), statistics.median(per_cpu["new"])
    ba, na = statistics.median(per_all["base"]), statistics.median(per_all["new"])
    print(f"median full-work rate: base {b:,.0f} signals/s, new {n:,.0f} signals/s")
    print(f"ratio new/base (medians): {n / b:.3f}   (per CPU-second of the worker: {nc / bc:.3f}; "
          f"of the worker and its check helpers: {na / ba:.3f})")
    from bench import emit

    emit("correlator_ab", {"base": base_rev, "base_rate": b, "new_rate": n, "ratio": n / b,
                           "ratio_per_cpu": nc / bc, "ratio_per_cpu_with_helpers": na / ba,
                           "rounds": rounds, "signals": total})


def _head(tree: Path) -> str:
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return rev.stdout.strip() + ("+changes" if dirty else "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the revision to compare against (default: main)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one run each, interleaved")
    parser.add_argument("--new-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for this tree's worker only (e.g. HELP_CORRELATOR_CHECK_PROCESSES=1 "
                             "with --base HEAD: one setting against another on the same code); repeatable")
    args = parser.parse_args()
    pairs = [a.partition("=") for a in args.new_env]
    if any(not sep or not name for name, sep, _ in pairs):
        parser.error("--new-env takes NAME=VALUE")
    asyncio.run(main(args.base, args.rounds, {name: value for name, _, value in pairs}))
