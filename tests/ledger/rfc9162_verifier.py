"""An independent RFC 9162 verifier, written from the RFC text for the tests.

It deliberately imports nothing from ``services.ledger``: the proofs the project produces
are checked here by a second implementation, so a shared mistake cannot hide. Each
function follows the numbered steps of the RFC section it names, with the RFC's variable
names (fn, sn, r, fr, sr).
"""

from __future__ import annotations

import hashlib


def HASH(data: bytes) -> bytes:  # the RFC's name
    return hashlib.sha256(data).digest()


def rfc_leaf_hash(entry: bytes) -> bytes:
    """§2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return HASH(b"\x00" + entry)


def rfc_mth(entries: list[bytes]) -> bytes:
    """§2.1.1, the recursive definition, over the leaf *data* (slow, obviously right)."""
    n = len(entries)
    if n == 0:
        return HASH(b"")
    if n == 1:
        return HASH(b"\x00" + entries[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return HASH(b"\x01" + rfc_mth(entries[:k]) + rfc_mth(entries[k:]))


def _lsb(x: int) -> int:
    return x & 1


def verify_inclusion_rfc(hash_: bytes, leaf_index: int, tree_size: int,
                         inclusion_path: list[bytes], root_hash: bytes) -> bool:
    """§2.1.3.2 Verifying an Inclusion Proof."""
    # 1. If leaf_index is greater than or equal to tree_size, fail.
    if leaf_index >= tree_size:
        return False
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn = leaf_index
    sn = tree_size - 1
    # 3. Set r to hash.
    r = hash_
    # 4. For each value p in the inclusion_path array:
    for p in inclusion_path:
        # a. If sn is 0, stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if _lsb(fn) == 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = HASH(b"\x01" + p + r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            if _lsb(fn) == 0:
                while not (_lsb(fn) == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        # Otherwise: i. Set r to HASH(0x01 || r || p).
        else:
            r = HASH(b"\x01" + r + p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash.
    return sn == 0 and r == root_hash


def verify_consistency_rfc(first: int, second: int, first_hash: bytes, second_hash: bytes,
                           consistency_path: list[bytes]) -> bool:
    """§2.1.4.2 Verifying Consistency between Two Tree Heads (0 < first < second)."""
    if not 0 < first < second:
        raise ValueError("the RFC algorithm is for 0 < first < second")
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not consistency_path:
        return False
    path = list(consistency_path)
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    # 3. Set fn to first - 1 and sn to second - 1.
    fn = first - 1
    sn = second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    if _lsb(fn) == 1:
        while _lsb(fn) == 1:
            fn >>= 1
            sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if _lsb(fn) == 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr).  ii. Set sr to HASH(0x01 || c || sr).
            fr = HASH(b"\x01" + c + fr)
            sr = HASH(b"\x01" + c + sr)
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #      either LSB(fn) is set or fn is 0.
            if _lsb(fn) == 0:
                while not (_lsb(fn) == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        # Otherwise: i. Set sr to HASH(0x01 || sr || c).
        else:
            sr = HASH(b"\x01" + sr + c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify fr == first_hash, sr == second_hash and sn == 0.
    return fr == first_hash and sr == second_hash and sn == 0
