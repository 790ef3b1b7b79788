"""Reading a fund's receipts (``help.receipts.<fund>.v1``), written by the correlator.

Read without a consumer group (every partition assigned, from the beginning): the command
is a view, it commits nothing, and needs no group join (which the embedded broker makes
slow). Without ``follow`` it stops at the end offsets it saw when it started.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.core.messages import Receipt, parse
from services.core.types import Fund
from services.errors import BrokerUnreachable
from services.platform.kafka import consumer
from services.platform.settings import Settings
from services.platform.topics import receipt_topic
from services.producer.sdk import read_to_end


async def _follow(cons: AIOKafkaConsumer, stop: asyncio.Event | None) -> AsyncIterator[list[Any]]:
    while stop is None or not stop.is_set():
        batch = await cons.getmany(timeout_ms=500)
        records = [rec for recs in batch.values() for rec in recs]
        if records:
            yield records


@dataclass
class ReceiptCounts:
    accepted: int = 0
    rejected: int = 0
    unreadable: int = 0
    reasons: Counter[str] | None = None


async def read_receipts(settings: Settings, bootstrap: str, fund: Fund,
                        on_receipt: Callable[[Receipt | None, bytes], None], *, follow: bool = False,
                        stop: asyncio.Event | None = None) -> ReceiptCounts:
    """Call ``on_receipt`` for every receipt of ``fund`` (None for an unreadable message)."""
    topic = receipt_topic(fund)
    counts = ReceiptCounts(reasons=Counter())
    cons = consumer(settings, bootstrap, group_id=None)
    try:
        await cons.start()
        parts = cons.partitions_for_topic(topic)
        if not parts:
            await cons.force_metadata_update()
            parts = cons.partitions_for_topic(topic) or set()
        if not parts:
            return counts
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await cons.end_offsets(tps)
        source = _follow(cons, stop) if follow else read_to_end(cons, ends)
        async for records in source:
            for rec in records:
                raw = rec.value or b""
                try:
                    receipt: Receipt | None = parse(Receipt, raw)
                except ValidationError:
                    receipt = None
                if receipt is None:
                    counts.unreadable += 1
                elif receipt.status == "accepte":
                    counts.accepted += 1
                else:
                    counts.rejected += 1
                    assert counts.reasons is not None
                    counts.reasons[receipt.reason.value if receipt.reason else "?"] += 1
                on_receipt(receipt, raw)
    except KafkaError as exc:
        raise BrokerUnreachable(f"cannot read {topic}: {exc!r}", "check the broker and try again") from exc
    finally:
        await cons.stop()
    return counts
