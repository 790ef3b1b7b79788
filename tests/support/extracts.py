"""Helpers for the producer tests: synthetic NIRs, extract files, reading a topic back with
a client of its own (confluent-kafka's consumer, librdkafka: not the aiokafka consumers the
services read with; the producer sends through librdkafka too, but never reads)."""

from __future__ import annotations

import random
import re
from pathlib import Path

from stdnum.fr import nir as stdnum_nir

# Any 15 characters that look like a NIR (Corsica included), anywhere in a byte string.
NIR_SHAPE = re.compile(rb"(?=([1-8][0-9]{4}(?:[0-9]{2}|2A|2B)[0-9]{8}))")


def make_nir(rng: random.Random, dept: str | None = None) -> str:
    dept = dept or rng.choice(("35", "61", "51", "2A", "2B", "75"))
    body = (f"{rng.choice('12')}{rng.randint(40, 99):02d}{rng.randint(1, 12):02d}"
            f"{dept}{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}")
    numeric = body.replace("2A", "19").replace("2B", "18")
    return f"{body}{97 - int(numeric) % 97:02d}"


def wrong_key(nir: str) -> str:
    key = int(nir[13:])
    return nir[:13] + f"{(key % 97) + 1:02d}"


# A lowercase hex run this long is a digest or a random id (signal ids are 32), not text.
HEX_TOKEN = re.compile(rb"[0-9a-f]{32,}")


def nirs_in(data: bytes) -> list[str]:
    """Every valid NIR (key checked) hidden in ``data``, except digit runs inside a long hex
    token: 15 of a random id's 32 hex digits are decimal and pass the key check about once in
    15,000 ids, which made the scan fail at random on sealed signals, never on a NIR."""
    hex_spans = [m.span() for m in HEX_TOKEN.finditer(data)]
    found = []
    for m in NIR_SHAPE.finditer(data):
        candidate = m.group(1).decode()
        start, end = m.start(1), m.end(1)
        if any(a <= start and end <= b for a, b in hex_spans):
            continue
        if stdnum_nir.is_valid(candidate):
            found.append(candidate)
    return found


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of ``topic``, from the beginning to the current end."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{random.random()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        # The embedded broker reports as high watermark the base offset of the last batch
        # + 1 (a floor of the true end): read past it until the topic stays quiet.
        remaining = {p for p in parts if ends[p] > 0}
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if not remaining and time.monotonic() - quiet_since > 1.0:
                    break
                continue
            quiet_since = time.monotonic()
            if msg.error():
                raise AssertionError(f"consumer error: {msg.error()}")
            out.append((msg.key() or b"", msg.value() or b""))
            if msg.offset() + 1 >= ends[msg.partition()]:
                remaining.discard(msg.partition())
        assert not remaining, f"could not read {topic} to its end"
        return out
    finally:
        consumer.close()


def write_csv(path: Path, rows: list[str], *, bom: bool = True,
              header: str = "nir;categorie;date_observation;departement;reference_dossier") -> Path:
    data = ("\r\n".join([header, *rows]) + "\r\n").encode()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path
