"""Consent files, the casebook's ledger hook, retention periods and tombstones (no broker)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.app.bootstrap import audit_sink
from services.app.purge import apply_purge, count_subjects
from services.casebook import store
from services.casebook import tables as ct
from services.casebook.audit import access_log
from services.casebook.retention import plan_purge
from services.casebook.sink import SINK_TOPICS, apply_records
from services.core.access import AccessEvent
from services.core.messages import ConsentEvent, parse
from services.core.registry import load_registry
from services.core.signing import verify
from services.core.types import Fund, Purpose
from services.errors import InputError
from services.ledger import tables as lt
from services.ledger.entries import Action, is_about, parse_entry
from services.ledger.store import Ledger
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings
from services.platform.topics import SITUATIONS_TOPIC
from services.platform.tracking import Record, TrackedConsumer
from services.producer.consent import consent_outbox_path, record_file
from services.producer.keys import init_exchange_key, init_fund_keys, registry_path
from services.producer.outbox import Outbox
from services.producer.sdk import SignalBuilder, SignalInput
from tests.support import situations as factory
from tests.support.signalkeys import open_signal

UTC = dt.UTC
NIR = "1 55 05 35 006 084 36"  # born 1955 (not a real person's: a synthetic, valid key)


def _valid_nir() -> str:
    from stdnum.fr import nir as stdnum_nir

    body = "1550535006084"
    return body + stdnum_nir.calc_check_digits(body)


def _keys(settings: Settings) -> None:
    init_exchange_key(settings.key_dir)
    init_fund_keys(settings.key_dir, Fund.CAF)


def test_consent_file_is_pseudonymised_signed_and_reported(offline_settings: Settings,
                                                           tmp_path: Path) -> None:
    _keys(offline_settings)
    nir = _valid_nir()
    path = tmp_path / "consents.csv"
    path.write_text(
        "nir;reference_consentement;finalites;date_effet;departement\n"
        f"{nir};HELP-2026-000123;acces_aux_droits,prevention_perte_autonomie;2026-01-04;35\n"
        f"{nir[:-2]}00;HELP-2026-000124;acces_aux_droits;2026-01-04;35\n"   # bad NIR key
        f"{nir};help 2026 texte;acces_aux_droits;2026-01-04;35\n"          # bad reference
        f"{nir};HELP-2026-000125;soins_medicaux;2026-01-04;35\n"           # unknown purpose
        f"{nir};HELP-2026-000126;acces_aux_droits;2999-01-04;35\n"         # future date
        f"{nir};HELP-2026-000127;;2026-01-04;35\n",                        # consent needs a purpose
        encoding="utf-8")
    report = tmp_path / "rejets.csv"
    summary = asyncio.run(record_file(offline_settings, Fund.CAF, "consentement_donne", path, report,
                                      connect=False))
    assert summary.read == 6 and summary.new == 1 and summary.exit_code == 1  # kept: no broker
    assert {r.value: n for r, n in summary.rejected.items()} == {
        "cle_nir_invalide": 1, "base_legale_invalide": 1, "finalite_non_autorisee": 2,
        "date_future": 1}
    text = report.read_text(encoding="utf-8-sig")
    assert nir not in text and nir[:-2] not in text  # masked

    with Outbox(consent_outbox_path(offline_settings.var_dir, Fund.CAF)) as box:
        pending = box.pending(10)
    assert len(pending) == 1
    event = parse(ConsentEvent, pending[0].value)
    assert nir.encode() not in pending[0].value
    assert event.kind == "consentement_donne" and event.emitter == "caf-35"
    assert event.effective_at > dt.datetime(2026, 1, 4, tzinfo=UTC)  # when recorded, not the form's date
    # Signed by the fund's key, as the correlator checks it.
    registry = load_registry(registry_path(offline_settings.key_dir))
    key = registry.signing_key(Fund.CAF, event.signature.key_id)
    assert key is not None and verify(json.loads(pending[0].value), key)
    # The same pseudonym as a signal about the same NIR (key = pseudonym value).
    row = SignalBuilder(offline_settings, Fund.CAF).build(SignalInput(
        nir=nir, category="impaye_loyer", observed_on=dt.date.today() - dt.timedelta(days=3),
        departement="35", reference="DOS-1"))
    assert open_signal(offline_settings, row.value).pseudonym == event.pseudonym
    assert pending[0].key == event.pseudonym.value.encode()

    # A re-run adds nothing (deterministic ids).
    again = asyncio.run(record_file(offline_settings, Fund.CAF, "consentement_donne", path, report,
                                    connect=False))
    assert again.new == 0 and again.already == 1


def test_objection_takes_effect_when_recorded_and_covers_every_purpose(offline_settings: Settings,
                                                                       tmp_path: Path) -> None:
    _keys(offline_settings)
    path = tmp_path / "oppositions.csv"
    path.write_text(f"nir;reference_consentement;finalites;date_effet\n{_valid_nir()};OPP-2026-7;;\n",
                    encoding="utf-8")
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    summary = asyncio.run(record_file(offline_settings, Fund.CAF, "opposition", path,
                                      tmp_path / "r.csv", now=now, connect=False))
    assert summary.new == 1 and not summary.rejected
    with Outbox(consent_outbox_path(offline_settings.var_dir, Fund.CAF)) as box:
        event = parse(ConsentEvent, box.pending(1)[0].value)
    assert event.kind == "opposition" and event.effective_at == now
    assert [p.value for p in event.purposes] == ["acces_aux_droits", "prevention_perte_autonomie"]
    assert event.emitter == f"caf-{offline_settings.territory}"


def test_casebook_access_goes_to_the_ledger_in_the_same_transaction(offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    sit = factory.situation(1)
    with engine.begin() as conn:
        store.apply_situations(conn, [sit])
        case_number = conn.execute(sa.select(ct.situations.c.case_number)).scalar_one()
    sink = audit_sink(offline_settings, engine)
    sink.record(AccessEvent(user_id="agent.caf-35.0042", role="agent", fund="caf",
                            action="consultation_dossier", case_number=case_number,
                            situation_id=sit.situation_id, pseudonym=sit.pseudonym.value))
    sink.record(AccessEvent(user_id="agent.caf-35.0042", role="agent", fund="caf", action="export",
                            detail="csv 2026-11 : 12 dossiers"))
    ledger = Ledger(engine)
    entries = [parse_entry(data) for _, data in ledger.query(actor="agent.caf-35.0042")]
    assert [e.action for e in entries] == [Action.DOSSIER_CONSULTE, Action.LISTE_EXPORTEE]
    assert is_about(entries[0], sit.pseudonym) and entries[0].case_id == sit.situation_id
    assert entries[1].count == 12 and entries[1].person is None
    assert len(access_log(engine)) == 2

    # A user id the ledger cannot hold: the access is refused and nothing is written at all.
    bad = AccessEvent(user_id="Jean Dupont", role="agent", fund="caf", action="export")
    with pytest.raises(InputError, match="ledger"):
        sink.record(bad)
    assert len(access_log(engine)) == 2 and ledger.size() == 2
    engine.dispose()


def test_tombstone_deletes_the_situation_and_its_followups(offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    sit = factory.situation(2)
    fu = factory.followup(2, "caf", "aide_financiere_individuelle")
    value = sit.model_dump_json().encode()
    sink = TrackedConsumer(engine, "t", SINK_TOPICS, apply_records)
    result = sink.process([
        Record(SITUATIONS_TOPIC, 0, 0, 0, sit.situation_id.encode(), value),
        Record("help.followups.v1", 0, 0, 0, None, fu.model_dump_json().encode()),
    ]).result
    assert result.applied.situations == 1
    result = sink.process([Record(SITUATIONS_TOPIC, 0, 1, 0, sit.situation_id.encode(), None)]).result
    assert result.applied.erased == 1 and result.skipped == 0
    with engine.connect() as conn:
        assert store.count_rows(conn, ct.situations) == 0
        assert store.count_rows(conn, ct.followups) == 0
    # Event then tombstone in one batch: the order of the topic is kept.
    sink.process([Record(SITUATIONS_TOPIC, 0, 2, 0, sit.situation_id.encode(), value),
                  Record(SITUATIONS_TOPIC, 0, 3, 0, sit.situation_id.encode(), None)])
    with engine.connect() as conn:
        assert store.count_rows(conn, ct.situations) == 0
    engine.dispose()


def test_objection_leaves_no_pseudonym_in_casebook_tables(offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    sit = factory.situation(3, person="p3")
    with engine.begin() as conn:
        store.apply_situations(conn, [sit])
        store.apply_consents(conn, [factory.objection("p3", effective_at=dt.datetime(2026, 11, 25, tzinfo=UTC))])
        for table in ct.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert sit.pseudonym.value not in repr(tuple(row)), table.name
        # A replay of the situation does not bring it back.
        store.apply_situations(conn, [sit])
        assert store.count_rows(conn, ct.situations) == 0
    engine.dispose()


def test_purge_periods(offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    as_of = dt.datetime(2028, 6, 1, tzinfo=UTC)
    t = dt.datetime
    sits = [
        # 1: quiet 13 months (last activity 2027-05) -> 12-month rule: purged
        factory.situation(10, occurred_at=t(2027, 4, 20, tzinfo=UTC), last_signal_on=dt.date(2027, 4, 20)),
        # 2: quiet 11 months -> kept
        factory.situation(11, occurred_at=t(2027, 7, 2, tzinfo=UTC), last_signal_on=dt.date(2027, 7, 1)),
        # 3: closed by the correlator 19 months ago -> 18-month rule: purged
        factory.situation(12, occurred_at=t(2026, 10, 20, tzinfo=UTC), kind="fermee",
                          last_signal_on=dt.date(2026, 10, 1)),
        # 4: closed by the correlator 14 months ago -> kept (closed cases: 18 months)
        factory.situation(13, occurred_at=t(2027, 4, 1, tzinfo=UTC), kind="fermee",
                          last_signal_on=dt.date(2027, 3, 1)),
    ]
    # 2 gets a recent follow-up: activity.
    with engine.begin() as conn:
        store.apply_situations(conn, sits)
        store.apply_followups(conn, [factory.followup(10, "caf", "aide_financiere_individuelle",
                                                      recorded_at=t(2027, 4, 25, tzinfo=UTC))])
    plan = plan_purge(engine, offline_settings, as_of=as_of, rules_window_days=90)
    assert sorted(plan.inactive) == [sits[0].situation_id]
    assert sorted(plan.closed) == [sits[2].situation_id]
    assert plan.followups == 1
    assert any("sous la limite de 6 mois" in line for line in plan.lines(dry_run=True))
    # Shorter periods by setting.
    short = plan_purge(engine, load_settings(retention_situations_months=6, retention_closed_months=12),
                       as_of=as_of)
    assert len(short.inactive) == 2 and len(short.closed) == 2

    # The audit sink's persons of signals whose receipt never came: those read before the
    # signals' period (6 months before --as-of), and undated rows (an earlier version), go.
    subjects = [("a" * 32, "2027-11-30T23:59:59.000000Z"), ("b" * 32, "2027-12-01T00:00:01.000000Z"),
                ("c" * 32, None)]
    with engine.begin() as conn:
        conn.execute(sa.insert(lt.signal_subjects), [
            {"signal_id": i, "key_id": "exch-2026-01", "value": "P" * 43, "seen_at": at} for i, at in subjects])
    plan = plan_purge(engine, offline_settings, as_of=as_of, rules_window_days=90)
    count_subjects(engine, plan)
    assert plan.signal_subjects == 2

    ledger = Ledger(engine)
    assert apply_purge(engine, ledger, plan) == 2
    with engine.connect() as conn:
        assert list(conn.execute(sa.select(lt.signal_subjects.c.signal_id)).scalars()) == ["b" * 32]
        left = {s.situation_id for s in store.all_situations(conn)}
        assert left == {sits[1].situation_id, sits[3].situation_id}
        assert store.count_rows(conn, ct.followups) == 0
    (entry,) = [parse_entry(d) for _, d in ledger.query(action="purge_conservation")]
    assert entry.count == 2 and entry.person is None and entry.case_id is None
    # dated at the time of the run; the cut-off is --as-of, the date the periods count back from
    assert abs(entry.time - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)
    assert entry.cut_off == as_of.date()
    # the erasure commands name each purged situation's person
    assert set(plan.persons) == set(plan.situation_ids)
    assert {v for _, v in plan.persons.values()} == {s.pseudonym.value for s in (sits[0], sits[2])}
    engine.dispose()


def test_erasure_leaves_no_followup_detail_in_outbox_or_access_log(offline_settings: Settings) -> None:
    """The follow-up of an erased case: not in the outbox (published or not), not in the
    access log beyond the ledger's minimal form (who, when, which case)."""
    from services.casebook.followups import record_followup

    engine = open_engine(offline_settings.database_url)
    sits = [factory.situation(n, person=f"p{n}") for n in (4, 5)]
    with engine.begin() as conn:
        store.apply_situations(conn, sits)
    cases = {sid: number for sid, number in _case_numbers(engine)}
    for s in sits:
        record_followup(engine, offline_settings.taxonomy, case_number=cases[s.situation_id], fund="caf",
                        action="aide_financiere_individuelle", outcome="accorde", user="agent.caf-35.0042")
        audit_sink(offline_settings, engine).record(AccessEvent(
            user_id="agent.caf-35.0042", role="cli", fund="caf", action="suite_enregistree",
            case_number=cases[s.situation_id], situation_id=s.situation_id,
            pseudonym=s.pseudonym.value, detail="aide_financiere_individuelle accorde"))
    with engine.begin() as conn:  # the first one published
        first = store.pending_outbox(conn)[0][0]
        store.mark_published(conn, [first], dt.datetime.now(UTC))
        published = conn.execute(sa.select(ct.outbox.c.payload).where(ct.outbox.c.id == first)).scalar_one()
        assert published == ""  # a published row keeps no payload
    assert all(row["detail"] == "" for row in access_log(engine))  # minimal form from the start
    with engine.begin() as conn:
        store.apply_consents(conn, [factory.objection("p4", effective_at=dt.datetime.now(UTC))])
        store.apply_tombstones(conn, [sits[1].situation_id])
        assert store.count_rows(conn, ct.outbox) == 0
        for table in ct.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert "accorde" not in repr(tuple(row)), table.name
    engine.dispose()


