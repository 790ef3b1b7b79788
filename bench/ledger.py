"""Ledger benchmark: append rate into SQLite, and a full verify of a million entries.

    .venv/bin/python -m bench.ledger [--entries 1000000] [--batch 10000]

Targets (issue 6): appends >= 20,000 entries/s; `audit verify` of 1,000,000 entries < 60 s.
Targets (issue 16): appends >= 25,000 entries/s *with* checkpoints (C2SP signed notes, one
per 1,000 entries) and the tile hashes kept as entries append; verification of the
1,000,000 entries from the exported tiles alone (no database) <= 15 s. Both are printed
beside the figures measured before issue 16 (16,400-24,600/s; 24-45 s from the database).
The append figure is the whole path of ``Ledger.append``: RFC 8785 canonical form, leaf
hash, chain hash, idempotency look-up, batched INSERT and the saved tree frontier, one
transaction per batch, into an SQLite file — and the auditor's index (case, pseudonym,
actor, action), which is written in the same transaction, so nothing is left to do after
the timer stops. The verify figure is ``verify_ledger``: every
leaf hash recomputed from the stored bytes, every query column checked against them, the
chain, the Merkle root, every signed head (one per 100,000 entries) and the auditor's index.

See services/ledger/tables.py for how the indexes are laid out, and why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from services.core.messages import Pseudonym
from services.ledger.checkpoint import open_checkpoint
from services.ledger.entries import Action, LedgerEntry, LedgerLegalBasis, LedgerPurpose, entry_id_for
from services.ledger.heads import LedgerSigner
from services.ledger.sink import AuditSink
from services.ledger.store import Ledger
from services.ledger.tiles import directory_reader, export_tiles, verify_from_tiles
from services.ledger.verify import Pins, verify_ledger
from services.platform.db import open_engine

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ACTIONS = list(Action)


def entries(start: int, stop: int) -> Iterator[LedgerEntry]:
    for i in range(start, stop):
        yield LedgerEntry(
            entry_id=entry_id_for("bench", str(i)),
            time=T0 + dt.timedelta(seconds=i),
            actor=("correlator", "agent.caf-35.0042", "cpam-35", "casebook")[i % 4],
            action=ACTIONS[i % len(ACTIONS)],
            purpose=LedgerPurpose.ACCES_AUX_DROITS,
            legal_basis=LedgerLegalBasis.L115_2_1,
            subject=Pseudonym(key_id="xk-20261101-0a1b", value=f"{i:043d}"),
            case_id=f"{i // 3:032x}" if i % 2 else None,
            trace_id=f"{i:032x}",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    # The audit sink's own transaction size (the ledger's high-rate appender).
    parser.add_argument("--batch", type=int, default=AuditSink.batch_max)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        engine = open_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        ledger = Ledger(engine, LedgerSigner.generate())

        build_s = append_s = 0.0
        done = 0
        while done < args.entries:
            stop = min(args.entries, done + args.batch)
            t0 = time.perf_counter()
            batch = list(entries(done, stop))
            t1 = time.perf_counter()
            ledger.append(batch, sign=stop % 100_000 == 0 or stop == args.entries)
            append_s += time.perf_counter() - t1
            build_s += t1 - t0
            done = stop
        rate = args.entries / append_s
        print(f"append (auditor's index, a checkpoint every 1,000 entries and the tile hashes "
              f"included): {args.entries:,} entries in batches of {args.batch:,}: "
              f"{append_s:.1f} s = {rate:,.0f} entries/s (target >= 25,000; before issue 16: "
              f"16,400-24,600/s) [{'OK' if rate >= 25_000 else 'MISSED'}]")
        print(f"        (building the pydantic entries, not counted: {build_s:.1f} s; "
              f"with it: {args.entries / (append_s + build_s):,.0f} entries/s)")
        last_case = args.entries - 1 if args.entries % 2 == 0 else args.entries - 2  # odd i
        t0 = time.perf_counter()
        found = [i for i, _ in ledger.query(case_id=f"{last_case // 3:032x}")]
        assert last_case in found, found
        print(f"query by case through the auditor's index: {len(found)} entries in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")

        keys = {ledger.signer.key_id: ledger.signer.public_key} if ledger.signer else {}
        t0 = time.perf_counter()
        assert ledger.signer is not None
        pins = Pins(log_keys=(ledger.signer.note_signer(ledger.origin).verifier,))
        report = verify_ledger(engine, keys, pins=pins)
        verify_s = time.perf_counter() - t0
        assert report.ok, report.problems[:3]
        print(f"verify: {report.tree_size:,} entries, {report.heads_checked} signed heads, "
              f"{report.checkpoints_checked} checkpoints: {verify_s:.1f} s (target < 60 s; "
              f"before issue 16: 24-45 s) [{'OK' if verify_s < 60 else 'MISSED'}]")

        note = ledger.checkpoint()
        t0 = time.perf_counter()
        files = export_tiles(ledger, note, args.entries, Path(tmp) / "tiles")
        export_s = time.perf_counter() - t0
        print(f"tiles: {files:,} files exported in {export_s:.1f} s")
        assert ledger.signer is not None
        log = ledger.signer.note_signer(ledger.origin).verifier
        t0 = time.perf_counter()
        audit = verify_from_tiles(directory_reader(Path(tmp) / "tiles"),
                                  open_checkpoint(note, log))
        tiles_s = time.perf_counter() - t0
        assert audit.ok, audit.problems[:3]
        print(f"verify from the tiles alone (no database): {audit.size:,} entries, every "
              f"entry, tile and level against the checkpoint: {tiles_s:.1f} s (target <= 15 s; "
              f"before: 24-45 s from the database) [{'OK' if tiles_s <= 15 else 'MISSED'}]")
        engine.dispose()
    from bench import emit

    emit("ledger", {"entries": args.entries, "batch": args.batch, "append_per_s": rate,
                    "append_s": append_s, "build_s": build_s, "verify_s": verify_s,
                    "export_tiles_s": export_s, "verify_tiles_s": tiles_s,
                    "load_average": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
