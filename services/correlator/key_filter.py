"""Which keys a store may hold: a Bloom filter, so that a key it never held costs no lookup.

Most signals of a national month come from persons the exchange meets for the first time,
and the engine asks the person store for two keys each (the person's state, then an
objection marker, which almost nobody has). Without this filter each of those questions is a
point read in the store's SQLite file, whose index no longer fits its page cache past a few
hundred thousand persons: the answer "absent" costs more the more persons are held.

A Bloom filter answers "surely absent" or "maybe present" from a few bits per key: it never
says absent for a key added to it (no false negative), and says maybe present for a key
never added with a small probability (a lookup then answers). Bits are never cleared (a
deleted key stays "maybe"); the owner rebuilds the filter from the keys it holds when it has
taken more keys than it was sized for (:meth:`KeyFilter.full`).

The filter lives in the worker's memory only: positions come from Python's ``hash`` of the
key, which is salted per process (``PYTHONHASHSEED``) and so must never be stored.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Bits per key the filter is sized for, and the number of bits a key sets: a key never
#: added is taken for a present one about 0.2 % of the time while the filter holds at most
#: its capacity (Bloom's estimate (1 - e^(-k/b))^k for k = 5, b = 16).
BITS_PER_KEY = 16
HASHES = 5

#: The smallest filter: 2 MiB of bits, a million keys.
MIN_CAPACITY = 1 << 20


class KeyFilter:
    """A Bloom filter over byte strings, for ``capacity`` keys."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        bits = 1
        while bits < max(capacity, MIN_CAPACITY) * BITS_PER_KEY:
            bits <<= 1
        self.capacity = bits // BITS_PER_KEY
        self._mask = bits - 1
        self._bits = bytearray(bits >> 3)
        #: keys added that were not already taken for present (about the distinct keys)
        self.count = 0

    def may_hold(self, key: bytes) -> bool:
        """False only if ``key`` was never added."""
        # Double hashing (Kirsch and Mitzenmacher): k positions from two 32-bit halves of
        # the key's hash, each looked at in turn (most absent keys fail at the first).
        h = hash(key)
        step = ((h >> 32) & 0xFFFF_FFFF) | 1
        mask, bits = self._mask, self._bits
        for _ in range(HASHES):
            p = h & mask
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
            h += step
        return True

    def add(self, key: bytes) -> None:
        h = hash(key)
        step = ((h >> 32) & 0xFFFF_FFFF) | 1
        mask, bits = self._mask, self._bits
        new = False
        for _ in range(HASHES):
            p = h & mask
            byte, bit = p >> 3, 1 << (p & 7)
            if not bits[byte] & bit:
                bits[byte] |= bit
                new = True
            h += step
        if new:
            self.count += 1

    def update(self, keys: Iterable[bytes]) -> None:
        add = self.add
        for key in keys:
            add(key)

    def full(self) -> bool:
        """It holds more keys than it was sized for: rebuild it larger from the keys held."""
        return self.count > self.capacity
