"""RFC 9162 (Certificate Transparency 2.0) Merkle trees, pure and fast.

Everything here works on *leaf hashes* (``leaf_hash(data)``), which the store keeps per
entry, so no entry is ever re-read to build a proof. Definitions (RFC 9162 §2.1.1)::

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   k = largest power of 2 < n

so a tree of any size ``n`` (not only powers of two) has a well-defined root.

* :class:`CompactRange` appends leaf hashes and gives the root of everything appended so
  far in O(log n) memory: a stack holding the root of one perfect subtree per set bit of
  ``n`` (largest first). Appending is one node hash amortised; this is what makes a full
  recompute of a million entries take seconds.
* :func:`inclusion_proof` is PATH(m, D[n]) (§2.1.3.1) and :func:`consistency_proof` is
  PROOF(m, D[n]) (§2.1.4.1), each computed from the list of leaf hashes in O(n).
* :func:`verify_inclusion` and :func:`verify_consistency` are the iterative verification
  algorithms of §2.1.3.2 and §2.1.4.2. (The tests check proofs with a second verifier
  written separately from the RFC text, so the two are not the same code.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """HASH(0x00 || data): the hash of one leaf."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right): the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The roots of the perfect subtrees that make up a tree of ``size`` leaves.

    ``hashes[i]`` is the root of a subtree of ``2**h`` leaves, one per set bit ``h`` of
    ``size``, from the highest bit (leftmost subtree) to the lowest. The whole state fits in
    ``32 * popcount(size)`` bytes, so it can be saved and resumed (:meth:`to_bytes`).
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of size {size} holds {size.bit_count()} hashes")
        self.size = size
        self._hashes = list(hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash at the right end."""
        hashes = self._hashes
        hashes.append(leaf)
        n = self.size
        while n & 1:  # merge equal-sized subtrees, as binary addition carries
            right = hashes.pop()
            hashes[-1] = _sha256(b"\x01" + hashes[-1] + right).digest()
            n >>= 1
        self.size += 1

    def append_noting(self, leaf: bytes, nodes: list[tuple[int, int, bytes]]) -> None:
        """:meth:`append`, noting in ``nodes`` each subtree root it completes at a height
        multiple of 8, as ``(tile level, index at that level, hash)``: the hashes of the
        tiles above level 0 (C2SP tlog-tiles), kept as the tree grows."""
        hashes = self._hashes
        hashes.append(leaf)
        n = self.size
        height = 0
        while n & 1:
            right = hashes.pop()
            hashes[-1] = _sha256(b"\x01" + hashes[-1] + right).digest()
            n >>= 1
            height += 1
            if not height & 7:
                nodes.append((height >> 3, ((self.size + 1) >> height) - 1, hashes[-1]))
        self.size += 1

    def extend_noting(self, leaves: Sequence[bytes], nodes: list[tuple[int, int, bytes]]) -> None:
        """:meth:`append_noting` of each of ``leaves`` in turn — the same compact range and
        the same tile hashes noted in the same order — computed a level at a time: the new
        nodes of each height are hashed in one pass over the previous height's, with no
        Python call per leaf (the append path's fast path; a property test holds it equal
        to the reference, one :meth:`append_noting` per leaf)."""
        if not leaves:
            return
        sha = _sha256
        old, new = self.size, self.size + len(leaves)
        # The old range's subtree roots by height: one per set bit of ``old``, highest first.
        left = dict(zip([h for h in range(old.bit_length() - 1, -1, -1) if old >> h & 1],
                        self._hashes, strict=True))
        kept: list[bytes] = []  # the new range's roots, lowest height first
        noted: list[tuple[int, int, bytes]] = []
        # ``level`` holds the nodes of height ``h`` that the new leaves complete, the first
        # at index ``first`` of that height (old >> h): those whose subtree ends after ``old``.
        level: list[bytes] = list(leaves)
        first, h = old, 0
        while level or first:
            if first & 1:  # the first new node's left sibling: the old range's root there
                level.insert(0, left[h])
                first -= 1
            if len(level) & 1:  # the last one has no right sibling yet: a root of the range
                kept.append(level.pop())
            level = [sha(b"\x01" + a + b).digest() for a, b in zip(level[::2], level[1::2], strict=True)]
            h += 1
            first >>= 1
            if not h & 7:
                noted.extend((h >> 3, first + i, node) for i, node in enumerate(level))
        # append_noting notes nodes as they complete: by their last leaf, then lowest first.
        noted.sort(key=lambda node: ((node[1] + 1) << (node[0] << 3), node[0]))
        nodes.extend(noted)
        kept.reverse()
        self._hashes = kept
        self.size = new

    def extend(self, leaves: Sequence[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        root = hashes[-1]
        for left in reversed(hashes[:-1]):
            root = _sha256(b"\x01" + left + root).digest()
        return root

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._hashes)

    def to_bytes(self) -> bytes:
        return b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        if len(data) != HASH_SIZE * size.bit_count():
            raise ValueError("compact range bytes do not match its size")
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])


def root_of(leaves: Sequence[bytes], start: int = 0, end: int | None = None) -> bytes:
    """MTH(D[start:end]) for leaf hashes ``leaves`` (any size)."""
    end = len(leaves) if end is None else end
    acc = CompactRange()
    append = acc.append
    for i in range(start, end):
        append(leaves[i])
    return acc.root()


def inclusion_proof(index: int, leaves: Sequence[bytes], size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]): the audit path of leaf ``index`` in the tree of the first
    ``size`` leaf hashes (default: all of them), leaf-side sibling first."""
    n = len(leaves) if size is None else size
    if not 0 <= index < n <= len(leaves):
        raise ValueError(f"no leaf {index} in a tree of size {n}")
    path: list[bytes] = []
    lo, hi, m = 0, n, index  # the recursion of §2.1.3.1, unrolled from the top
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(root_of(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(root_of(leaves, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()  # the recursion appends on the way back up: nearest sibling first
    return path


def consistency_proof(first: int, leaves: Sequence[bytes], second: int | None = None) -> list[bytes]:
    """PROOF(first, D[second]) (§2.1.4.1): proves the tree of the first ``first`` leaves is
    a prefix of the tree of ``second``. Empty when ``first`` is 0 or equals ``second``."""
    n = len(leaves) if second is None else second
    if not 0 <= first <= n <= len(leaves):
        raise ValueError(f"no consistency proof from size {first} to size {n}")
    if first in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, n, first, True  # SUBPROOF(m, D[lo:hi], whole), unrolled
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(root_of(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(root_of(leaves, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        proof.append(root_of(leaves, lo, hi))
    proof.reverse()
    return proof


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` prove leaf hash ``leaf`` at ``index`` under ``root``?"""
    if index >= size or index < 0:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree of size ``first`` with root
    ``first_root`` is a prefix of the tree of size ``second`` with root ``second_root``?

    Sizes ``0`` and ``first == second`` (outside the RFC's algorithm) take an empty proof."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: its root is a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root
