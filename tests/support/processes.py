"""Running things as processes for the tests (first written for the reliability and security
suite, issue 8): dedicated embedded brokers
(optionally advertising another address, for the fault proxy), the CLI as a subprocess,
reading topics back, and the simulated month through the real pipeline.

Every test here starts its *own* broker rather than the session one: kills, losses and
fuzzing must not disturb, or be disturbed by, other tests' topics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.platform.broker import broker_binary, kafka_answers
from services.platform.kafka import apply_topics
from services.platform.settings import Settings, load_settings
from services.platform.topics import load_topic_specs
from tests.suite_summary import count
from tests.support.local import REPO, free_port


@dataclass
class Broker:
    """A Tansu process listening on ``port``, advertising ``advertised`` (host:port)."""

    proc: subprocess.Popen[bytes]
    port: int
    advertised: str
    log: Path

    @property
    def listener(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            count("kills")
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_broker(log_dir: Path, *, port: int | None = None, advertised: str | None = None,
                 apply: bool = True) -> Broker:
    """Start a dedicated embedded broker (memory storage). ``advertised``: the address clients
    are told to reconnect to (the fault proxy); topics are applied through it unless ``apply``
    is False (then the caller applies them once the proxy runs)."""
    port = port or free_port()
    advertised = advertised or f"127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"broker-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://{advertised}", "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not kafka_answers("127.0.0.1", port, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the embedded broker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    count("runs")
    broker = Broker(proc, port, advertised, log)
    if apply:
        apply_all_topics(broker.advertised)
    return broker


def run_sync(coro_fn: Any, *args: Any) -> Any:
    """``asyncio.run(coro_fn(*args))``, also from inside a running loop (in a thread then)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn(*args))
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn(*args))).result()


def apply_all_topics(bootstrap: str) -> None:
    settings = load_settings(bootstrap_servers=bootstrap)
    run_sync(apply_topics, settings, bootstrap, load_topic_specs(settings.schemas_dir / "asyncapi.yaml"))


@contextlib.contextmanager
def broker(log_dir: Path, **kw: Any) -> Iterator[Broker]:
    b = start_broker(log_dir, **kw)
    try:
        yield b
    finally:
        b.stop()


def settings_for(root: Path, bootstrap: str, **extra: Any) -> Settings:
    """Settings under ``root`` with the defaults' sealed signals: unless ``signal_keys_url``
    is given, a key endpoint over ``root``'s database, served until the tests end."""
    from tests.support.signalkeys import serve_keys

    root.mkdir(parents=True, exist_ok=True)
    settings = load_settings(bootstrap_servers=bootstrap, var_dir=root, key_dir=root / "keys",
                             database_url=f"sqlite:///{root / 'casebook.db'}",
                             session_timeout_ms=extra.pop("session_timeout_ms", 6000), **extra)
    return settings if "signal_keys_url" in extra else serve_keys(settings)


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELP_")}
    if settings.bootstrap_servers:
        env["HELP_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    env.update({
        "HELP_VAR_DIR": str(settings.var_dir),
        "HELP_KEY_DIR": str(settings.key_dir),
        "HELP_DATABASE_URL": settings.database_url,
        "HELP_TERRITORY": settings.territory,
        "HELP_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "HELP_REQUEST_TIMEOUT_MS": str(settings.request_timeout_ms),
        "HELP_SIGNAL_SEALING": settings.signal_sealing,
        "HELP_SIGNAL_KEYS_URL": settings.signal_keys_url,
    })
    return env


def run_cli(settings: Settings, *args: str, timeout: float = 300, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "services.app.cli", *args], env=cli_env(settings),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO)
    count("runs")
    if check and done.returncode != 0:
        raise AssertionError(f"help-exchange {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


def start_service(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``help-exchange <args>`` in the background, in its own process group."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.app.cli", *args], env=cli_env(settings),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True)
    count("runs")
    return proc


def kill9(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL the process (only it: it was started by this test); True if it was alive."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    count("kills")
    return True


def terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def read_topics(bootstrap: str, topics: list[str], timeout: float = 30.0) -> list[Rec]:
    """Every record of ``topics`` from the beginning to their current end (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    out: list[Rec] = []
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        positions = {tp: -1 for tp in tps}
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topics} to their end in {timeout} s")
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append(Rec(tp.topic, tp.partition, m.offset, m.key, m.value))
                    positions[tp] = m.offset
            for tp in list(todo):
                if positions[tp] + 1 >= ends[tp] or await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return out


def all_topic_names(bootstrap: str) -> list[str]:
    async def names() -> list[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            return sorted(await consumer.topics())
        finally:
            await consumer.stop()

    return run_sync(names)  # type: ignore[no-any-return]


def json_values(records: list[Rec]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if r.value is not None]
