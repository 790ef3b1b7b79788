"""The auditor trusts no one: rewrites, truncations, rollbacks and forks are caught against
the checkpoints the auditor kept, the tiles it exported or the witnesses' quorum, and named
(to the entry, or to the smallest range the checkpoints allow); and the C2SP formats refuse
bad input with a reason."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy import text as sa_text

from services.errors import InputError
from services.ledger import tables as t
from services.ledger.checkpoint import (
    ALG_COSIGNATURE_V1,
    NoteSigner,
    NoteVerifier,
    checkpoint_text,
    open_checkpoint,
    parse_note,
    sign_checkpoint,
)
from services.ledger.cli import register
from services.ledger.merkle import CompactRange, consistency_proof, leaf_hash
from services.ledger.store import GENESIS_CHAIN, Ledger, chain_next
from services.ledger.tiles import directory_reader, export_tiles, verify_from_tiles
from services.ledger.witness import add_checkpoint_request, witness_round
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings
from tests.ledger.auditing import running_witnesses
from tests.support.cli import wired_group
from tests.support.entries import make_entry

N = 60
ORIGIN = "help-exchange.test/ledger/35"


#: The ledger's commands only.
group = wired_group(register)


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(group, list(args), obj={"settings": settings})


def settings_at(tmp_path: Path, name: str = "ledger") -> Settings:
    return load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "keys",
                         database_url=f"sqlite:///{tmp_path / (name + '.db')}",
                         ledger_origin=ORIGIN, ledger_checkpoint_every=10)


@pytest.fixture
def filled(tmp_path: Path, db_url: str) -> Settings:
    """A ledger of N entries on SQLite or the real PostgreSQL (fresh tables)."""
    open_engine(db_url).dispose()
    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "keys",
                             database_url=db_url, ledger_origin=ORIGIN,
                             ledger_checkpoint_every=10)
    ledger = Ledger.open(settings)
    for start in range(0, N, 15):
        ledger.append([make_entry(i) for i in range(start, start + 15)])
    ledger.engine.dispose()
    return settings


def vkey_file(settings: Settings) -> Path:
    return next((settings.key_dir / "ledger").glob("*.vkey"))


def rewrite_without_key(settings: Settings, victim: int) -> None:
    """An insider with the database but not the key: entry ``victim`` rewritten, every later
    leaf and chain hash and the saved frontier recomputed, heads and checkpoints from the
    victim on deleted, so the stored log is consistent with itself."""
    ledger = Ledger.open(settings, sign=False)
    c = t.entries.c
    with ledger.engine.begin() as conn:
        rows = conn.execute(select(c.seq, c.entry).order_by(c.seq)).all()
        acc, chain = CompactRange(), GENESIS_CHAIN
        for seq, data in rows:
            data = bytes(data)
            if seq == victim:
                data = data.replace(b'"count":null', b'"count":7')
            leaf = leaf_hash(data)
            chain = chain_next(chain, leaf)
            acc.append(leaf)
            conn.execute(update(t.entries).where(c.seq == seq)
                         .values(entry=data, leaf_hash=leaf, chain_hash=chain))
        conn.execute(update(t.state).values(compact_range=acc.to_bytes(), last_chain=chain))
        conn.execute(delete(t.heads).where(t.heads.c.tree_size > victim))
        conn.execute(delete(t.checkpoints).where(t.checkpoints.c.tree_size > victim))
    ledger.engine.dispose()


def test_clean_log_verifies_and_every_entry_is_covered(filled: Settings) -> None:
    result = run(filled, "audit", "verify")
    assert result.exit_code == 0, result.output
    assert f"ok: {N} entries" in result.output and "checkpoints" in result.output


def test_checkpoints_every_n_entries(filled: Settings) -> None:
    ledger = Ledger.open(filled, sign=False)
    sizes = [size for size, _, _ in ledger.checkpoints()]
    ledger.engine.dispose()
    assert {10, 20, 30, 40, 50, 60} <= set(sizes)
    assert 15 in sizes  # the first append: no checkpoint yet, one at its end


def test_rewrite_with_hashes_recomputed_and_heads_deleted_is_never_ok(
        filled: Settings, tmp_path: Path) -> None:
    kept = tmp_path / "kept-checkpoint"
    assert run(filled, "audit", "checkpoint", "--out", str(kept)).exit_code == 0
    tiles = tmp_path / "kept-tiles"
    assert run(filled, "audit", "tiles", "--out", str(tiles)).exit_code == 0
    rewrite_without_key(filled, 23)

    alone = run(filled, "audit", "verify")  # no pin: it must not say ok
    assert alone.exit_code == 3, alone.output
    assert "NOT COVERED: 40 entries (n° 20 on, since 2026-11-02T09:20:00.000000Z)" \
        in alone.output

    pinned = run(filled, "audit", "verify", "--trusted", str(kept))
    assert pinned.exit_code == 1, pinned.output
    assert f"a kept (trusted) checkpoint of {N} entries does not match the stored entries: " \
           "one of entries n° 0 to n° 59 was rewritten" in pinned.output

    named = run(filled, "audit", "verify", "--trusted", str(kept), "--kept-tiles", str(tiles))
    assert named.exit_code == 1
    assert f"entry n° 23 (id {make_entry(23).entry_id}): rewritten" in named.output


def test_rewrite_by_an_insider_with_the_key_is_caught_by_the_pin(
        filled: Settings, tmp_path: Path) -> None:
    """Even re-signing every checkpoint with the log's key does not hide a rewrite from an
    auditor who kept a checkpoint, nor from the tiles it exported."""
    kept = tmp_path / "kept-checkpoint"
    assert run(filled, "audit", "checkpoint", "--out", str(kept)).exit_code == 0
    tiles = tmp_path / "kept-tiles"
    assert run(filled, "audit", "tiles", "--out", str(tiles)).exit_code == 0
    forged = settings_at(tmp_path, "forged")  # same key folder: the insider has the key
    ledger = Ledger.open(forged)
    entries = [make_entry(i) for i in range(N)]
    entries[41] = make_entry(41, count=3)
    ledger.append(entries)
    ledger.engine.dispose()
    assert run(forged, "audit", "verify").exit_code == 0  # consistent with itself…
    result = run(forged, "audit", "verify", "--trusted", str(kept))
    assert result.exit_code == 1  # … not with what the auditor kept
    assert "one of entries n° 0 to n° 59 was rewritten" in result.output
    result = run(forged, "audit", "verify", "--trusted", str(kept), "--kept-tiles", str(tiles))
    assert f"entry n° 41 (id {entries[41].entry_id}): rewritten" in result.output

    fresh = tmp_path / "fresh-tiles"
    assert run(forged, "audit", "tiles", "--out", str(fresh)).exit_code == 0
    result = run(forged, "audit", "verify-tiles", str(fresh), "--trusted", str(kept),
                 "--kept-tiles", str(tiles))
    assert result.exit_code == 1
    assert "entry n° 41 differs from the copy the auditor kept" in result.output


def test_truncation_and_rollback_against_a_kept_checkpoint(filled: Settings,
                                                           tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    assert run(filled, "audit", "checkpoint", "--out", str(kept)).exit_code == 0
    rolled = settings_at(tmp_path, "backup")  # yesterday's backup: the first 40 entries
    ledger = Ledger.open(rolled)
    ledger.append([make_entry(i) for i in range(40)])
    ledger.engine.dispose()
    result = run(rolled, "audit", "verify", "--trusted", str(kept))
    assert result.exit_code == 1
    assert f"a checkpoint the auditor kept says the log held {N} entries; only 40 remain" \
        in result.output
    tiles = tmp_path / "rolled-tiles"
    assert run(rolled, "audit", "tiles", "--out", str(tiles)).exit_code == 0
    result = run(rolled, "audit", "verify-tiles", str(tiles), "--trusted", str(kept))
    assert result.exit_code == 1 and f"a checkpoint you kept says {N}: rolled back" \
        in result.output


def test_fork_shown_to_one_witness_only_lacks_the_quorum(filled: Settings,
                                                         tmp_path: Path) -> None:
    ledger = Ledger.open(filled)
    vkey = vkey_file(filled).read_text()
    with running_witnesses(tmp_path / "wkeys", vkey) as wits:
        honest = [c for c in wits.configs if "caf/" not in c.name]
        assert all(r.ok for r in witness_round(ledger, honest))
        # the insider forks: the same key signs another history, shown to caf only
        forked = Ledger.open(settings_at(tmp_path, "fork"))
        entries = [make_entry(i) for i in range(N + 5)]
        entries[12] = make_entry(12, count=1)
        forked.append(entries)
        caf = [c for c in wits.configs if "caf/" in c.name]
        assert [r.ok for r in witness_round(forked, caf)] == [True]
        refused = witness_round(forked, honest)  # the others see it is not their tree
        assert not any(r.ok for r in refused)
        assert all("HTTP 422: inconsistent" in r.detail for r in refused), refused
        assert list((wits.witnesses["urssaf"].folder / "refused").iterdir())
        forked.engine.dispose()
        keys = []
        for c in wits.configs:
            path = tmp_path / f"{c.name.replace('/', '_')}.vkey"
            path.write_text(c.vkey)
            keys += ["--witness", str(path)]
        fork_settings = settings_at(tmp_path, "fork")
        result = run(fork_settings, "audit", "verify", *keys)
        assert result.exit_code == 3 and "NOT WITNESSED" in result.output, result.output
        tiles = tmp_path / "fork-tiles"
        assert run(fork_settings, "audit", "tiles", "--out", str(tiles)).exit_code == 0
        result = run(fork_settings, "audit", "verify-tiles", str(tiles), *keys)
        assert isinstance(result.exception, InputError)
        assert "cosigned by 1 witness(es) ['help-exchange.caf/witness'], 2 required" \
            in result.exception.what
        result = run(filled, "audit", "verify", *keys)
        assert result.exit_code == 0, result.output  # the true log has its quorum
    ledger.engine.dispose()


def test_witness_refusals_say_why(filled: Settings, tmp_path: Path) -> None:
    ledger = Ledger.open(filled)
    vkey = vkey_file(filled).read_text()
    with running_witnesses(tmp_path / "wkeys", vkey, funds=("cpam",)) as wits:
        w = wits.witnesses["cpam"]
        first = ledger.checkpoint_at(30) or ""
        assert w.add_checkpoint(add_checkpoint_request(0, [], first)).status == 200
        later = ledger.checkpoint_at(N) or ""
        leaves = ledger.leaf_hashes()
        good = consistency_proof(30, leaves, N)
        assert w.add_checkpoint(add_checkpoint_request(0, good, later)).status == 409
        bad = [hashlib.sha256(p).digest() for p in good]
        answer = w.add_checkpoint(add_checkpoint_request(30, bad, later))
        assert answer.status == 422 and "does not extend" in answer.body
        assert w.add_checkpoint(add_checkpoint_request(30, good, later)).status == 200
        rollback = ledger.checkpoint_at(40) or ""
        answer = w.add_checkpoint(add_checkpoint_request(N, [], rollback))
        assert answer.status == 400 and "rollback" in answer.body
        stranger_key = Ed25519PrivateKey.generate()
        stranger = NoteSigner(ORIGIN, stranger_key)
        unknown_key = sign_checkpoint(stranger, ORIGIN, N + 1, bytes(32))
        answer = w.add_checkpoint(add_checkpoint_request(N, [], unknown_key))
        assert answer.status == 403 and "no signature by the log key" in answer.body
        other_log = sign_checkpoint(NoteSigner("other.example/log", stranger_key),
                                    "other.example/log", 3, bytes(32))
        assert w.add_checkpoint(add_checkpoint_request(0, [], other_log)).status == 404
        assert w.add_checkpoint(b"garbage").status == 400
    ledger.engine.dispose()


def test_checkpoint_format_and_bad_notes(filled: Settings) -> None:
    ledger = Ledger.open(filled, sign=False)
    note = ledger.checkpoint_at(N) or ""
    ledger.engine.dispose()
    log = NoteVerifier.from_vkey(vkey_file(filled).read_text())
    text, _, sig = note.partition("\n\n")
    origin, size, root = text.split("\n")
    assert (origin, size) == (ORIGIN, str(N)) and len(base64.b64decode(root)) == 32
    assert sig.startswith(f"\u2014 {ORIGIN} ")
    blob = base64.b64decode(sig.split(" ")[2])
    expected_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" +
                                 log.public_key.public_bytes_raw()).digest()[:4]
    assert blob[:4] == expected_id == log.key_hash and len(blob) == 68
    cp = open_checkpoint(note, log)
    assert cp.size == N and checkpoint_text(ORIGIN, N, cp.root) == cp.text

    tampered = note.replace(f"\n{N}\n", f"\n{N + 1}\n")
    with pytest.raises(InputError, match=r"signature by .* is bad"):
        open_checkpoint(tampered, log)
    with pytest.raises(InputError, match=r"not 'other\.example/log'"):
        open_checkpoint(note, log, origin="other.example/log")
    with pytest.raises(InputError, match="no signature block"):
        open_checkpoint(text + "\n", log)
    with pytest.raises(InputError, match="unusable"):
        NoteVerifier.from_vkey("x+00000000+AAAA")
    cosigner = NoteSigner("w.example", Ed25519PrivateKey.generate(), ALG_COSIGNATURE_V1)
    cosigned = parse_note(note).with_signatures([cosigner.signature_line(cp.text, 1_700_000_000)])
    assert cosigned.verified_by(cosigner.verifier) is not None
    assert cosigned.signatures[-1].timestamp == 1_700_000_000
    assert open_checkpoint(cosigned.render(), log,
                           witnesses={"w.example": cosigner.verifier}).cosigners == ("w.example",)


def test_truncated_or_missing_tile_is_refused(filled: Settings, tmp_path: Path) -> None:
    ledger = Ledger.open(filled, sign=False)
    note = ledger.checkpoint_at(N) or ""
    out = tmp_path / "tiles"
    export_tiles(ledger, note, N, out)
    ledger.engine.dispose()
    cp = open_checkpoint(note, NoteVerifier.from_vkey(vkey_file(filled).read_text()))
    assert verify_from_tiles(directory_reader(out), cp).ok
    tile = out / "tile" / "0" / f"000.p/{N}"
    tile.write_bytes(tile.read_bytes()[:-5])
    audit = verify_from_tiles(directory_reader(out), cp)
    assert not audit.ok and "tile/0/000.p/60 is missing or truncated" in audit.problems[0]
    bundle = out / "tile" / "entries" / f"000.p/{N}"
    bundle.write_bytes(bundle.read_bytes()[:-3])
    with pytest.raises(InputError, match="truncated"):
        verify_from_tiles(directory_reader(out), cp)
    bundle.unlink()
    audit = verify_from_tiles(directory_reader(out), cp)
    assert "tile/entries/000.p/60 is missing" in audit.problems[0]


def test_entries_appended_without_the_key_are_covered_once_due(filled: Settings) -> None:
    """The casebook appends without the ledger's key; the audit sink, which holds it, signs
    a checkpoint over them once the newest is older than HELP_LEDGER_CHECKPOINT_SECONDS."""
    import datetime as dt

    keyless = Ledger.open(filled, sign=False)
    keyless.append([make_entry(N), make_entry(N + 1)])
    keyless.engine.dispose()
    assert run(filled, "audit", "verify").exit_code == 3
    ledger = Ledger.open(filled)
    signed_at = ledger.checkpoints()[-1][1]
    soon = dt.datetime.fromisoformat(signed_at) + dt.timedelta(seconds=5)
    assert not ledger.checkpoint_if_due(soon)
    assert ledger.checkpoint_if_due(soon + dt.timedelta(seconds=6))
    assert not ledger.checkpoint_if_due(soon + dt.timedelta(seconds=60))  # nothing new
    ledger.engine.dispose()
    assert run(filled, "audit", "verify").exit_code == 0


def test_a_damaged_tile_hash_is_found(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, "tiles")
    ledger = Ledger.open(settings)
    ledger.append([make_entry(i) for i in range(520)])  # two complete subtrees of 256
    with ledger.engine.begin() as conn:
        rows = conn.execute(select(t.tile_nodes.c.level, t.tile_nodes.c.idx)).all()
        assert sorted(rows) == [(1, 0), (1, 1)]
        conn.execute(update(t.tile_nodes).where(t.tile_nodes.c.idx == 1)
                     .values(hash=bytes(32)))
    ledger.engine.dispose()
    result = run(settings, "audit", "verify")
    assert result.exit_code == 1
    assert "the tile hash of level 1 n° 1 (entries n° 256 to n° 511) is not the root" \
        in result.output


def test_a_ledger_from_before_tiles_gets_its_tile_hashes(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, "old")
    ledger = Ledger.open(settings)
    ledger.append([make_entry(i) for i in range(300)])
    # Migration 0005_ledger_tables creates the table a ledger from before tiles lacks: empty.
    with ledger.engine.begin() as conn:
        conn.execute(sa_text("DELETE FROM ledger_tile_nodes"))
    ledger.engine.dispose()
    assert run(settings, "audit", "verify").exit_code == 0  # filled on open
    reindex = run(settings, "audit", "reindex")
    assert "Hachés des tuiles reconstruits : 1." in reindex.output
