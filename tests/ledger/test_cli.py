"""The auditor's CLI, on SQLite and a real PostgreSQL: tampering in SQL is named by
`audit verify`; proofs are checked offline and by the independent verifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from click.testing import CliRunner, Result
from sqlalchemy import delete, insert, select, update

from services.core.signing import b64u_decode
from services.errors import InputError
from services.ledger import tables
from services.ledger.cli import register
from services.ledger.entries import canonical_bytes
from services.ledger.store import Ledger, chain_next
from services.platform.db import make_engine
from services.platform.settings import Settings, load_settings
from tests.ledger.rfc9162_verifier import (
    rfc_leaf_hash,
    rfc_mth,
    verify_consistency_rfc,
    verify_inclusion_rfc,
)
from tests.ledger.test_store import nacl_verify
from tests.support.cli import wired_group
from tests.support.entries import CASE, PSEUDO, make_entry

N = 20


#: Only the ledger's commands (with the collaborators the app wires).
group = wired_group(register)


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(group, ["audit", *args], obj={"settings": settings})


@pytest.fixture
def filled(ledger_settings: Settings) -> Settings:
    """A ledger of N entries with signed heads at sizes 5, 12 and 20."""
    ledger = Ledger.open(ledger_settings)
    entries = [make_entry(i) for i in range(N)]
    ledger.append(entries[:5], sign=True)
    ledger.append(entries[5:12], sign=True)
    ledger.append(entries[12:], sign=True)
    ledger.engine.dispose()
    return ledger_settings


def sql(settings: Settings, *statements: Any) -> None:
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)
    engine.dispose()


E = tables.entries


def test_verify_passes_on_an_untouched_ledger(filled: Settings) -> None:
    result = run(filled, "verify")
    assert result.exit_code == 0, result.output
    assert f"ok: {N} entries" in result.output and "3 signed heads verified" in result.output
    report = json.loads(run(filled, "verify", "--json", "--deep").output)
    assert report["ok"] and report["tree_size"] == N
    assert b64u_decode(report["root_hash"]) == rfc_mth([canonical_bytes(make_entry(i))
                                                        for i in range(N)])


def test_one_field_changed_is_named(filled: Settings) -> None:
    victim = make_entry(7)
    altered = canonical_bytes(victim).replace(b'"purpose":"acces_aux_droits"',
                                             b'"purpose":"prevention_perte_autonomie"')
    assert altered != canonical_bytes(victim)
    sql(filled, update(E).where(E.c.seq == 7).values(entry=altered))
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert f"first bad entry: entry n° 7 (id {victim.entry_id}): content altered" in result.output


def test_a_query_column_changed_is_named(filled: Settings) -> None:
    sql(filled, update(E).where(E.c.seq == 9).values(case_id=None))  # hide a case from queries
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert f"entry n° 9 (id {make_entry(9).entry_id}): column case_id" in result.output


def test_an_entry_deleted_is_named(filled: Settings) -> None:
    sql(filled, delete(E).where(E.c.seq == 5))
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert "first bad entry: entry n° 5: missing" in result.output


def test_an_entry_deleted_and_the_rest_renumbered_is_named(filled: Settings) -> None:
    sql(filled, delete(E).where(E.c.seq == 5),
        *[update(E).where(E.c.seq == i).values(seq=i - 1) for i in range(6, N)])
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert f"first bad entry: entry n° 5 (id {make_entry(6).entry_id}): out of place" \
        in result.output


def test_two_entries_reordered_are_named(filled: Settings) -> None:
    sql(filled, update(E).where(E.c.seq == 3).values(seq=-1),
        update(E).where(E.c.seq == 8).values(seq=3),
        update(E).where(E.c.seq == -1).values(seq=8))
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert f"first bad entry: entry n° 3 (id {make_entry(8).entry_id}): out of place" \
        in result.output


def test_a_rewrite_with_all_hashes_recomputed_is_caught_by_the_signed_heads(filled: Settings
                                                                          ) -> None:
    """The attacker rewrites entry 8 and recomputes its leaf, every chain hash after it and
    the saved frontier: only the signed heads (no key, no forgery) still tell."""
    entries = [make_entry(i) for i in range(N)]
    entries[8] = make_entry(8, actor="cpam")
    datas = [canonical_bytes(e) for e in entries]
    statements: list[Any] = []
    chain = bytes(32)
    for i, data in enumerate(datas):
        leaf = rfc_leaf_hash(data)
        chain = chain_next(chain, leaf)
        if i >= 8:
            statements.append(update(E).where(E.c.seq == i).values(
                entry=data, leaf_hash=leaf, chain_hash=chain, actor=entries[i].actor))
    from services.ledger.merkle import CompactRange

    acc = CompactRange()
    for data in datas:
        acc.append(rfc_leaf_hash(data))
    statements.append(update(tables.state).values(compact_range=acc.to_bytes(), last_chain=chain))
    sql(filled, *statements)
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert "the signed head of 12 entries" in result.output
    assert "one of entries n° 5 to n° 11 was rewritten" in result.output
    assert "signed head of 5 entries" not in result.output  # heads before the rewrite still hold


def test_the_last_entries_deleted_are_caught(filled: Settings) -> None:
    sql(filled, delete(E).where(E.c.seq >= 18))
    result = run(filled, "verify")
    assert result.exit_code == 1
    assert "entries from n° 18 on were deleted" in result.output


def test_a_forged_head_is_caught(filled: Settings) -> None:
    engine = make_engine(filled.database_url)
    with engine.begin() as conn:
        head_id = conn.execute(select(tables.heads.c.head_id).order_by(tables.heads.c.head_id)
                               ).scalars().first()
        conn.execute(update(tables.heads).where(tables.heads.c.head_id == head_id)
                     .values(timestamp="2020-01-01T00:00:00.000000Z"))
    engine.dispose()
    result = run(filled, "verify")
    assert result.exit_code == 1 and "bad signature" in result.output


def test_head_prints_a_signed_head_pynacl_verifies(filled: Settings) -> None:
    result = run(filled, "head")
    assert result.exit_code == 0, result.output
    from services.ledger.heads import SignedHead

    head = SignedHead.model_validate_json(result.output)
    assert head.tree_size == N
    pub = json.loads(next((filled.key_dir / "ledger").glob("*.pub.json")).read_text())
    assert pub["key_id"] == head.signature.key_id and nacl_verify(head, pub["public_key"])


def test_prove_then_check_offline(filled: Settings, tmp_path: Path) -> None:
    target = make_entry(13)
    proof_file = tmp_path / "proof.json"
    result = run(filled, "prove", "--entry", target.entry_id, "--out", str(proof_file))
    assert result.exit_code == 0, result.output
    proof = json.loads(proof_file.read_text())
    # Independent check: RFC 8785 leaf, RFC 9162 path, PyNaCl signature.
    leaf = rfc_leaf_hash(rfc8785.dumps(proof["entry"]))
    head = proof["signed_head"]
    assert (proof["leaf_index"], proof["tree_size"], head["tree_size"]) == (13, N, N)
    assert verify_inclusion_rfc(leaf, 13, N, [b64u_decode(p) for p in proof["inclusion_path"]],
                                b64u_decode(head["root_hash"]))
    from services.ledger.heads import SignedHead

    pub_file = next((filled.key_dir / "ledger").glob("*.pub.json"))
    assert nacl_verify(SignedHead.model_validate(head), json.loads(pub_file.read_text())["public_key"])
    # Offline: settings pointing at no database at all.
    nowhere = tmp_path / "nowhere"
    offline = load_settings(var_dir=nowhere, key_dir=nowhere / "keys",
                            database_url=f"sqlite:///{nowhere / 'none.db'}")
    result = run(offline, "check-proof", str(proof_file), "--public-key", str(pub_file))
    assert result.exit_code == 0, result.output
    assert "proof verified" in result.output and not nowhere.exists()
    # An edited entry, or a key that is not the ledger's, is refused.
    proof["entry"]["actor"] = "cpam"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(proof))
    result = run(offline, "check-proof", str(edited), "--public-key", str(pub_file))
    assert result.exit_code == 1 and "FAIL" in result.output
    from services.ledger.heads import LedgerSigner

    stranger = LedgerSigner.load(tmp_path / "other", create=True)
    result = run(offline, "check-proof", str(proof_file), "--public-key",
                 str(stranger.export_public(tmp_path / "other")))
    assert result.exit_code == 1 and "FAIL signed head" in result.output


def test_check_proof_finds_the_key_in_the_key_dir(filled: Settings, tmp_path: Path) -> None:
    proof_file = tmp_path / "p.json"
    assert run(filled, "prove", "--entry", make_entry(0).entry_id, "--out",
               str(proof_file)).exit_code == 0
    assert run(filled, "check-proof", str(proof_file)).exit_code == 0
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    result = run(filled, "check-proof", str(junk))
    assert isinstance(result.exception, InputError)


def test_consistency_proof(filled: Settings, tmp_path: Path) -> None:
    out = tmp_path / "cons.json"
    result = run(filled, "consistency", "--from", "5", "--to", "12", "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    first, second = doc["first"], doc["second"]
    assert first["signed_head"] and second["signed_head"]  # heads exist at 5 and 12
    assert verify_consistency_rfc(5, 12, b64u_decode(first["root_hash"]),
                                  b64u_decode(second["root_hash"]),
                                  [b64u_decode(p) for p in doc["consistency_path"]])
    checked = run(filled, "check-proof", str(out))
    assert checked.exit_code == 0 and "ok   consistency" in checked.output
    # to stdout, for sizes without a head
    printed = json.loads(run(filled, "consistency", "--from", "3", "--to", "17").output)
    assert verify_consistency_rfc(3, 17, b64u_decode(printed["first"]["root_hash"]),
                                  b64u_decode(printed["second"]["root_hash"]),
                                  [b64u_decode(p) for p in printed["consistency_path"]])
    assert isinstance(run(filled, "consistency", "--from", "9", "--to", "3").exception, InputError)


def test_query_answers_who_saw_the_case_in_french(filled: Settings) -> None:
    result = run(filled, "query", "--case", CASE)
    assert result.exit_code == 0, result.output
    assert "Journal d'audit" in result.output and "Finalité" in result.output
    assert "Référence de dossier révélée" in result.output and "cpam-35" in result.output
    assert "7 entrée(s)" in result.output  # n° 0, 3, 6, 9, 12, 15, 18
    assert "0 entrée(s)" in run(filled, "query", "--actor", "msa").output
    assert isinstance(run(filled, "query").exception, InputError)
    assert isinstance(run(filled, "query", "--period", "2026-13").exception, InputError)


def test_export_csv_for_french_spreadsheets(filled: Settings, tmp_path: Path) -> None:
    out = tmp_path / "nov.csv"
    result = run(filled, "export", "--period", "2026-11", "--format", "csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    lines = raw.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("n°;horodatage_utc;acteur;action;libelle_action")
    assert len(lines) == N + 1
    # PSEUDO starts with '-': a spreadsheet would take it for a formula; it is neutralised.
    assert f";'{PSEUDO.value};" in lines[1] and f";{PSEUDO.value};" not in raw.decode("utf-8-sig")
    out_json = tmp_path / "nov.jsonl"
    assert run(filled, "export", "--period", "2026-11", "--out", str(out_json)).exit_code == 0
    rows = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(N)) and rows[0]["subject_value"] == PSEUDO.value
    empty = tmp_path / "dec.csv"
    assert run(filled, "export", "--period", "2026-12", "--format", "csv", "--out",
               str(empty)).exit_code == 0
    assert len(empty.read_text(encoding="utf-8-sig").splitlines()) == 1


def test_an_index_row_removed_to_hide_an_entry_is_caught_and_reindex_repairs(
        filled: Settings) -> None:
    L = tables.lookup
    sql(filled, delete(L).where(L.c.seq == 9))  # entry 9 (a case) no longer found by case
    ledger = Ledger.open(filled, sign=False)
    assert 9 not in [i for i, _ in ledger.query(case_id=CASE)]
    result = run(filled, "verify")
    assert result.exit_code == 1 and "auditor's index (ledger_index)" in result.output
    result = run(filled, "reindex")
    assert result.exit_code == 0 and f"reconstruit : {N} entrée(s)" in result.output
    assert [i for i, _ in ledger.query(case_id=CASE)] == [0, 3, 6, 9, 12, 15, 18]
    assert run(filled, "verify").exit_code == 0
    ledger.engine.dispose()


def test_an_index_row_added_is_caught(filled: Settings) -> None:
    L = tables.lookup
    sql(filled, insert(L).values(bucket=1, seq=4, fp=123))
    result = run(filled, "verify")
    assert result.exit_code == 1 and "auditor's index (ledger_index)" in result.output
