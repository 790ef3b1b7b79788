"""Recording follow-ups: the checks, the outbox, closing a case."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.casebook import casekeys, store
from services.casebook import tables as t
from services.casebook.followups import record_followup
from services.casebook.model import Month, closed_at
from services.casebook.sink import open_followups
from services.casebook.worklist import load_worklist
from services.core.messages import SealedFollowupEvent, parse_followup
from services.core.taxonomy import Taxonomy
from services.errors import InputError
from tests.support import situations as F
from tests.support.cli import run_cli

UTC = dt.UTC


@pytest.fixture
def one_case(engine: sa.Engine) -> str:
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, funds=("caf", "urssaf"))])
    return "35-2026-11-0001"


@pytest.mark.integration
def test_record_writes_the_row_and_the_outbox_together(engine: sa.Engine, taxonomy: Taxonomy,
                                                       one_case: str) -> None:
    event = record_followup(engine, taxonomy, case_number=one_case, fund="caf", action="fsl",
                            outcome="accorde", user="agent.caf35",
                            now=dt.datetime(2026, 11, 20, tzinfo=UTC))
    with engine.connect() as conn:
        fus = store.followups_of(conn, event.situation_id)
        pending = store.pending_outbox(conn)
    assert [(f.fund, f.action, f.outcome) for f in fus] == [("caf", "fsl", "accorde")]
    assert len(pending) == 1 and pending[0][1] == "help.followups.v1"
    # On the topic the detail is sealed under the case's key: readable while the case is...
    wire = parse_followup(pending[0][3].encode())
    assert isinstance(wire, SealedFollowupEvent)
    assert b"fsl" not in pending[0][3].encode() and b"accorde" not in pending[0][3].encode()
    assert wire.recorded_by == event.recorded_by and wire.situation_id == event.situation_id
    with engine.connect() as conn:
        assert open_followups(conn, [wire]) == [event]
        key = casekeys.case_keys(conn, [event.situation_id])[event.situation_id]
    # ...not under another case's key, nor moved to another event...
    assert casekeys.open_followup(wire, bytes(32)) is None
    assert casekeys.open_followup(wire.model_copy(update={"event_id": "0" * 32}), key) is None
    # ...and never again once the case is erased: the key goes with it.
    with engine.begin() as conn:
        assert store.apply_tombstones(conn, [event.situation_id]) == 1
    with engine.connect() as conn:
        assert casekeys.case_keys(conn, [event.situation_id]) == {}
        assert open_followups(conn, [wire]) == []


@pytest.mark.integration
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"case_number": "35-2026-11-0099"}, "dossier inconnu"),
    ({"case_number": "35-2026-11"}, "numéro de dossier invalide"),
    ({"fund": "cpam", "action": "ouverture_c2s_puma"}, "pas concerné"),
    ({"action": "echeancier_paiement"}, "relève de urssaf"),
    ({"action": "pas_une_suite"}, "suite inconnue"),
    ({"outcome": "peut_etre"}, "issue inconnue"),
    ({"fund": "pole_emploi"}, "organisme inconnu"),
])
def test_bad_followups_are_refused_and_write_nothing(engine: sa.Engine, taxonomy: Taxonomy, one_case: str,
                                                     kwargs: dict[str, str], message: str) -> None:
    args = {"case_number": one_case, "fund": "caf", "action": "fsl", "outcome": "accorde", "user": "agent.caf35"}
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        record_followup(engine, taxonomy, **args)  # type: ignore[arg-type]
    with engine.connect() as conn:
        assert store.count_rows(conn, t.followups) == 0
        assert store.count_rows(conn, t.outbox) == 0


def test_a_case_closes_when_every_fund_answered(sqlite_engine: sa.Engine, taxonomy: Taxonomy) -> None:
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, funds=("caf", "urssaf"),
                                                  occurred_at=dt.datetime(2026, 10, 3, tzinfo=UTC))])
    record_followup(sqlite_engine, taxonomy, case_number="35-2026-10-0001", fund="caf", action="fsl",
                    outcome="accorde", user="agent.caf35", now=dt.datetime(2026, 10, 20, tzinfo=UTC))
    nov = Month(2026, 11)
    wl = load_worklist(sqlite_engine, taxonomy, month=nov, territory="35", fund=None, close_after_months=6)
    assert [(c.case_number, c.reason.code) for c in wl.cases] == [("35-2026-10-0001", "en_attente")]
    record_followup(sqlite_engine, taxonomy, case_number="35-2026-10-0001", fund="urssaf",
                    action="echeancier_paiement", outcome="accepte", user="agent.urssaf35",
                    now=dt.datetime(2026, 10, 28, tzinfo=UTC))
    assert load_worklist(sqlite_engine, taxonomy, month=nov, territory="35", fund=None,
                         close_after_months=6).cases == ()
    with sqlite_engine.connect() as conn:
        sit = store.situation_by_case(conn, "35-2026-10-0001")
        fus = store.followups_of(conn, sit.situation_id)  # type: ignore[union-attr]
    assert sit is not None
    assert closed_at(sit, fus, close_after_months=6, as_of=nov.start) == (
        dt.datetime(2026, 10, 28, tzinfo=UTC), "suites_enregistrees")


def test_a_case_closes_after_months_without_signal(sqlite_engine: sa.Engine, taxonomy: Taxonomy) -> None:
    with sqlite_engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, occurred_at=dt.datetime(2026, 6, 3, tzinfo=UTC))])
    for months, expected in ((3, 0), (6, 1)):
        wl = load_worklist(sqlite_engine, taxonomy, month=Month(2026, 11), territory="35", fund=None,
                           close_after_months=months)
        assert len(wl.cases) == expected


def test_cli_records_and_keeps_it_when_the_broker_is_down(tmp_path: Path) -> None:
    from services.platform.db import open_engine

    engine = open_engine(f"sqlite:///{tmp_path / 'casebook.db'}")
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1)])
    code, output = run_cli(tmp_path, "followup", "record", "--case", "35-2026-11-0001", "--fund", "caf",
                           "--action", "fsl", "--outcome", "propose", "--user", "agent.caf35")
    assert code == 0, output
    assert "kept in the outbox" in output
    code, output = run_cli(tmp_path, "followup", "record", "--case", "35-2026-11-0001", "--fund", "caf",
                           "--action", "echeancier_paiement", "--outcome", "propose", "--user", "agent.caf35")
    assert code == 2 and "relève de urssaf" in output and "Traceback" not in output
    with engine.connect() as conn:
        assert store.count_rows(conn, t.followups) == 1
        assert len(store.pending_outbox(conn)) == 1
        log = list(conn.execute(sa.select(t.access_log.c.action, t.access_log.c.case_number)))
    engine.dispose()
    assert log == [("suite_enregistree", "35-2026-11-0001")]


class _SlowProducer:
    """Sends after a pause (the broker's round trip), keeping what it was given."""

    def __init__(self, sent: list[bytes], fail_after: int | None = None) -> None:
        self.sent = sent
        self.fail_after = fail_after

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        import asyncio

        from aiokafka.errors import KafkaConnectionError

        await asyncio.sleep(0.01)
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise KafkaConnectionError("broker gone")
        self.sent.append(value)


def _three_followups(engine: sa.Engine, taxonomy: Taxonomy, case: str) -> None:
    for i, action in enumerate(("fsl", "aide_financiere_individuelle", "fsl")):
        record_followup(engine, taxonomy, case_number=case, fund="caf", action=action, outcome="accorde",
                        user="agent.caf35", now=dt.datetime(2026, 11, 20, 10, i, tzinfo=UTC))


@pytest.mark.integration
async def test_the_timer_and_a_flush_together_send_each_outbox_row_once(
        engine: sa.Engine, taxonomy: Taxonomy, one_case: str) -> None:
    """The sink's timer and a CLI flush may publish the outbox at the same moment: each row
    is claimed by one of them, so the topic gets each follow-up once."""
    import asyncio

    from services.casebook.followups import publish_outbox

    _three_followups(engine, taxonomy, one_case)
    sent: list[bytes] = []
    counts = await asyncio.gather(*(publish_outbox(engine, _SlowProducer(sent))  # type: ignore[arg-type]
                                    for _ in range(2)))
    assert sorted(counts) == [0, 3] and len(sent) == len(set(sent)) == 3
    with engine.connect() as conn:
        assert store.pending_outbox(conn) == []


@pytest.mark.integration
async def test_a_failed_or_dead_sender_leaves_its_rows_to_the_next(
        engine: sa.Engine, taxonomy: Taxonomy, one_case: str) -> None:
    from services.casebook.followups import publish_outbox

    _three_followups(engine, taxonomy, one_case)
    sent: list[bytes] = []
    assert await publish_outbox(engine, _SlowProducer(sent, fail_after=1)) == 1  # type: ignore[arg-type]
    assert await publish_outbox(engine, _SlowProducer(sent)) == 2  # type: ignore[arg-type]  # released at once
    assert len(set(sent)) == 3
    # A sender killed while holding a row: its claim holds for the lease, then expires.
    record_followup(engine, taxonomy, case_number=one_case, fund="caf", action="fsl", outcome="accorde",
                    user="agent.caf35", now=dt.datetime(2026, 11, 21, tzinfo=UTC))
    now = dt.datetime.now(UTC)
    with engine.begin() as conn:
        assert len(store.claim_outbox(conn, "dead", now)) == 1
    assert await publish_outbox(engine, _SlowProducer(sent)) == 0  # still held
    with engine.begin() as conn:
        conn.execute(t.outbox.update().values(claimed_at=now - store.OUTBOX_LEASE - dt.timedelta(seconds=1)))
    assert await publish_outbox(engine, _SlowProducer(sent)) == 1
