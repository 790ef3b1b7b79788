"""Every case a list view or an export showed is its own ledger entry (the case, the
person's commitment, who, which fund, why), and `audit query --case` takes the case number
the worklist prints."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from services.app.bootstrap import CASES
from services.casebook import tables as ct
from services.casebook.cases import CasebookCases
from services.casebook.store import apply_situations
from services.core.access import AccessEvent
from services.errors import InputError
from services.ledger import cli as ledger_cli
from services.ledger.casebook import LedgerAuditSink
from services.ledger.entries import Action, is_about, parse_entry
from services.ledger.store import Ledger, ensure_ready
from services.platform.db import open_engine
from services.platform.settings import Settings
from tests.support.cli import wired_group
from tests.support.situations import situation

group = wired_group(ledger_cli.register)


def test_a_list_export_enters_each_case_it_showed(offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    ensure_ready(engine)
    events = [situation(n) for n in (1, 2, 3)]
    with engine.begin() as conn:
        apply_situations(conn, events)
        numbers = {r.situation_id: r.case_number for r in conn.execute(
            sa.select(ct.situations.c.situation_id, ct.situations.c.case_number))}
    shown = tuple(numbers[e.situation_id] for e in events[:2])
    LedgerAuditSink(Ledger(engine), CasebookCases()).record(AccessEvent(
        user_id="agent.caf-35.0042", role="agent", fund="caf", action="export",
        detail="csv 2026-11 : 2 dossiers", cases=shown,
        at=dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)))
    ledger = Ledger(engine)
    entries = [parse_entry(d) for _, d in ledger.query(action=Action.LISTE_EXPORTEE.value)]
    listing = next(e for e in entries if e.case_id is None)
    per_case = [e for e in entries if e.case_id is not None]
    assert listing.count == 2 and len(per_case) == 2
    for entry, event in zip(per_case, events[:2], strict=True):
        assert entry.case_id == event.situation_id and entry.ref == listing.entry_id
        assert is_about(entry, event.pseudonym) and not is_about(entry, events[2].pseudonym)
        assert entry.subject is None and entry.fund is not None and entry.fund.value == "caf"

    result = CliRunner().invoke(group, ["audit", "query", "--case", shown[0]],
                                obj={"settings": offline_settings})
    assert result.exit_code == 0, result.output
    assert "1 entrée(s)" in result.output and "liste_exportee" in result.output.replace(
        "Liste de travail exportée", "liste_exportee")
    for bad, why in (("35-2026-11-9999", "no case 35-2026-11-9999 in the casebook"),
                     ("dossier-42", "neither a case number nor a situation id")):
        result = CliRunner().invoke(group, ["audit", "query", "--case", bad],
                                    obj={"settings": offline_settings})
        assert isinstance(result.exception, InputError) and why in result.exception.what
    engine.dispose()


def test_a_list_naming_a_case_the_casebook_does_not_hold_is_refused(
        offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    ensure_ready(engine)
    with pytest.raises(InputError, match="does not hold"):
        LedgerAuditSink(Ledger(engine), CasebookCases()).record(AccessEvent(
            user_id="agent.caf-35.0042", role="agent", fund="caf", action="consultation_liste",
            cases=("35-2026-11-0001",)))
    engine.dispose()


def test_a_follow_up_names_the_person_and_is_replayed_as_it_was(
        offline_settings: Settings) -> None:
    from services.core.messages import to_wire
    from services.ledger.sink import EntryMaker
    from services.platform.topics import FOLLOWUPS_TOPIC
    from services.platform.tracking import Record
    from tests.support.situations import followup

    engine = open_engine(offline_settings.database_url)
    ensure_ready(engine)
    sit = situation(1)
    with engine.begin() as conn:
        apply_situations(conn, [sit])
    ledger = Ledger(engine)
    maker = EntryMaker(None, ledger, CASES)
    record = Record(FOLLOWUPS_TOPIC, 0, 0, 0, None, to_wire(followup(1, "caf", "fsl")))
    (entry,) = maker.entries(record)
    assert is_about(entry, sit.pseudonym) and entry.case_id == sit.situation_id
    assert entry.fund is not None and entry.fund.value == "caf"
    ledger.append([entry])
    with engine.begin() as conn:
        conn.execute(sa.delete(ct.situations))
    (replayed,) = maker.entries(record)
    assert replayed == entry and replayed.canonical() == entry.canonical()
    engine.dispose()


def test_the_commitment_of_the_documented_example() -> None:
    from services.ledger.entries import subject_commitment

    assert subject_commitment("-" + "A" * 42, "0123456789abcdef0123456789abcdef") == \
        "eSlokFoRdX2y2MJEdztGRoPofNA8UXGQ6CA5CKfa5lw"


def test_a_receipt_names_the_person_of_its_signal_even_read_before_it(
        offline_settings: Settings) -> None:
    """The receipt says only the signal's id: the sink reads the signal topics too, and a
    receipt read before its signal waits (its partition's offset stays) until the signal
    comes; a replay appends nothing and leaves no row behind."""
    import json

    from services.core.messages import Receipt, SourcePosition, to_wire
    from services.core.types import Fund
    from services.ledger import tables as lt
    from services.ledger.sink import EntryMaker, audit_tracker
    from services.platform.topics import receipt_topic, signal_topic
    from services.platform.tracking import Record, load_positions
    from tests.support.situations import hex32, pseudonym

    engine = open_engine(offline_settings.database_url)
    ensure_ready(engine)
    ledger = Ledger(engine)
    maker = EntryMaker(None, ledger, CASES)
    person = pseudonym(7)

    def signal(n: int) -> Record:
        value = json.dumps({"signal_id": hex32("signal", n),
                            "pseudonym": person.model_dump()}).encode()
        return Record(signal_topic(Fund.CAF), 0, n, 0, None, value)

    def receipt(n: int) -> Record:
        value = to_wire(Receipt(
            schema_version="1.0", receipt_id=hex32("receipt", n), fund=Fund.CAF,
            signal_id=hex32("signal", n), status="accepte", reason=None,
            processed_at=dt.datetime(2026, 11, 10, 9, n, tzinfo=dt.UTC),
            source=SourcePosition(topic=signal_topic(Fund.CAF), partition=0, offset=n)))
        return Record(receipt_topic(Fund.CAF), 0, n, 0, None, value)

    def rows() -> int:
        with engine.connect() as conn:
            return len(conn.execute(sa.select(lt.signal_subjects)).all())

    first = audit_tracker(ledger, maker).process([signal(0), receipt(0), receipt(1)]).result
    assert first.held == {(receipt_topic(Fund.CAF), 0): 1} and first.appended == 1
    with engine.connect() as conn:
        # the next offset is the held receipt's
        assert load_positions(conn, "help-audit-sink")[(receipt_topic(Fund.CAF), 0)] == 1
    second = audit_tracker(ledger, maker).process([signal(1), receipt(1)]).result
    assert not second.held and second.appended == 1
    entries = [parse_entry(d) for _, d in ledger.query(action=Action.SIGNALEMENT_ACCEPTE.value)]
    assert len(entries) == 2 and all(is_about(e, person) for e in entries)
    assert all(e.fund is Fund.CAF for e in entries) and rows() == 0

    fresh = EntryMaker(None, ledger, CASES)  # a restart replays both topics
    replay = audit_tracker(ledger, fresh).process([signal(0), signal(1), receipt(0), receipt(1)]).result
    assert replay.appended == 0 and rows() == 0
    audit_tracker(ledger, fresh).process([signal(2)])
    assert rows() == 1  # kept for its receipt, in a later run
    later = audit_tracker(ledger, EntryMaker(None, ledger, CASES)).process([receipt(2)]).result
    assert later.appended == 1 and rows() == 0
    engine.dispose()
