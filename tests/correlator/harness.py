"""Helpers for the correlator's integration tests: a worker subprocess, a publisher, a collector."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.core.types import Fund
from services.platform.settings import Settings
from services.platform.topics import DEADLETTER_TOPIC, SITUATIONS_TOPIC, receipt_topic

REPO = Path(__file__).resolve().parents[2]
OUTPUT_TOPICS = [SITUATIONS_TOPIC, DEADLETTER_TOPIC, *(receipt_topic(f) for f in Fund)]


def start_worker(settings: Settings, app_id: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "HELP_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
           "HELP_KEY_DIR": str(settings.key_dir), "HELP_VAR_DIR": str(settings.var_dir),
           "HELP_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms)}
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.platform.cli", "correlator", "--app-id", app_id, *extra],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc


def stop(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def publish(bootstrap: str, items: Iterable[tuple[str, bytes | None, bytes, int | None]],
                  ) -> list[tuple[str, int, int]]:
    """Publish (topic, key, value, partition or None); returns each record's position."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k, partition=p) for t, k, v, p in items]
        metas = await asyncio.gather(*futures)
        return [(m.topic, m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


@dataclass
class Collector:
    """Reads the correlator's output topics from their current end (no consumer group)."""

    bootstrap: str
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by receipt_id
    receipt_count: int = 0
    deadletters: dict[str, dict[str, Any]] = field(default_factory=dict)
    situations: list[dict[str, Any]] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                         fetch_max_wait_ms=50)
        await self.consumer.start()
        tps = []
        for topic in OUTPUT_TOPICS:
            parts = self.consumer.partitions_for_topic(topic)
            if parts is None:
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in parts]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end positions now, before anything is published
            await self.consumer.position(tp)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def poll(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
        for tp, records in batches.items():
            for r in records:
                if tp.topic == SITUATIONS_TOPIC:
                    if r.value is None:
                        self.tombstones.append(r.key.decode())
                    else:
                        self.situations.append(json.loads(r.value))
                elif tp.topic == DEADLETTER_TOPIC:
                    d = json.loads(r.value)
                    self.deadletters[d["deadletter_id"]] = d
                else:
                    d = json.loads(r.value)
                    self.receipt_count += 1
                    self.receipts[d["receipt_id"]] = d

    async def until(self, cond: Callable[[Collector], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {len(self.receipts)} receipts, "
                                     f"{len(self.deadletters)} dead letters, "
                                     f"{len(self.situations)} situation events")
            await self.poll()

    def receipt_for(self, topic: str, partition: int, offset: int) -> dict[str, Any] | None:
        for r in self.receipts.values():
            s = r["source"]
            if (s["topic"], s["partition"], s["offset"]) == (topic, partition, offset):
                return r
        return None

    def latest_situations(self) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for ev in self.situations:
            cur = latest.get(ev["situation_id"])
            if cur is None or ev["version"] > cur["version"]:
                latest[ev["situation_id"]] = ev
        for sid in self.tombstones:
            latest.pop(sid, None)
        return latest
