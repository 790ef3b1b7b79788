"""The ledger checked by a verifier not written here: Go's golang.org/x/mod/sumdb/note and
sumdb/tlog (Debian's golang-golang-x-mod-dev, built offline), reading our checkpoint, the
funds' cosignatures and the tiles over HTTP, proving every entry and the consistency with an
older checkpoint, and checking the proof files `audit prove` and `audit consistency` write.
And the other way round: a tile, a checkpoint or a quorum that is wrong makes it fail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from services.ledger import tables
from services.ledger.cli import register
from services.ledger.merkle import leaf_hash
from services.ledger.store import Ledger
from services.ledger.witness import witness_round
from services.platform.settings import Settings, load_settings
from tests.ledger.auditing import run_go, running_witnesses, serving_tiles
from tests.support.cli import wired_group
from tests.support.entries import make_entry

N = 600  # two full level-0 tiles, a partial one, and a partial level-1 tile


#: The ledger's commands only.
group = wired_group(register)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[Settings, Ledger, str]]:
    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "keys",
                             database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                             ledger_origin="help-exchange.test/ledger/35",
                             ledger_checkpoint_every=100)
    ledger = Ledger.open(settings)
    entries = [make_entry(i) for i in range(N)]
    for start in range(0, N, 150):
        ledger.append(entries[start : start + 150])
    ledger.sign_head()
    vkey = next((settings.key_dir / "ledger").glob("*.vkey")).read_text().strip()
    yield settings, ledger, vkey
    ledger.engine.dispose()


def test_go_verifies_checkpoint_cosignatures_tiles_and_proofs(
        go_verifier: Path, log: tuple[Settings, Ledger, str], tmp_path: Path) -> None:
    settings, ledger, vkey = log
    old = tmp_path / "old-checkpoint"
    old.write_text(ledger.checkpoint_at(200) or "")
    with running_witnesses(tmp_path / "witness-keys", vkey) as wits:
        results = witness_round(ledger, wits.configs)
        assert [r.ok for r in results] == [True] * 4, results
        invoke = CliRunner().invoke
        proof = tmp_path / "inclusion.json"
        assert invoke(group, ["audit", "prove", "--entry", make_entry(417).entry_id, "--out",
                              str(proof)], obj={"settings": settings}).exit_code == 0
        consistency = tmp_path / "consistency.json"
        assert invoke(group, ["audit", "consistency", "--from", "200", "--to", str(N), "--out",
                              str(consistency)], obj={"settings": settings}).exit_code == 0
        witness_args = [a for v in wits.vkeys() for a in ("-witness", v)]
        wkeys = []
        for i, v in enumerate(wits.vkeys()):
            wkeys.append(tmp_path / f"witness-{i}.vkey")
            wkeys[-1].write_text(v + "\n")
        with serving_tiles(ledger) as url:
            done = run_go(go_verifier, "-url", url, "-log", vkey, *witness_args, "-quorum", "4",
                          "-all", "-old", str(old), str(proof))
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"checkpoint ok: help-exchange.test/ledger/35 size {N}" in done.stdout
            assert f"inclusion ok: {N} entries" in done.stdout
            assert f"consistency ok: 200 -> {N}" in done.stdout
            assert f"proof ok: inclusion of entry 417 in {N}" in done.stdout
            # the older checkpoint has no cosignature: its proof file is checked without quorum
            done = run_go(go_verifier, "-log", vkey, str(consistency))
            assert done.returncode == 0 and f"consistency 200 -> {N}" in done.stdout, done.stdout

            # our own verifier, from the same tiles over HTTP, without the database
            tiles = CliRunner().invoke(group, ["audit", "verify-tiles", url, "--quorum", "4",
                                               *[a for i, _ in enumerate(wits.configs)
                                                 for a in ("--witness", str(wkeys[i]))]],
                                       obj={"settings": settings})
            assert tiles.exit_code == 0 and f"ok: {N} entries verified from the tiles" \
                in tiles.output, tiles.output

            # a quorum the cosignatures do not reach fails
            done = run_go(go_verifier, "-url", url, "-log", vkey, *witness_args[:2],
                          "-quorum", "2")
            assert done.returncode == 1 and "quorum is 2" in done.stdout, done.stdout

            # another key than the log's: the checkpoint is not verified
            other = Ledger.open(load_settings(key_dir=tmp_path / "other-keys",
                                              database_url=f"sqlite:///{tmp_path / 'o.db'}",
                                              ledger_origin="help-exchange.test/ledger/35"))
            other.engine.dispose()
            other_vkey = next((tmp_path / "other-keys" / "ledger").glob("*.vkey")).read_text()
            done = run_go(go_verifier, "-url", url, "-log", other_vkey.strip())
            assert done.returncode == 1 and "FAIL: checkpoint" in done.stdout, done.stdout

            # an entry rewritten with its leaf hash recomputed: the tiles no longer hash to
            # the checkpoint's root, and Go's TileHashReader refuses them
            victim = make_entry(300)
            altered = victim.canonical().replace(b'"count":null', b'"count":1')
            with ledger.engine.begin() as conn:
                conn.execute(update(tables.entries).where(tables.entries.c.seq == 300)
                             .values(entry=altered, leaf_hash=leaf_hash(altered)))
            done = run_go(go_verifier, "-url", url, "-log", vkey, "-all")
            assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout


def test_go_refuses_a_proof_for_another_tree(go_verifier: Path,
                                             log: tuple[Settings, Ledger, str],
                                             tmp_path: Path) -> None:
    settings, ledger, vkey = log
    proof = tmp_path / "inclusion.json"
    assert CliRunner().invoke(group, ["audit", "prove", "--entry", make_entry(5).entry_id,
                                      "--out", str(proof)],
                              obj={"settings": settings}).exit_code == 0
    document = json.loads(proof.read_text())
    document["checkpoint"] = ledger.checkpoint_at(500)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    done = run_go(go_verifier, "-log", vkey, str(forged))
    assert done.returncode == 1 and "proof for a tree of 600, checkpoint of 500" in done.stdout
    document["tree_size"] = 500
    forged.write_text(json.dumps(document))
    done = run_go(go_verifier, "-log", vkey, str(forged))
    assert done.returncode == 1 and "invalid transparency proof" in done.stdout, done.stdout
