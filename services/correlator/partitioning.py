"""Kafka's default partitioner, as producers key the signal topics (by pseudonym value)."""

from __future__ import annotations

import struct

_M2 = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``), four bytes at a time: equal to aiokafka's, faster."""
    length = len(data)
    h = 0x9747B28C ^ length
    for k in struct.unpack_from(f"<{length // 4}I", data):
        k = (k * _M2) & _MASK
        k = ((k ^ (k >> 24)) * _M2) & _MASK
        h = ((h * _M2) & _MASK) ^ k
    extra, tail = length & 3, length & ~3
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * _M2) & _MASK
    h = ((h ^ (h >> 13)) * _M2) & _MASK
    return h ^ (h >> 15)


def partition_for(pseudonym_value: str, partitions: int) -> int:
    """Kafka's default (murmur2) partitioner on the pseudonym value, as producers key."""
    return (murmur2(pseudonym_value.encode()) & 0x7FFFFFFF) % partitions