def _case_numbers(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            sa.select(ct.situations.c.situation_id, ct.situations.c.case_number))]


def test_withdrawal_erases_only_the_cases_that_showed_its_purpose(offline_settings: Settings) -> None:
    engine = open_engine(offline_settings.database_url)
    sit = factory.situation(6, person="p6")  # purposes: acces_aux_droits
    other = factory.objection("p6", kind="consentement_retire", effective_at=dt.datetime(2026, 11, 25, tzinfo=UTC))
    other = other.model_copy(update={"purposes": [Purpose.PREVENTION_PERTE_AUTONOMIE]})
    with engine.begin() as conn:
        store.apply_situations(conn, [sit])
        assert store.apply_consents(conn, [other]) == 0  # another purpose: kept
        assert store.count_rows(conn, ct.situations) == 1
        withdrawn = factory.objection("p6", kind="consentement_retire",
                                      effective_at=dt.datetime(2026, 11, 26, tzinfo=UTC))
        assert store.apply_consents(conn, [withdrawn]) == 1
        store.apply_situations(conn, [sit])  # a replay of what was erased: not back
        assert store.count_rows(conn, ct.situations) == 0
        # a version that occurs after the erasure (a consent recorded later): back in the casebook
        later = factory.situation(6, person="p6", version=2,
                                  occurred_at=dt.datetime(2026, 11, 27, tzinfo=UTC))
        store.apply_situations(conn, [later])
        assert store.count_rows(conn, ct.situations) == 1
    engine.dispose()


