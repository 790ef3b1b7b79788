"""Kafka's default partitioner, as producers key the signal topics (by pseudonym value).

Shared by the producers, which key and place each signal, and the correlator, which checks
that a signal sits in its person's partition."""

from __future__ import annotations

from murmurhash2 import murmurhash2 as _murmurhash2

#: Kafka's seed (``Utils.murmur2``), which is MurmurHash2 32-bit, little-endian.
_KAFKA_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``), unsigned: equal to aiokafka's (the tests hold them
    together), from the ``murmurhash2`` package (Rust, far faster than Python's): it runs
    for every signal checked and every record the worker sends."""
    return _murmurhash2(data if type(data) is bytes else bytes(data), _KAFKA_SEED)


def partition_for(pseudonym_value: str, partitions: int) -> int:
    """Kafka's default (murmur2) partitioner on the pseudonym value, as producers key."""
    return (_murmurhash2(pseudonym_value.encode(), _KAFKA_SEED) & 0x7FFFFFFF) % partitions
