"""The outbox keeps an accepted signal's bytes for a bounded time, and puts back what was sent
since a moment (``outbox resend --since``); the broker-side test is
``tests/reliability/test_broker_loss.py``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from click.testing import CliRunner

from services.app.cli import cli
from services.producer.outbox import Outbox, Row

TOPIC = "help.signals.caf.v1"


def _rows(n: int, start: int = 0) -> list[Row]:
    return [Row(f"{i:032x}", "2026-11-01", f"k{i}".encode(), f'{{"n":{i}}}'.encode()) for i in range(start, start + n)]


def _sent(box: Outbox, rows: list[Row], offset: int = 0) -> None:
    box.add(rows)
    box.mark_sent([r.signal_id for r in rows], TOPIC, {0: offset + len(rows) - 1},
                  [(0, offset + i) for i in range(len(rows))])


def test_accepted_bytes_are_kept_for_the_window_then_dropped(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", keep_sent_days=7) as box:
        rows = _rows(5)
        _sent(box, rows)
        box.settle(accepted=[r.signal_id for r in rows[:3]], refused=[(rows[3].signal_id, "texte_libre")])
        st = box.status()
        assert (st.accepted, st.refused, st.awaiting_receipt) == (3, 1, 1)
        assert box.drop_old_payloads(dt.datetime.now(dt.UTC) + dt.timedelta(days=6)) == 0
        assert box.resendable(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 4  # not the refused one
        # 8 days later: the accepted ones lose their bytes; awaiting and refused keep theirs.
        assert box.drop_old_payloads(dt.datetime.now(dt.UTC) + dt.timedelta(days=8)) == 3
        assert box.resendable(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 1
    with Outbox(tmp_path / "zero.db", keep_sent_days=0) as box:
        rows = _rows(2)
        _sent(box, rows)
        box.settle(accepted=[rows[0].signal_id])  # no window: dropped at once
        assert box.resendable(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 1


def test_resend_since_puts_back_only_what_was_sent_since_and_resets_the_marks(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        old = _rows(3)
        _sent(box, old)
        box._db.execute("UPDATE outbox SET sent_at = '2020-01-01T00:00:00.000000Z'")  # sent long ago
        cut = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        recent = _rows(4, start=10)
        _sent(box, recent, offset=3)
        box.settle(accepted=[recent[0].signal_id], refused=[(recent[1].signal_id, "texte_libre")])
        assert box.partition_marks(TOPIC) == {0: 6}
        # a mark lost (an outbox older than marks): the partition a resent row went to counts too
        box._db.execute("UPDATE outbox SET sent_partition = 4 WHERE signal_id = ?", (recent[3].signal_id,))
        assert box.resend_since(TOPIC, cut) == 3  # accepted + 2 awaiting; not the refused, not the old
        # the broker now answering is read from its first record (-1) where a copy may already be
        assert box.partition_marks(TOPIC) == {0: -1, 4: -1}
        pending = box.pending(100)
        assert [p.signal_id for p in pending] == [recent[0].signal_id, recent[2].signal_id, recent[3].signal_id]
        assert all(p.value for p in pending)
        st = box.status()
        assert (st.pending, st.accepted, st.refused) == (3, 0, 1)


def test_resend_command_refuses_an_unreadable_time(tmp_path: Path) -> None:
    env = {"HELP_VAR_DIR": str(tmp_path / "var"), "HELP_KEY_DIR": str(tmp_path / "var" / "keys")}
    result = CliRunner().invoke(cli, ["outbox", "resend", "--fund", "caf", "--since", "hier"], env=env)
    assert result.exit_code == 2
    assert "horodatage illisible" in result.output
    helped = CliRunner().invoke(cli, ["outbox", "resend", "--help"], env=env)
    assert helped.exit_code == 0 and "--since" in helped.output and "doublon" in helped.output


def test_purge_drops_only_sent_ids_past_the_acceptance_window(tmp_path: Path) -> None:
    """``publish`` purges before it adds its rows: what goes is sent and observed before the
    window (no line of a run can be), what waits is never dropped."""
    from services.producer.outbox import KEEP_SENT_DAYS

    today = dt.date(2026, 12, 7)
    old = (today - dt.timedelta(days=KEEP_SENT_DAYS + 1)).isoformat()
    with Outbox(tmp_path / "o.db") as box:
        sent_old = [Row(f"{i:032x}", old, b"k", b"{}") for i in range(3)]
        _sent(box, sent_old)
        box.add([Row("f" * 32, old, b"k", b"{}")])  # old but still waiting: kept
        _sent(box, _rows(2, start=100), offset=3)  # recent: kept
        assert box.purge_sent(today) == 3
        assert box.known([r.signal_id for r in sent_old] + ["f" * 32]) == {"f" * 32}
        assert box.pending_count() == 1 and box.has_pending()
        assert box.status().sent == 2
