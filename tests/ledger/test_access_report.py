"""« Qui a consulté mes informations ? »: the access report of a simulated person lists
exactly the events the ground truth predicts for them — receipts of the signals their fund
sent, their situation, the follow-up and the view of their case — each with a proof that
Go's sumdb/note and sumdb/tlog check against a checkpoint cosigned by two funds; the
public entries hide who they are about; a reference the fund does not own is refused."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.app import access_report
from services.app.bootstrap import CASES
from services.core.access import AccessEvent
from services.core.messages import Pseudonym, Receipt, SourcePosition, to_wire
from services.core.types import Fund
from services.errors import InputError
from services.ledger import cli as ledger_cli
from services.ledger import sink
from services.ledger.casebook import entry_for
from services.ledger.entries import Action, is_about, parse_entry
from services.ledger.sink import EntryMaker, audit_tracker
from services.ledger.store import Ledger
from services.ledger.witness import witness_round
from services.platform.settings import Settings, load_settings
from services.platform.topics import (
    FOLLOWUPS_TOPIC,
    SITUATIONS_TOPIC,
    receipt_topic,
    signal_topic,
)
from services.platform.tracking import Record
from services.producer.keys import init_exchange_key, init_fund_keys, load_exchange_key
from services.producer.nir import normalise
from services.producer.pseudonym import pseudonym_value
from services.producer.sdk import SignalBuilder, SignalInput
from tests.ledger.auditing import run_go, running_witnesses
from tests.support.cli import wired_group
from tests.support.extracts import make_nir
from tests.support.situations import followup, hex32, situation

group = wired_group(ledger_cli.register, access_report.register)

T = dt.datetime(2026, 11, 10, 9, 0, tzinfo=dt.UTC)




@pytest.fixture
def fund_side(tmp_path: Path) -> FundSide:
    """CAF's keys and extract: person A (reference CAF-0001, two signals), person B
    (CAF-0002, one signal). Returns the settings, the extract, the signal ids per reference
    and the NIR per reference (the ground truth)."""
    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "keys",
                             database_url=f"sqlite:///{tmp_path / 'exchange.db'}",
                             ledger_origin="help-exchange.test/ledger/35",
                             signal_sealing="accepted")  # signals in clear, as the ledger's entries first were
    init_exchange_key(settings.key_dir)
    init_fund_keys(settings.key_dir, Fund.CAF)
    rng = random.Random(16)
    nirs = {"CAF-0001": make_nir(rng), "CAF-0002": make_nir(rng)}
    lines = [("CAF-0001", "separation", "2026-11-02"), ("CAF-0001", "impaye_loyer", "2026-11-03"),
             ("CAF-0002", "separation", "2026-11-04")]
    extract = tmp_path / "extrait-caf.csv"
    extract.write_text("nir;categorie;date_observation;departement;reference_dossier\n" + "".join(
        f"{nirs[ref]};{cat};{day};35;{ref}\n" for ref, cat, day in lines), encoding="utf-8")
    builder = SignalBuilder(settings, Fund.CAF)
    ids: dict[str, list[str]] = {"CAF-0001": [], "CAF-0002": []}
    signals: list[bytes] = []
    for ref, cat, day in lines:
        built = builder.build(SignalInput(nirs[ref], cat, dt.date.fromisoformat(day), "35", ref))
        ids[ref].append(json.loads(built.value)["signal_id"])
        signals.append(built.value)
    return FundSide(settings, extract, ids, nirs, signals)


@dataclass
class FundSide:
    settings: Settings
    extract: Path
    ids: dict[str, list[str]]  # signal ids per reference
    nirs: dict[str, str]  # NIR per reference (the ground truth)
    signals: list[bytes]  # the signals as published


def receipt(n: int, signal_id: str, status: str = "accepte") -> bytes:
    return to_wire(Receipt(
        schema_version="1.0", receipt_id=hex32("receipt", n), fund=Fund.CAF, signal_id=signal_id,
        status=status, reason=None, processed_at=T + dt.timedelta(minutes=n),  # type: ignore[arg-type]
        source=SourcePosition(topic="help.signals.caf.v1", partition=0, offset=n)))


def test_the_report_lists_exactly_the_persons_events_each_proven(
        fund_side: FundSide,
        tmp_path: Path, go_verifier: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, extract, ids, nirs = (fund_side.settings, fund_side.extract, fund_side.ids,
                                    fund_side.nirs)
    _, key = load_exchange_key(settings.key_dir)
    person_a = Pseudonym(key_id="exch-2026-01", value=pseudonym_value(key, normalise(nirs["CAF-0001"])))
    ledger = Ledger.open(settings)
    maker = EntryMaker(None, ledger, CASES)
    sit_a = situation(1, funds=("caf", "cpam"), occurred_at=T + dt.timedelta(hours=1)) \
        .model_copy(update={"pseudonym": person_a})
    sit_other = situation(2, occurred_at=T + dt.timedelta(hours=1))
    records = [
        Record(receipt_topic(Fund.CAF), 0, 0, 0, None, receipt(1, ids["CAF-0001"][0])),
        Record(receipt_topic(Fund.CAF), 0, 1, 0, None, receipt(2, ids["CAF-0002"][0])),
        Record(receipt_topic(Fund.CAF), 0, 2, 0, None, receipt(3, ids["CAF-0001"][1])),
        Record(receipt_topic(Fund.CAF), 0, 3, 0, None, receipt(4, "f" * 32)),  # someone else
        Record(SITUATIONS_TOPIC, 0, 0, 0, None, to_wire(sit_a)),
        Record(SITUATIONS_TOPIC, 0, 1, 0, None, to_wire(sit_other)),
        Record(FOLLOWUPS_TOPIC, 0, 0, 0, None, to_wire(followup(1, "caf", "fsl"))),
        Record(FOLLOWUPS_TOPIC, 0, 1, 0, None, to_wire(followup(2, "caf", "fsl"))),
    ]
    records[0:0] = [Record(signal_topic(Fund.CAF), 0, n, 0, None, v) for n, v in enumerate(fund_side.signals)]
    monkeypatch.setattr(sink, "HOLD_S", 0.0)  # the stranger's signal is not on the topic
    audit_tracker(ledger, maker).process(records)
    receipts = [parse_entry(d) for _, d in ledger.query(action="signalement_accepte")]
    assert sorted(is_about(e, person_a) for e in receipts) == [False, False, True, True]
    for n, who in ((1, person_a), (2, sit_other.pseudonym)):  # a CPAM agent opens each case
        ledger.append([entry_for(AccessEvent(
            user_id="agent.cpam-35.0007", role="agent", fund="cpam",
            action="consultation_dossier", situation_id=hex32("situation", n),
            at=T + dt.timedelta(hours=2)), who)])
    ledger.sign_head()
    vkey = next((settings.key_dir / "ledger").glob("*.vkey")).read_text().strip()

    # the public bytes never carry the person: only a per-entry commitment
    public = b"".join(data for _, data in ledger.query(period=("2026", "2027")))
    assert person_a.value.encode() not in public and b'"subject_commitment"' in public

    with running_witnesses(tmp_path / "wkeys", vkey, funds=("caf", "cpam")) as wits:
        assert all(r.ok for r in witness_round(ledger, wits.configs))
        out = tmp_path / "rapport" / "acces"
        result = CliRunner().invoke(group, ["access-report", "--fund", "caf", "--reference",
                                            "CAF-0001", "--extract", str(extract), "--out",
                                            str(out)], obj={"settings": settings})
        assert result.exit_code == 0, result.output
        report = json.loads(out.with_suffix(".json").read_text())
        got = sorted((e["entry"]["action"], e["entry"].get("ref") or e["entry"].get("case_id"))
                     for e in report["events"])
        expected = sorted([
            (Action.SIGNALEMENT_ACCEPTE.value, ids["CAF-0001"][0]),
            (Action.SIGNALEMENT_ACCEPTE.value, ids["CAF-0001"][1]),
            (Action.SITUATION_OUVERTE.value, sit_a.event_id),
            (Action.SUITE_ENREGISTREE.value, followup(1, "caf", "fsl").event_id),
            (Action.DOSSIER_CONSULTE.value, hex32("situation", 1)),
        ])
        assert got == expected
        assert report["cosigned_by"] == ["help-exchange.caf/witness", "help-exchange.cpam/witness"]
        lines = {e["ligne"]["quoi"] for e in report["events"]}
        assert {"Signalement accepté", "Situation ouverte", "Dossier consulté"} <= lines
        page = out.with_suffix(".html").read_text()
        assert "Qui a consulté mes informations ?" in page and "agent.cpam-35.0007 (CPAM)" in page
        assert nirs["CAF-0001"] not in page and person_a.value not in page
        assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")

        keys = []
        for i, v in enumerate(wits.vkeys()):
            (tmp_path / f"w{i}.vkey").write_text(v + "\n")
            keys += ["--witness", str(tmp_path / f"w{i}.vkey")]
        ours = CliRunner().invoke(group, ["audit", "check-checkpointed",
                                          str(out.with_suffix(".json")), *keys, "--quorum", "2"],
                                  obj={"settings": settings})
        assert ours.exit_code == 0 and "access report: 5 event(s)" in ours.output, ours.output
        forged = json.loads(out.with_suffix(".json").read_text())
        forged["events"][0]["entry"]["actor"] = "agent.caf-35.9999"
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        ours = CliRunner().invoke(group, ["audit", "check-checkpointed",
                                          str(tmp_path / "forged.json"), *keys],
                                  obj={"settings": settings})
        assert ours.exit_code == 1 and "entry edited" in ours.output, ours.output

        witness_args = [a for v in wits.vkeys() for a in ("-witness", v)]
        done = run_go(go_verifier, "-log", vkey, *witness_args, "-quorum", "2",
                      str(out.with_suffix(".json")))
        assert done.returncode == 0 and "access report: 5 events proven" in done.stdout, \
            done.stdout

    b = CliRunner().invoke(group, ["access-report", "--fund", "caf", "--reference", "CAF-0002",
                                   "--extract", str(extract), "--out", str(tmp_path / "b")],
                           obj={"settings": settings})
    assert b.exit_code == 0 and "1 événement(s)" in b.output, b.output

    # an event after the last witness round: proven to the newest checkpoint, flagged
    ledger.append([entry_for(AccessEvent(
        user_id="agent.caf-35.0042", role="agent", fund="caf", action="consultation_dossier",
        situation_id=hex32("situation", 1), at=T + dt.timedelta(hours=3)), person_a)])
    again = CliRunner().invoke(group, ["access-report", "--fund", "caf", "--reference",
                                       "CAF-0001", "--extract", str(extract), "--out",
                                       str(tmp_path / "again")], obj={"settings": settings})
    assert again.exit_code == 0, again.output
    events = json.loads((tmp_path / "again.json").read_text())["events"]
    assert [bool(e["temoins"]) for e in events] == [True] * 5 + [False]
    assert "en attente de cosignature" in (tmp_path / "again.html").read_text()

    refused = CliRunner().invoke(group, ["access-report", "--fund", "caf", "--reference",
                                         "CPAM-9999", "--extract", str(extract), "--out",
                                         str(tmp_path / "x")], obj={"settings": settings})
    assert isinstance(refused.exception, InputError)
    assert "is not a file of caf in the extracts given" in refused.exception.what
    ledger.engine.dispose()
