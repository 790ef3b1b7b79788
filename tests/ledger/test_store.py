"""The SQL ledger, on SQLite and a real PostgreSQL: appends, idempotency, signed heads,
and proofs checked by the independent verifier and PyNaCl."""

from __future__ import annotations

import itertools
import random
import stat
from pathlib import Path

import pytest
import rfc8785
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from sqlalchemy import Engine, select

from services.core.signing import b64u_decode
from services.errors import InputError
from services.ledger import tables
from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, canonical_bytes
from services.ledger.heads import LedgerSigner, SignedHead, known_public_keys, public_key_document
from services.ledger.store import Ledger
from services.ledger.verify import verify_ledger
from tests.ledger.rfc9162_verifier import (
    rfc_leaf_hash,
    rfc_mth,
    verify_consistency_rfc,
    verify_inclusion_rfc,
)
from tests.support.entries import CASE, OTHER, PSEUDO, T0, make_entry


def nacl_verify(head: SignedHead, public_key_b64: str) -> bool:
    """Independent Ed25519 check (PyNaCl) over the RFC 8785 form of the head minus signature."""
    document = head.model_dump(mode="json")
    signature = b64u_decode(document.pop("signature")["value"])
    try:
        VerifyKey(b64u_decode(public_key_b64)).verify(rfc8785.dumps(document), signature)
    except BadSignatureError:
        return False
    return True


def test_append_assigns_indexes_and_root_matches_rfc(ledger: Ledger) -> None:
    entries = [make_entry(i) for i in range(11)]
    result = ledger.append(entries)
    assert (result.appended, result.already_present, result.tree_size) == (11, 0, 11)
    assert result.indexes == tuple(range(11))
    assert ledger.root() == rfc_mth([canonical_bytes(e) for e in entries])
    assert ledger.size() == ledger.count() == 11
    stored = ledger.entry(entries[4].entry_id)
    assert stored.index == 4 and stored.data == canonical_bytes(entries[4])
    assert stored.leaf_hash == rfc_leaf_hash(stored.data)


def test_append_is_idempotent_by_entry_id(ledger: Ledger) -> None:
    ledger.append([make_entry(i) for i in range(5)])
    again = ledger.append([make_entry(3), make_entry(5), make_entry(3)])
    assert (again.appended, again.already_present, again.tree_size) == (1, 2, 6)
    assert again.indexes == (3, 5, 3)
    root = ledger.root()
    assert ledger.append([make_entry(i) for i in range(6)]).appended == 0
    assert ledger.root() == root
    with pytest.raises(InputError, match="different content"):
        ledger.append([make_entry(2, actor="cpam")])
    with pytest.raises(InputError, match="different content"):
        ledger.append([make_entry(9), make_entry(9, actor="cpam")])
    assert ledger.size() == 6


def test_a_receipt_sent_again_later_keeps_its_first_time(ledger: Ledger) -> None:
    """A correlator restarted before its commit re-sends a receipt: same id and answer, a
    later processed_at. The receipts' actions keep the first; any other difference, or any
    other action, is still a conflict."""
    receipts = frozenset({Action.SIGNALEMENT_ACCEPTE, Action.SIGNALEMENT_REJETE})
    first = make_entry(0, action=Action.SIGNALEMENT_ACCEPTE)
    again = make_entry(0, action=Action.SIGNALEMENT_ACCEPTE, minutes=42)
    assert ledger.append([first]).appended == 1
    result = ledger.append([again, make_entry(1), again], first_time_wins=receipts)
    assert (result.appended, result.already_present) == (1, 2)
    assert ledger.entry(first.entry_id).data == canonical_bytes(first)
    both = ledger.append([make_entry(7, action=Action.SIGNALEMENT_REJETE),
                          make_entry(7, action=Action.SIGNALEMENT_REJETE, minutes=99)],
                         first_time_wins=receipts)
    assert (both.appended, both.already_present) == (1, 1)
    with pytest.raises(InputError, match="different content"):  # not only the time
        ledger.append([make_entry(0, action=Action.SIGNALEMENT_ACCEPTE, actor="cpam", minutes=42)],
                      first_time_wins=receipts)
    with pytest.raises(InputError, match="different content"):  # not a receipt's action
        ledger.append([make_entry(3, action=Action.SITUATION_OUVERTE),
                       make_entry(3, action=Action.SITUATION_OUVERTE, minutes=5)],
                      first_time_wins=receipts)
    with pytest.raises(InputError, match="different content"):  # without the option
        ledger.append([again])


