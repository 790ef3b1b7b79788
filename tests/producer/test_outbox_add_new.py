"""``Outbox.add_new`` (the publisher's staging: one insert, no lookup first) returns what the
obvious way returns: the ids ``known`` did not list, first row of each, in order."""

from __future__ import annotations

import random
from pathlib import Path

from services.producer.outbox import Outbox, Row


def _row(i: int, variant: int = 0) -> Row:
    return Row(f"{i:032x}", "2026-11-01", f"k{i}".encode(), f'{{"n":{i},"v":{variant}}}'.encode())


def _reference(box: Outbox, rows: list[Row]) -> list[Row]:
    """What the publisher did before: ask which ids are known, keep the first of the others."""
    known = box.known(r.signal_id for r in rows)
    fresh: list[Row] = []
    for r in rows:
        if r.signal_id not in known:
            known.add(r.signal_id)
            fresh.append(r)
    box.add(fresh)
    return fresh


def test_add_new_matches_the_reference_on_random_batches(tmp_path: Path) -> None:
    rng = random.Random(11)
    with Outbox(tmp_path / "fast.db") as fast, Outbox(tmp_path / "ref.db") as ref:
        for round_ in range(40):
            # ids drawn from a small range: batches meet ids of earlier batches and repeat their own
            size = rng.choice((0, 1, 2, 5, 30))
            rows = [_row(rng.randrange(120), variant=round_ * 100 + k) for k in range(size)]
            expected = _reference(ref, rows)
            got = fast.add_new(rows)
            assert got == expected
            assert fast.pending_count() == ref.pending_count()
        stored = "SELECT signal_id, msg_value FROM outbox ORDER BY seq"  # seq: both in the same order
        assert fast._db.execute(stored).fetchall() == ref._db.execute(stored).fetchall()


def test_add_new_all_new_and_all_known(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        rows = [_row(i) for i in range(10)]
        assert box.add_new(rows) == rows
        assert box.add_new(rows) == []
        again = [_row(3, variant=1), _row(10), _row(10, variant=2), _row(4)]
        assert box.add_new(again) == [_row(10)]
        # the stored bytes are the first row's, not the repeat's
        (value,) = box._db.execute("SELECT msg_value FROM outbox WHERE signal_id = ?", (_row(10).signal_id,)).fetchone()
        assert bytes(value) == _row(10).value
