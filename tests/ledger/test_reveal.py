"""The ``reveal`` entry: a fund's user opens the fund's own sealed references, and the ledger
says who revealed which case's reference, when and why — never the reference itself.

Units (no broker): which case a token belongs to in each export format, the signed event,
"recorded before shown", and the audit sink's entry (case proved by the seal's digest,
forged events refused, a replay entered as it was). Integration, on the real embedded
broker: casebook export → ``help-exchange reveal`` → ``help.reveals.v1`` → audit sink →
``audit query --case``, and a replay of the topic appends nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from services.app.bootstrap import CASES
from services.app.cli import cli
from services.casebook import tables as ct
from services.casebook.model import Month
from services.casebook.render import render
from services.casebook.store import apply_situations
from services.casebook.worklist import load_worklist
from services.core.messages import (
    FundRef,
    RevealEvent,
    SealedRef,
    SituationEvent,
    parse,
    sealed_digest,
)
from services.core.registry import load_registry
from services.core.signing import verify
from services.core.types import Fund, Purpose
from services.ledger import tables as lt
from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, entry_id_for, is_about, parse_entry
from services.ledger.sink import AuditSink, EntryMaker
from services.ledger.store import Ledger, ensure_ready
from services.platform import tracking
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings
from services.platform.topics import REVEALS_TOPIC
from services.platform.tracking import Record
from services.producer.keys import init_exchange_key, init_fund_keys, load_fund_secrets, registry_path
from services.producer.reveal import RevealPublisher, reveal, reveal_events, reveal_file
from services.producer.sdk import SignalBuilder, SignalInput
from services.producer.seal import token
from tests.support.extracts import make_nir
from tests.support.signalkeys import open_signal, serve_keys
from tests.support.situations import situation

ACTOR = "agent.caf-35.0042"
NOW = dt.datetime(2026, 11, 20, 14, 5, 0, 123456, tzinfo=dt.UTC)


def _seal(settings: Settings, fund: Fund, reference: str, rng: random.Random) -> SealedRef:
    """A real seal of ``reference`` by ``fund`` (as its signals carry it)."""
    built = SignalBuilder(settings, fund).build(SignalInput(
        make_nir(rng), "separation" if fund is Fund.CAF else "non_recours_c2s_puma",
        dt.date.today() - dt.timedelta(days=2), "35", reference))
    return open_signal(settings, built.value).sealed_ref


@pytest.fixture
def keyed(offline_settings: Settings) -> Settings:
    init_exchange_key(offline_settings.key_dir)
    for fund in (Fund.CAF, Fund.CPAM):
        init_fund_keys(offline_settings.key_dir, fund)
    return offline_settings


@pytest.fixture
def casebook(keyed: Settings) -> Iterator[tuple[sa.Engine, list[SituationEvent]]]:
    """A casebook with two cases: each holds a real CAF seal and a CPAM one."""
    rng = random.Random(7)
    events = []
    for n in (1, 2):
        refs = [FundRef(fund=Fund.CAF, sealed_ref=_seal(keyed, Fund.CAF, f"CAF-REF-{n}", rng)),
                FundRef(fund=Fund.CPAM, sealed_ref=_seal(keyed, Fund.CPAM, f"CPAM-REF-{n}", rng))]
        events.append(situation(n, funds=("caf", "cpam"), occurred_at=NOW - dt.timedelta(days=5))
                      .model_copy(update={"refs": refs}))
    engine = open_engine(keyed.database_url)
    ensure_ready(engine)
    with engine.begin() as conn:
        apply_situations(conn, events)
    yield engine, events
    engine.dispose()


def _case_numbers(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        s = ct.situations.c
        return {row.situation_id: row.case_number
                for row in conn.execute(sa.select(s.situation_id, s.case_number))}


def _export(engine: sa.Engine, settings: Settings, fmt: str, fund: str | None = "caf") -> bytes:
    wl = load_worklist(engine, settings.taxonomy, month=Month.parse(f"{NOW:%Y-%m}"), territory="35",
                       fund=fund, close_after_months=6)
    return render(wl, fmt)


@pytest.mark.parametrize("fmt", ["csv", "html", "json"])
def test_each_opened_reference_is_attributed_to_its_case(
        keyed: Settings, casebook: tuple[sa.Engine, list[SituationEvent]], tmp_path: Path,
        fmt: str) -> None:
    engine, events = casebook
    numbers = _case_numbers(engine)
    src = tmp_path / f"liste.{fmt}"
    src.write_bytes(_export(engine, keyed, fmt, fund=None))  # everyone's view: CPAM tokens too
    counts = reveal_file(keyed.key_dir, Fund.CAF, src, tmp_path / f"revele.{fmt}")
    expected = [(numbers[e.situation_id], e.refs[0].sealed_ref.value) for e in events]
    assert sorted(counts.revealed) == sorted(expected)
    assert counts.opened >= 2 and counts.foreign >= 2
    text = (tmp_path / f"revele.{fmt}").read_text(encoding="utf-8")
    assert "CAF-REF-1" in text and "CAF-REF-2" in text and "CPAM-REF-1" not in text


def test_a_token_before_any_case_number_has_no_case(keyed: Settings, tmp_path: Path) -> None:
    seal = _seal(keyed, Fund.CAF, "CAF-REF-9", random.Random(3))
    src = tmp_path / "notes.txt"
    src.write_text(f"{token(seal.key_id, seal.value)}\n35-2026-11-0001 ; {token(seal.key_id, seal.value)}\n",
                   encoding="utf-8")
    counts = reveal_file(keyed.key_dir, Fund.CAF, src, tmp_path / "out.txt")
    assert counts.opened == 2 and counts.revealed == [(None, seal.value)]  # one reveal per reference


def test_the_event_is_signed_and_carries_no_reference(keyed: Settings) -> None:
    seal = _seal(keyed, Fund.CAF, "CAF-REF-77", random.Random(5))
    secrets = load_fund_secrets(keyed.key_dir, Fund.CAF)
    rows = reveal_events(secrets, "caf-35", ACTOR, Purpose.PREVENTION_PERTE_AUTONOMIE,
                         [("35-2026-11-0001", seal.value)], NOW)
    (row,) = rows
    event = parse(RevealEvent, row.value)
    assert (event.fund, event.emitter, event.actor, event.purpose, event.case_number) == (
        Fund.CAF, "caf-35", ACTOR, Purpose.PREVENTION_PERTE_AUTONOMIE, "35-2026-11-0001")
    assert event.sealed_digest == sealed_digest(seal.value) and event.revealed_at == NOW
    key = load_registry(registry_path(keyed.key_dir)).signing_key(Fund.CAF, event.signature.key_id)
    assert key is not None and verify(json.loads(row.value), key)
    assert b"CAF-REF-77" not in row.value and seal.value.encode() not in row.value
    # a second reveal of the same reference is another access: another id
    again = reveal_events(secrets, "caf-35", ACTOR, Purpose.ACCES_AUX_DROITS,
                          [("35-2026-11-0001", seal.value)], NOW)
    assert again[0].signal_id != row.signal_id


def test_no_clear_copy_appears_if_the_record_cannot_be_kept(
        keyed: Settings, casebook: tuple[sa.Engine, list[SituationEvent]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = casebook
    src = tmp_path / "liste.csv"
    src.write_bytes(_export(engine, keyed, "csv"))
    out = tmp_path / "revele.csv"

    def refuse(self: RevealPublisher, rows: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(RevealPublisher, "stage", refuse)
    with pytest.raises(OSError):
        asyncio.run(reveal(keyed, Fund.CAF, src, out, actor=ACTOR, connect=False))
    assert not out.exists() and list(tmp_path.glob(".revele.csv.*")) == []


def _records(rows: list[bytes]) -> list[Record]:
    return [Record(REVEALS_TOPIC, 0, i, 0, b"caf", value) for i, value in enumerate(rows)]


def test_the_sink_enters_the_case_only_when_the_seal_proves_it(
        keyed: Settings, casebook: tuple[sa.Engine, list[SituationEvent]]) -> None:
    engine, events = casebook
    numbers = _case_numbers(engine)
    secrets = load_fund_secrets(keyed.key_dir, Fund.CAF)
    first, second = events
    seal = first.refs[0].sealed_ref.value
    rows = reveal_events(secrets, "caf-35", ACTOR, Purpose.ACCES_AUX_DROITS, [
        (numbers[first.situation_id], seal),            # the right case
        (numbers[second.situation_id], seal),           # attributed to the wrong case
        ("35-2026-11-9999", seal),                      # no such case
        (numbers[first.situation_id], first.refs[1].sealed_ref.value),  # the CPAM seal: not CAF's
    ], NOW)
    ledger = Ledger(engine)
    maker = EntryMaker(load_registry(registry_path(keyed.key_dir)), ledger, CASES)
    entries = [maker.entries(r) for r in _records([row.value for row in rows])]
    assert all(len(e) == 1 for e in entries)
    right, wrong, unknown, foreign = (e[0] for e in entries)
    assert (right.action, right.actor, right.purpose, right.legal_basis) == (
        Action.REFERENCE_REVELEE, ACTOR, LedgerPurpose.ACCES_AUX_DROITS, LedgerLegalBasis.L115_2_1)
    assert right.case_id == first.situation_id and is_about(right, first.pseudonym)
    assert right.time == NOW and right.ref == rows[0].signal_id
    assert right.entry_id == entry_id_for(Action.REFERENCE_REVELEE.value, rows[0].signal_id)
    for entry in (wrong, unknown, foreign):
        assert entry.case_id is None and entry.subject is None and entry.subject_commitment is None
    # a forged event (the signature does not verify) is not entered
    forged = json.loads(rows[0].value)
    forged["actor"] = "agent.caf-35.0666"
    assert maker.entries(_records([json.dumps(forged).encode()])[0]) == []


def test_a_replay_is_entered_as_it_was_even_after_the_case_is_purged(
        keyed: Settings, casebook: tuple[sa.Engine, list[SituationEvent]]) -> None:
    engine, events = casebook
    numbers = _case_numbers(engine)
    secrets = load_fund_secrets(keyed.key_dir, Fund.CAF)
    (row,) = reveal_events(secrets, "caf-35", ACTOR, Purpose.ACCES_AUX_DROITS,
                           [(numbers[events[0].situation_id], events[0].refs[0].sealed_ref.value)], NOW)
    ledger = Ledger(engine)
    maker = EntryMaker(load_registry(registry_path(keyed.key_dir)), ledger, CASES)
    (entry,) = maker.entries(_records([row.value])[0])
    ledger.append([entry])
    with engine.begin() as conn:
        conn.execute(sa.delete(ct.situations))
    (replayed,) = maker.entries(_records([row.value])[0])
    assert replayed == entry and replayed.case_id == events[0].situation_id
    assert ledger.append([replayed]).appended == 0


# ------------------------------------------------------------------------ integration
@pytest.mark.integration
def test_reveal_end_to_end_appears_in_audit_query_by_case(private_bootstrap: str, tmp_path: Path) -> None:
    """Synchronous: the commands run their own event loop, as from a shell. On a broker of its
    own: the audit sink reads every receipt topic, and the shared broker holds other tests'
    receipts for the same positions (workers of other groups, other registries)."""
    bootstrap = private_bootstrap
    settings = serve_keys(load_settings(bootstrap_servers=bootstrap, var_dir=tmp_path / "var",
                                        key_dir=tmp_path / "var" / "keys",
                                        database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}",
                                        session_timeout_ms=6000))
    init_exchange_key(settings.key_dir)
    for fund in (Fund.CAF, Fund.CPAM):
        init_fund_keys(settings.key_dir, fund)
    rng = random.Random(21)
    refs = [FundRef(fund=Fund.CAF, sealed_ref=_seal(settings, Fund.CAF, "CAF-DOS-4711", rng)),
            FundRef(fund=Fund.CPAM, sealed_ref=_seal(settings, Fund.CPAM, "CPAM-DOS-0815", rng))]
    event = situation(41, funds=("caf", "cpam"), occurred_at=NOW - dt.timedelta(days=5),
                      person="reveal-e2e").model_copy(update={"refs": refs})
    engine = open_engine(settings.database_url)
    ensure_ready(engine)
    with engine.begin() as conn:
        apply_situations(conn, [event])
    src = tmp_path / "liste-caf.csv"
    src.write_bytes(_export(engine, settings, "csv"))
    out = tmp_path / "liste-caf-revelee.csv"

    runner = CliRunner()
    result = runner.invoke(cli, ["reveal", "--fund", "caf", "--input", str(src), "--out", str(out),
                                 "--actor", ACTOR, "--purpose", "prevention_perte_autonomie"],
                           obj={"settings": settings}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 révélation(s) inscrite(s) dans la boîte d'envoi, 1 publiée(s), 0 en attente" in result.output
    assert "CAF-DOS-4711" in out.read_text(encoding="utf-8")

    ledger = Ledger.open(settings)
    sink = AuditSink(settings, ledger, bootstrap, cases=CASES, consumer_name="audit-reveal-e2e")
    asyncio.run(sink.run(until_idle=2.0))
    found = [parse_entry(d) for _, d in ledger.query(case_id=event.situation_id)]
    reveals = [e for e in found if e.action is Action.REFERENCE_REVELEE]
    assert len(reveals) == 1, found
    (entry,) = reveals
    assert (entry.actor, entry.purpose) == (ACTOR, LedgerPurpose.PREVENTION_PERTE_AUTONOMIE)
    assert is_about(entry, event.pseudonym)

    query = runner.invoke(cli, ["audit", "query", "--case", event.situation_id],
                          obj={"settings": settings}, catch_exceptions=False)
    assert query.exit_code == 0, query.output
    # the table folds long cells: the label's first words, the user, one row per entry
    assert "Référence de" in query.output and ACTOR in query.output
    assert f"{len(found)} entrée(s)" in query.output

    # Nothing in the ledger's tables holds the reference in clear, nor the seal.
    with engine.connect() as conn:
        for table in lt.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                text = repr(tuple(row))
                assert "CAF-DOS-4711" not in text and refs[0].sealed_ref.value not in text, table.name

    # A replay of the topics appends nothing; a second reveal is a second access.
    size = ledger.size()
    with engine.begin() as conn:
        conn.execute(sa.delete(tracking.offsets).where(tracking.offsets.c.consumer == "audit-reveal-e2e"))
    again = asyncio.run(AuditSink(settings, ledger, bootstrap, cases=CASES,
                                  consumer_name="audit-reveal-e2e").run(until_idle=2.0))
    assert again.appended == 0 and ledger.size() == size
    result = runner.invoke(cli, ["reveal", "--fund", "caf", "--input", str(src), "--out", str(out),
                                 "--actor", ACTOR], obj={"settings": settings}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    asyncio.run(AuditSink(settings, ledger, bootstrap, cases=CASES,
                          consumer_name="audit-reveal-e2e").run(until_idle=2.0))
    assert sum(parse_entry(d).action is Action.REFERENCE_REVELEE
               for _, d in ledger.query(case_id=event.situation_id)) == 2
    engine.dispose()