def test_batches_and_single_appends_give_the_same_tree(ledger: Ledger, engine: Engine) -> None:
    entries = [make_entry(i) for i in range(50)]
    rng = random.Random(6)
    start = 0
    while start < 50:
        stop = min(50, start + rng.randint(1, 9))
        ledger.append(entries[start:stop])
        start = stop
    assert ledger.root() == rfc_mth([canonical_bytes(e) for e in entries])
    assert ledger.root(17) == rfc_mth([canonical_bytes(e) for e in entries[:17]])
    assert verify_ledger(engine, {}).ok


def test_append_joins_the_callers_transaction(ledger: Ledger, engine: Engine) -> None:
    ledger.append([make_entry(0)])
    with pytest.raises(RuntimeError), engine.begin() as conn:
        ledger.append([make_entry(1), make_entry(2)], connection=conn)
        raise RuntimeError("the casebook write failed")
    assert ledger.size() == 1
    with engine.begin() as conn:
        ledger.append([make_entry(1)], connection=conn)
    assert ledger.size() == 2 and verify_ledger(engine, {}).ok


def test_signed_heads_verify_with_pynacl(ledger: Ledger, signer: LedgerSigner) -> None:
    public = public_key_document(signer.public_key)["public_key"]
    empty = ledger.sign_head()
    assert empty.tree_size == 0 and nacl_verify(empty, public)
    result = ledger.append([make_entry(i) for i in range(7)], sign=True)
    head = result.head
    assert head is not None and head.tree_size == 7
    assert head.root == rfc_mth([canonical_bytes(make_entry(i)) for i in range(7)])
    assert nacl_verify(head, public)
    assert [h.tree_size for h in ledger.heads()] == [0, 7]
    assert ledger.heads()[-1] == head
    forged = head.model_copy(update={"tree_size": 8})
    assert not nacl_verify(forged, public)


def test_inclusion_and_consistency_proofs_verify_independently(ledger: Ledger) -> None:
    rng = random.Random(9162)
    entries = [make_entry(i) for i in range(93)]
    datas = [canonical_bytes(e) for e in entries]
    sizes = []
    start = 0
    while start < len(entries):
        stop = min(len(entries), start + rng.randint(1, 13))
        head = ledger.append(entries[start:stop], sign=True).head
        assert head is not None
        sizes.append(head.tree_size)
        start = stop
    heads = {h.tree_size: h for h in ledger.heads()}
    for size in sizes:  # every head, most of them not a power of two
        for _ in range(4):
            i = rng.randrange(size)
            stored, n, path = ledger.inclusion(entries[i].entry_id, size)
            assert (stored.index, n) == (i, size)
            assert verify_inclusion_rfc(rfc_leaf_hash(datas[i]), i, n, path, heads[size].root)
    for a, b in itertools.pairwise(sizes):
        first_root, second_root, proof = ledger.consistency(a, b)
        assert (first_root, second_root) == (heads[a].root, heads[b].root)
        assert verify_consistency_rfc(a, b, heads[a].root, heads[b].root, proof)
    first_root, second_root, proof = ledger.consistency(sizes[0], sizes[-1])
    assert verify_consistency_rfc(sizes[0], sizes[-1], first_root, second_root, proof)
    with pytest.raises(InputError):
        ledger.inclusion("0" * 32)


def test_query_filters(ledger: Ledger) -> None:
    ledger.append([make_entry(i) for i in range(12)])
    ledger.append([make_entry(12, minutes=60 * 24 * 40)])  # in December
    by_case = [i for i, _ in ledger.query(case_id=CASE)]
    assert by_case == [0, 3, 6, 9, 12]
    assert [i for i, _ in ledger.query(pseudonym=PSEUDO.value, case_id=CASE)] == [0, 6, 12]
    assert len(list(ledger.query(pseudonym=OTHER.value))) == 6
    assert [i for i, _ in ledger.query(action=Action.REFERENCE_REVELEE.value)] == [3, 9]
    assert [i for i, _ in ledger.query(actor="cpam-35")] == [3, 9]
    assert len(list(ledger.query(period=("2026-11", "2026-12")))) == 12
    assert [i for i, _ in ledger.query(period=("2026-12", "2027-01"))] == [12]


