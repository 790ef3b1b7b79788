"""The append path's fast paths, each held equal to its reference: the rows an append
writes (:func:`append_rows` against :func:`append_rows_reference`), the tree grown a level
at a time (:meth:`CompactRange.extend_noting` against one ``append_noting`` per leaf) and
the BLAKE2b digests of the indexes (against the formulas the tables document)."""

from __future__ import annotations

import datetime as dt
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.messages import Pseudonym
from services.core.types import Fund
from services.ledger.entries import (
    Action,
    LedgerEntry,
    LedgerLegalBasis,
    LedgerPurpose,
    canonical_bytes,
    entry_id_for,
    new_entry,
)
from services.ledger.merkle import CompactRange, leaf_hash
from services.ledger.store import (
    AppendRows,
    append_rows,
    append_rows_reference,
    key64,
    lookup_key,
)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_pseudonyms = st.builds(Pseudonym, key_id=st.sampled_from(["xk-2026-1", "xk-20261101-0a1b"]),
                        value=st.text(_B64, min_size=43, max_size=43))
_hex = st.text("0123456789abcdef", min_size=32, max_size=32)


@st.composite
def _entry(draw: st.DrawFn, n: int) -> LedgerEntry:
    """Entry ``n`` of a batch: with a subject, a person behind a commitment, or neither;
    any case, actor, action, time."""
    who = draw(st.sampled_from(["subject", "person", "nobody"]))
    fields: dict[str, object] = {
        "action": draw(st.sampled_from(Action)),
        "actor": draw(st.sampled_from(["correlator", "caf", "caf-35", "agent.caf-35.0042",
                                       "casebook", "urssaf-idf"])),
        "purpose": draw(st.sampled_from(LedgerPurpose)),
        "legal_basis": draw(st.sampled_from(LedgerLegalBasis)),
        "time": draw(st.datetimes(min_value=dt.datetime(2000, 1, 1),
                                  max_value=dt.datetime(2099, 1, 1),
                                  timezones=st.just(dt.UTC))),
        "entry_id": entry_id_for("rows", str(n)),
        "case_id": draw(st.none() | _hex),
        "trace_id": draw(st.none() | _hex),
    }
    if who == "subject":
        fields["subject"] = draw(_pseudonyms)
    elif who == "person":
        fields["person"] = draw(_pseudonyms)
        fields["fund"] = draw(st.sampled_from(Fund))
    return new_entry(**fields)  # type: ignore[arg-type]


@st.composite
def _batches(draw: st.DrawFn) -> list[LedgerEntry]:
    return [draw(_entry(n)) for n in range(draw(st.integers(0, 40)))]


def _tree(size: int) -> CompactRange:
    acc = CompactRange()
    acc.extend([hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size)])
    return acc


@settings(max_examples=150, deadline=None)
@given(batch=_batches(), start=st.integers(0, 3000), every=st.sampled_from([0, 1, 2, 3, 7, 1000]),
       chain=st.binary(min_size=32, max_size=32))
def test_property_append_rows_are_the_references(batch: list[LedgerEntry], start: int,
                                                 every: int, chain: bytes) -> None:
    datas = [canonical_bytes(entry) for entry in batch]
    id_keys = {entry.entry_id: key64(entry.entry_id) for entry in batch}
    tree = _tree(start)
    fast_tree, reference_tree = tree.copy(), tree.copy()
    fast = append_rows(batch, datas, id_keys, start, chain, fast_tree, every)
    reference = append_rows_reference(batch, datas, id_keys, start, chain, reference_tree, every)
    assert fast == reference
    assert (fast_tree.size, fast_tree.to_bytes()) == (reference_tree.size,
                                                      reference_tree.to_bytes())


def test_append_rows_over_a_checkpoint_and_a_level_one_tile() -> None:
    """A batch that crosses a multiple of 256 and of ``every``: the node of the completed
    tile and the checkpoint are where the reference puts them."""
    batch = [new_entry(action=Action.SITUATION_OUVERTE, actor="correlator",
                       purpose=LedgerPurpose.ACCES_AUX_DROITS, legal_basis=LedgerLegalBasis.L115_2_1,
                       time=dt.datetime(2026, 11, 2, tzinfo=dt.UTC), natural_key=(str(i),),
                       case_id=f"{i // 2:032x}")
             for i in range(600)]
    datas = [canonical_bytes(entry) for entry in batch]
    id_keys = {entry.entry_id: key64(entry.entry_id) for entry in batch}
    fast = append_rows(batch, datas, id_keys, 200, bytes(32), _tree(200), 250)
    reference = append_rows_reference(batch, datas, id_keys, 200, bytes(32), _tree(200), 250)
    assert fast == reference
    assert [level_idx[:2] for level_idx in fast.nodes] == [(1, 0), (1, 1), (1, 2)]
    assert [size for size, _ in fast.marks] == [250, 500, 750]
    assert fast.entries[0][10] == leaf_hash(datas[0])
    assert isinstance(fast, AppendRows) and len(fast.index) == 600 * 3 * 3


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 70_000), count=st.integers(0, 1200))
def test_property_extend_noting_is_append_noting_per_leaf(start: int, count: int) -> None:
    tree = _tree(start)
    leaves = [hashlib.sha256(b"new" + i.to_bytes(8, "big")).digest() for i in range(count)]
    one_by_one, level_wise = tree.copy(), tree.copy()
    noted_one: list[tuple[int, int, bytes]] = []
    noted_level: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        one_by_one.append_noting(leaf, noted_one)
    level_wise.extend_noting(leaves, noted_level)
    assert (level_wise.size, level_wise.to_bytes()) == (one_by_one.size, one_by_one.to_bytes())
    assert noted_level == noted_one


def test_extend_noting_across_a_level_two_tile() -> None:
    """65,536 leaves complete a node of tile level 2 (and 256 of level 1)."""
    tree = _tree(65_000)
    one_by_one, level_wise = tree.copy(), tree.copy()
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(65_000, 66_000)]
    noted_one: list[tuple[int, int, bytes]] = []
    noted_level: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        one_by_one.append_noting(leaf, noted_one)
    level_wise.extend_noting(leaves, noted_level)
    assert noted_level == noted_one and (2, 0) in {node[:2] for node in noted_level}
    assert level_wise.root() == one_by_one.root()


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80), kind=st.sampled_from("csax"))
def test_property_index_digests_are_the_documented_blake2b(text: str, kind: str) -> None:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    assert key64(text) == int.from_bytes(digest, "big", signed=True)
    full = int.from_bytes(hashlib.blake2b(kind.encode() + b"\x00" + text.encode(),
                                          digest_size=8).digest())
    kind_code = "csax".index(kind)
    assert lookup_key(kind, text) == ((kind_code << 7) | full >> 57,
                                      (full & 0xFFFFFFFF) - (1 << 31))
