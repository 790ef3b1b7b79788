"""The pure Merkle module, checked against the RFC 9162 definitions and an independent
verifier (tests/ledger/rfc9162_verifier.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger import merkle
from tests.ledger.rfc9162_verifier import (
    rfc_leaf_hash,
    rfc_mth,
    verify_consistency_rfc,
    verify_inclusion_rfc,
)


def data(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(d) for d in data(n)]


def test_hashes_follow_rfc_domain_separation() -> None:
    import hashlib

    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert merkle.CompactRange().root() == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("n", [*range(0, 40), 63, 64, 65, 100, 127, 128, 129, 1000])
def test_root_matches_recursive_definition_for_every_small_size(n: int) -> None:
    assert merkle.root_of(leaves(n)) == rfc_mth(data(n))


def test_known_answer_rfc6962_test_vector() -> None:
    # The eight-leaf tree of the Certificate Transparency reference tests (RFC 6962 §2.1.3).
    inputs = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                          "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
    expected = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert merkle.root_of([merkle.leaf_hash(d) for d in inputs]).hex() == expected
    assert rfc_mth(inputs).hex() == expected


def test_compact_range_roundtrips_through_bytes() -> None:
    acc = merkle.CompactRange()
    for i, leaf in enumerate(leaves(77)):
        acc.append(leaf)
        again = merkle.CompactRange.from_bytes(acc.size, acc.to_bytes())
        assert again.root() == acc.root() == rfc_mth(data(i + 1))
    with pytest.raises(ValueError):
        merkle.CompactRange.from_bytes(5, b"x" * 32)


def test_every_inclusion_proof_of_small_trees_verifies_both_ways() -> None:
    for n in range(1, 70):
        hs = leaves(n)
        root = rfc_mth(data(n))
        for m in range(n):
            path = merkle.inclusion_proof(m, hs)
            assert verify_inclusion_rfc(rfc_leaf_hash(data(n)[m]), m, n, path, root), (m, n)
            assert merkle.verify_inclusion(hs[m], m, n, path, root)
            # and a wrong index or leaf is refused by both
            if n > 1:
                other = (m + 1) % n
                assert not verify_inclusion_rfc(hs[other], m, n, path, root)
                assert not merkle.verify_inclusion(hs[m], other, n, path, root) or hs[m] == hs[other]


def test_every_consistency_proof_of_small_trees_verifies_both_ways() -> None:
    for n in range(1, 70):
        hs = leaves(n)
        second = rfc_mth(data(n))
        for m in range(1, n):
            proof = merkle.consistency_proof(m, hs)
            first = rfc_mth(data(m))
            assert verify_consistency_rfc(m, n, first, second, proof), (m, n)
            assert merkle.verify_consistency(m, n, first, second, proof)
            assert not verify_consistency_rfc(m, n, merkle.leaf_hash(b"forged"), second, proof)
            assert not merkle.verify_consistency(m, n, first, merkle.leaf_hash(b"x"), proof)


def test_trivial_consistency_cases() -> None:
    hs = leaves(9)
    root = merkle.root_of(hs)
    assert merkle.consistency_proof(9, hs) == []
    assert merkle.verify_consistency(9, 9, root, root, [])
    assert merkle.verify_consistency(0, 9, merkle.EMPTY_ROOT, root, [])
    assert not merkle.verify_consistency(9, 9, root, merkle.EMPTY_ROOT, [])
    assert not merkle.verify_consistency(5, 9, merkle.root_of(hs[:5]), root, [])
    with pytest.raises(ValueError):
        merkle.inclusion_proof(9, hs)


def test_random_large_non_power_of_two_sizes() -> None:
    rng = random.Random(9162)
    hs = leaves(5000)
    acc = merkle.CompactRange()
    roots: dict[int, bytes] = {}
    for i, h in enumerate(hs, 1):
        acc.append(h)
        roots[i] = acc.root() if i % 97 == 0 or i in (4095, 4096, 4097, 5000) else b""
    for _ in range(60):
        n = rng.choice([rng.randrange(2, 5001), 4095, 4097, 5000])
        if not roots.get(n):
            roots[n] = merkle.root_of(hs[:n])
        m = rng.randrange(0, n)
        path = merkle.inclusion_proof(m, hs, n)
        assert verify_inclusion_rfc(hs[m], m, n, path, roots[n])
        first = rng.randrange(1, n)
        proof = merkle.consistency_proof(first, hs, n)
        assert verify_consistency_rfc(first, n, merkle.root_of(hs[:first]), roots[n], proof)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.data())
def test_property_proofs_verify_with_the_independent_verifier(n: int, draw: st.DataObject) -> None:
    hs = leaves(n)
    root = merkle.root_of(hs)
    m = draw.draw(st.integers(min_value=0, max_value=n - 1))
    assert verify_inclusion_rfc(hs[m], m, n, merkle.inclusion_proof(m, hs), root)
    if n > 1:
        first = draw.draw(st.integers(min_value=1, max_value=n - 1))
        proof = merkle.consistency_proof(first, hs)
        assert verify_consistency_rfc(first, n, merkle.root_of(hs[:first]), root, proof)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=120, unique=True), st.data())
def test_property_tampered_proofs_are_refused(items: list[bytes], draw: st.DataObject) -> None:
    hs = [merkle.leaf_hash(d) for d in items]
    n = len(hs)
    root = merkle.root_of(hs)
    assert root == rfc_mth(items)
    m = draw.draw(st.integers(min_value=0, max_value=n - 1))
    path = merkle.inclusion_proof(m, hs)
    if path:
        k = draw.draw(st.integers(min_value=0, max_value=len(path) - 1))
        bad = [*path[:k], merkle.leaf_hash(b"evil" + path[k]), *path[k + 1:]]
        assert not verify_inclusion_rfc(hs[m], m, n, bad, root)
        assert not merkle.verify_inclusion(hs[m], m, n, bad, root)
        assert not merkle.verify_inclusion(hs[m], m, n, path[:-1], root)