def test_record_builds_and_appends(ledger: Ledger) -> None:
    entry = ledger.record(action=Action.PURGE_CONSERVATION, actor="casebook",
                          purpose=LedgerPurpose.LIMITATION_CONSERVATION, legal_basis=LedgerLegalBasis.RGPD_6_1_C,
                          time=T0, natural_key=("2026-11",), count=42, sign=True)
    assert ledger.entry(entry.entry_id).index == 0
    assert ledger.record(action=Action.PURGE_CONSERVATION, actor="casebook",
                         purpose=LedgerPurpose.LIMITATION_CONSERVATION,
                         legal_basis=LedgerLegalBasis.RGPD_6_1_C, time=T0, natural_key=("2026-11",),
                         count=42) == entry
    assert ledger.size() == 1


def test_key_files_and_rotation(tmp_path: Path, engine: Engine) -> None:
    key_dir = tmp_path / "keys"
    signer = LedgerSigner.load(key_dir, create=True)
    private = key_dir / "ledger" / "signing.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (key_dir / "ledger" / f"{signer.key_id}.pub.json").exists()
    assert LedgerSigner.load(key_dir).key_id == signer.key_id
    ledger = Ledger(engine, signer)
    ledger.append([make_entry(i) for i in range(3)], sign=True)
    old, new = LedgerSigner.rotate(key_dir)
    assert old == signer.key_id and new.key_id != old
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    ledger = Ledger(engine, new)
    ledger.record(action=Action.ROTATION_CLE, actor="ledger", purpose=LedgerPurpose.SECURITE,
                  legal_basis=LedgerLegalBasis.RGPD_6_1_C, time=T0, natural_key=(old, new.key_id),
                  sign=True)
    keys = known_public_keys(key_dir)
    assert set(keys) == {old, new.key_id}
    report = verify_ledger(engine, keys)
    assert report.ok and report.heads_checked == 2, report.problems
    # without the old public key, the old head cannot be trusted
    assert not verify_ledger(engine, {new.key_id: keys[new.key_id]}).ok


def test_state_row_and_entries_agree_after_many_appends(ledger: Ledger, engine: Engine) -> None:
    for i in range(0, 40, 8):
        ledger.append([make_entry(j) for j in range(i, i + 8)])
    with engine.connect() as conn:
        size = conn.execute(select(tables.state.c.tree_size)).scalar_one()
    assert size == 40
    report = verify_ledger(engine, {}, deep=True)
    assert report.ok and report.tree_size == 40


def test_queries_stay_exact_when_all_values_of_a_kind_share_one_bucket_and_fingerprint(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """The auditor's index only narrows the search: the entry's own columns decide."""
    from services.ledger import store

    monkeypatch.setattr(store, "lookup_key", lambda kind, value: ("csax".index(kind), 0))
    # The append's fast path hashes inline; its reference goes through lookup_key (the two
    # are held equal in test_append_rows.py).
    monkeypatch.setattr(store, "append_rows", store.append_rows_reference)
    store._few_valued_key.cache_clear()
    try:
        ledger.append([make_entry(i) for i in range(12)])
        assert [i for i, _ in ledger.query(case_id=CASE)] == [0, 3, 6, 9]
        assert [i for i, _ in ledger.query(actor="cpam-35")] == [3, 9]
        assert [i for i, _ in ledger.query(pseudonym=OTHER.value)] == [1, 3, 5, 7, 9, 11]
        assert list(ledger.query(case_id="d" * 32)) == []
    finally:
        store._few_valued_key.cache_clear()


def test_an_earlier_ledger_is_brought_up_to_date(ledger: Ledger, engine: Engine) -> None:
    """A ledger written before the index moved into the append transaction: its deferred
    index table is dropped and the auditor's index rebuilt from the entries."""
    from sqlalchemy import delete, inspect, text

    from services.ledger.store import ensure_ready

    ledger.append([make_entry(i) for i in range(9)], sign=True)
    with engine.begin() as conn:
        conn.execute(delete(tables.lookup))
        conn.execute(text("CREATE TABLE ledger_lookup (lkey BIGINT, seq BIGINT)"))
    ensure_ready(engine)
    assert "ledger_lookup" not in inspect(engine).get_table_names()
    assert [i for i, _ in ledger.query(case_id=CASE)] == [0, 3, 6]
    report = verify_ledger(engine, {ledger.signer.key_id: ledger.signer.public_key}
                           if ledger.signer else {})
    assert report.ok, report.problems