def test_markers_are_keyed_and_expire(offline_settings: Settings) -> None:
    """The "do not process" markers: nothing anyone holding the pseudonym can recompute
    (neither the pseudonym, nor its unkeyed digest, nor the situation id), they still stop
    a replay, and the purge drops them after the closed cases' period."""
    from services.casebook.config import marker_key

    markers = store.Markers(marker_key(offline_settings))
    assert marker_key(offline_settings) == markers.key and len(markers.key or b"") == 32
    engine = open_engine(offline_settings.database_url)
    sit = factory.situation(7, person="p7")
    with engine.begin() as conn:
        store.apply_situations(conn, [sit], markers)
        store.apply_consents(conn, [factory.objection("p7", effective_at=dt.datetime(2026, 11, 25, tzinfo=UTC))],
                             markers)
        recomputable = {sit.pseudonym.value, store.objection_key(sit.pseudonym.value), sit.situation_id}
        for table in ct.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert not recomputable & {str(v) for v in row}, table.name
        assert store.count_rows(conn, ct.objections) == 1 == store.count_rows(conn, ct.erased_situations)
        store.apply_situations(conn, [sit], markers)  # a replay: still stopped
        assert store.count_rows(conn, ct.situations) == 0
    plan = plan_purge(engine, offline_settings, as_of=dt.datetime(2028, 6, 1, tzinfo=UTC))
    apply_purge(engine, Ledger(engine), plan)  # 18 months after: the markers go
    with engine.connect() as conn:
        assert store.count_rows(conn, ct.objections) == 0 == store.count_rows(conn, ct.erased_situations)
    engine.dispose()
