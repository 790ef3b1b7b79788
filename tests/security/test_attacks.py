"""Attacks (issue 8, item 5), one test each, against the real worker on a dedicated broker and
against the casebook's renderers and CLI: forged signature, another fund's key, replay, wrong
topic, schema downgrade, oversize payload, duplicate member names, markup injection in every
string rendered in HTML, CSV formula injection in every CSV export, path traversal."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from fastapi.testclient import TestClient

from services.casebook import store
from services.casebook.auth import UserFile
from services.casebook.model import Month
from services.casebook.render import render
from services.casebook.worklist import load_worklist
from services.core.types import Fund
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings
from services.platform.topics import DEADLETTER_TOPIC, receipt_topic, signal_topic
from services.producer.keys import load_fund_secrets
from tests.reliability.pipeline import FUNDS, init_keys, simulate_month
from tests.security.fuzz import Signer
from tests.security.test_fuzz_correlator import records_of
from tests.security.webapp import make_app, web_settings
from tests.suite_summary import count
from tests.support import situations as F
from tests.support.processes import Broker, read_topics, run_cli, settings_for, start_broker, start_service, terminate

pytestmark = pytest.mark.integration

SCRIPT = '<script>alert("x")</script>'
MARKUP = [SCRIPT, '"><img src=x onerror=alert(1)>', "javascript:alert(1)", "{{7*7}}", "</td></tr><h1>x"]
FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "=HYPERLINK(\"http://x\")"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ------------------------------------------------------------------------ the correlator
@dataclass
class Exchange:
    broker: Broker
    settings: Settings
    signer: Signer
    proc: Any
    log: Path

    def send(self, items: list[tuple[str, bytes, bytes | None]]) -> list[tuple[str, int, int]]:
        async def go() -> list[tuple[str, int, int]]:
            producer = AIOKafkaProducer(bootstrap_servers=self.broker.listener, acks="all",
                                        max_request_size=4 * 1024 * 1024)
            await producer.start()
            try:
                futures = [await producer.send(t, v, key=k) for t, v, k in items]
                metas = await asyncio.gather(*futures)
            finally:
                await producer.stop()
            return [(m.topic, m.partition, m.offset) for m in metas]

        count("attacks_tried", len(items))
        return asyncio.run(go())

    def answers(self, positions: list[tuple[str, int, int]], timeout: float = 60
                ) -> dict[tuple[str, int, int], tuple[list[dict[str, Any]], dict[str, Any] | None]]:
        """Receipts and dead letter of each position."""
        deadline = time.monotonic() + timeout
        while True:
            recs = asyncio.run(read_topics(self.broker.listener, [DEADLETTER_TOPIC, *(receipt_topic(f) for f in Fund)]))
            out: dict[tuple[str, int, int], tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
            for r in recs:
                doc = json.loads(r.value or b"{}")
                s = doc["source"]
                pos = (s["topic"], s["partition"], s["offset"])
                receipts, letter = out.get(pos, ([], None))
                if r.topic == DEADLETTER_TOPIC:
                    letter = doc
                else:
                    receipts = [*receipts, doc]
                out[pos] = (receipts, letter)
            if all(out.get(p, ([], None))[0] for p in positions):
                time.sleep(0.3)
                return out
            assert self.proc.poll() is None, f"the worker stopped: {self.log.read_text()[-1500:]}"
            assert time.monotonic() < deadline, "no receipt in time"
            time.sleep(0.5)

    def valid(self, fund: Fund, i: int) -> dict[str, Any]:
        return json.loads(json.dumps(self.signer.valid[fund][i]))


@contextlib.contextmanager
def running_exchange(tmp: Path) -> Iterator[Exchange]:
    b = start_broker(tmp / "broker")
    settings = settings_for(tmp / "var", b.listener)
    init_keys(settings)
    simulate_month(settings, tmp / "extraits", scale=0.2, seed=6)
    signer = Signer(settings, {f: records_of(tmp / "extraits", f, limit=60) for f in FUNDS})
    proc = start_service(settings, tmp / "correlator.log", "correlator", "--app-id", "corr-attacks")
    try:
        yield Exchange(b, settings, signer, proc, tmp / "correlator.log")
        assert proc.poll() is None, "the worker must survive every attack"
    finally:
        terminate(proc)
        b.stop()


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    with running_exchange(tmp_path_factory.mktemp("attacks")) as ex:
        yield ex


def _wire(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def _key(msg: dict[str, Any]) -> bytes:
    return str(msg["pseudonym"]["value"]).encode()


def _rejected(ex: Exchange, topic: str, raw: bytes, key: bytes, reason: str) -> None:
    [pos] = ex.send([(topic, raw, key)])
    receipts, letter = ex.answers([pos])[pos]
    assert letter is not None and letter["reason"] == reason, (letter, receipts)
    assert [(r["status"], r["reason"]) for r in receipts] == [("rejete", reason)]


def test_forged_signature(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.CAF, 0)
    # altered after signing: a person member if it travels in clear, else the sealed value
    if "category" in msg:
        msg["category"] = "separation" if msg["category"] != "separation" else "impaye_loyer"
    else:
        value = msg["sealed"]["value"]
        msg["sealed"]["value"] = ("B" if value[0] == "A" else "A") + value[1:]
    _rejected(exchange, signal_topic(Fund.CAF), _wire(msg), _key(msg), "signature_invalide")


def test_another_funds_key(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.CAF, 1)
    forged = exchange.signer.resign(msg, Fund.CAF, as_fund=Fund.CPAM, key_id_of=Fund.CAF)
    _rejected(exchange, signal_topic(Fund.CAF), _wire(forged), _key(msg), "signature_invalide")
    own_id = exchange.signer.resign(msg, Fund.CAF, as_fund=Fund.CPAM)
    _rejected(exchange, signal_topic(Fund.CAF), _wire(own_id), _key(msg), "cle_signature_inconnue")


def test_replay(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.URSSAF, 2)
    first, again = exchange.send([(signal_topic(Fund.URSSAF), _wire(msg), _key(msg))] * 2)
    answers = exchange.answers([first, again])
    assert [r["status"] for r in answers[first][0]] == ["accepte"]
    assert [(r["status"], r["reason"]) for r in answers[again][0]] == [("rejete", "doublon")]
    assert answers[again][1] is not None and answers[again][1]["reason"] == "doublon"


def test_wrong_topic(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.CAF, 3)
    _rejected(exchange, signal_topic(Fund.URSSAF), _wire(msg), _key(msg), "topic_incorrect")


def test_schema_downgrade(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.CPAM, 4)
    msg["schema_version"] = "0.9"
    signed = exchange.signer.resign(msg, Fund.CPAM)  # validly signed by the fund itself
    _rejected(exchange, signal_topic(Fund.CPAM), _wire(signed), _key(msg), "version_schema_inconnue")


def test_oversize_payload(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.CARSAT, 5)
    raw = _wire(msg)[:-1] + b',"pad":"' + b"A" * 200_000 + b'"}'
    _rejected(exchange, signal_topic(Fund.CARSAT), raw, _key(msg), "message_trop_volumineux")


def test_oversize_payload_of_a_megabyte_does_not_stop_the_worker(tmp_path: Path) -> None:
    with running_exchange(tmp_path) as ex:
        msg = ex.valid(Fund.CARSAT, 5)
        raw = _wire(msg)[:-1] + b',"pad":"' + b"A" * 1_000_000 + b'"}'
        _rejected(ex, signal_topic(Fund.CARSAT), raw, _key(msg), "message_trop_volumineux")


def test_duplicate_member_names(exchange: Exchange) -> None:
    msg = exchange.valid(Fund.CAF, 6)
    raw = _wire(msg)
    # A first-wins reader (another language's parser, an auditor's tool) sees a medical category.
    smuggled = b'{"category":"maladie_handicap_enfant",' + raw[1:]
    [pos] = exchange.send([(signal_topic(Fund.CAF), smuggled, _key(msg))])
    receipts, letter = exchange.answers([pos])[pos]
    assert [r["status"] for r in receipts] == ["rejete"] and letter is not None, receipts


# ------------------------------------------------------------------------ renderers
@pytest.fixture
def hostile_casebook(tmp_path: Path) -> Iterator[tuple[sa.Engine, Settings]]:
    """A casebook whose every free string holds markup or a formula: what a tampered database
    or a future field could bring; the contract's patterns normally forbid them."""
    settings = web_settings(tmp_path)
    engine = open_engine(settings.database_url)
    events = []
    for i, payload in enumerate(MARKUP + FORMULAS):
        ev = F.situation(500 + i, funds=("caf", "urssaf"), priority="rouge")
        events.append(ev.model_copy(update={"rules": [payload, "multi_organismes"]}))
    with engine.begin() as conn:
        store.apply_situations(conn, events)
        fus = []
        for i, payload in enumerate(MARKUP + FORMULAS):
            fu = F.followup(500 + i, "caf", "accompagnement_travailleur_social", k=i)
            fus.append(fu.model_copy(update={"recorded_by": payload}))
        store.apply_followups(conn, fus)
    yield engine, settings
    engine.dispose()


def _worklist(engine: sa.Engine, settings: Settings) -> Any:
    return load_worklist(engine, settings.taxonomy, month=Month(2026, 11), territory="35", fund=None,
                         close_after_months=6)


def test_markup_injection_in_every_html_rendering(hostile_casebook: tuple[sa.Engine, Settings],
                                                  tmp_path: Path) -> None:
    engine, settings = hostile_casebook
    wl = _worklist(engine, settings)
    assert wl.cases, "the hostile situations are in the worklist"
    pages = {"worklist.html": render(wl, "html").decode()}
    users = UserFile(tmp_path / "users.json")
    users.add("secretaire.35", role="secretaire_seance", territory="35", fund=None, secret="un secret assez long")
    app = make_app(settings, engine, tmp_path / "users.json")
    with TestClient(app, follow_redirects=False) as client:
        for payload in MARKUP:
            page = client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            pages[f"login {payload}"] = client.post("/login", data={"user_id": payload, "password": "x" * 12,
                                                                   "csrf_token": token}).text
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert client.post("/login", data={"user_id": "secretaire.35", "password": "un secret assez long",
                                           "csrf_token": token}).status_code == 303
        pages["web worklist"] = client.get("/worklist", params={"month": "2026-11"}).text
        for c in wl.cases:
            pages[f"case {c.case_number}"] = client.get(f"/cases/{c.case_number}").text
            pages[f"form {c.case_number}"] = client.get(f"/cases/{c.case_number}/followup").text
        for payload in MARKUP:
            pages[f"404 {payload}"] = client.get(f"/cases/{payload}").text
            pages[f"month {payload}"] = client.get("/worklist", params={"month": payload}).text
            number = wl.cases[0].case_number
            form = client.get(f"/cases/{number}/followup", params={"fund": "caf"}).text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            once = re.search(r'name="form_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            pages[f"post {payload}"] = posted = client.post(f"/cases/{number}/followup", data={
                "fund": "caf", "action": payload, "outcome": payload, "csrf_token": token, "form_token": once}).text
            assert "Suite inconnue" in posted or "inconnu" in posted, posted[:300]
    tried = 0
    for name, html in pages.items():
        for payload in MARKUP[:2] + MARKUP[4:]:
            tried += 1
            assert payload not in html, f"unescaped markup in {name}"
        assert "<script" not in html.lower(), name
    count("attacks_tried", tried)
    print(f"markup injection: {len(MARKUP)} payloads through {len(pages)} HTML pages and renderings, "
          f"{tried} checks, none unescaped")


def _cells(data: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(data.lstrip("\ufeff")), delimiter=";") for cell in row]


def test_csv_formula_injection_in_the_worklist_export(hostile_casebook: tuple[sa.Engine, Settings]) -> None:
    engine, settings = hostile_casebook
    cells = _cells(render(_worklist(engine, settings), "csv").decode("utf-8"))
    count("attacks_tried", len(FORMULAS))
    assert any("cmd|" in c for c in cells), "the hostile values are exported"
    bad = [c for c in cells if c.startswith(FORMULA_START)]
    assert not bad, bad


def test_csv_formula_injection_in_the_audit_export(tmp_path: Path) -> None:
    from services.ledger.export import COLUMNS, write_csv

    rows = []
    for i, payload in enumerate(FORMULAS):
        row: dict[str, Any] = {key: payload for key, _ in COLUMNS}
        row["index"] = i
        rows.append(row)
    out = io.StringIO()
    write_csv(rows, out)
    count("attacks_tried", len(FORMULAS))
    bad = [c for c in _cells(out.getvalue())[len(COLUMNS):] if c.startswith(FORMULA_START)]
    assert not bad, bad


def test_csv_formula_injection_in_the_reject_report(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                             bootstrap_servers="127.0.0.1:9",
                             signal_sealing="accepted")  # the reject report under test: nothing is sent
    init_keys(settings)
    extract = tmp_path / "extrait.csv"
    lines = ["nir;categorie;date_observation;departement;reference_dossier"]
    for payload in FORMULAS:
        value = payload.replace(";", ",") + "+1+2+3+4+5+6+7"
        lines.append(f"{value};impaye_loyer;01/11/2026;35;CAF35-0000001")
        lines.append(f"1850578006084;{value};01/11/2026;35;CAF35-0000002")
        lines.append(f"1850578006084;impaye_loyer;{value};35;CAF35-0000003")
    extract.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = tmp_path / "rejets.csv"
    from services.producer.publish import publish_file

    asyncio.run(publish_file(settings, Fund.CAF, extract, report, connect=False))
    count("attacks_tried", len(lines) - 1)
    cells = _cells(report.read_text(encoding="utf-8-sig"))
    assert len(cells) > 5
    bad = [c for c in cells if c.startswith(FORMULA_START)]
    assert not bad, bad


# ------------------------------------------------------------------------ path traversal
def test_no_output_file_name_is_built_from_message_data(tmp_path: Path) -> None:
    """CLI ``--out`` paths are the user's choice (they may write anywhere they can); what must
    never happen is a file name built from DATA. Territory and month options that end up in
    names are validated; the simulator writes only its fixed names; the web export's file name
    is built from the user's validated territory and fund only."""
    settings = web_settings(tmp_path)
    tried = 0
    for evil in ("../../etc/x", "/etc/passwd", "35/../../x", "..", "35 ", "%2e%2e"):
        done = run_cli(settings, "worklist", "--month", "2026-11", "--territory", evil, "--format", "csv",
                       "--out", str(tmp_path / "w.csv"), check=False)
        tried += 1
        assert done.returncode != 0 and not (tmp_path / "w.csv").exists(), evil
        done = run_cli(settings, "worklist", "--month", evil, "--territory", "35", "--format", "csv",
                       "--out", str(tmp_path / "w.csv"), check=False)
        tried += 1
        assert done.returncode != 0 and not (tmp_path / "w.csv").exists(), evil
        done = run_cli(settings, "simulate", "--territory", evil, "--month", "2026-11", "--out",
                       str(tmp_path / "sim"), check=False)
        tried += 1
        assert done.returncode != 0, evil
    out = tmp_path / "sim-ok"
    run_cli(settings, "simulate", "--territory", "35", "--month", dt.date.today().strftime("%Y-%m"), "--out", str(out),
            "--scale", "0.05")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
                     and "var" not in p.parts and p.name != "casebook.db")
    assert written == sorted(f"sim-ok/{n}" for n in ("caf.csv", "carsat.csv", "cpam.csv", "urssaf.csv",
                                                      "verite_terrain.json")), written
    # A legitimate --out where the user says, inside a deep new folder: allowed.
    run_cli(settings, "casebook", "migrate")
    target = tmp_path / "a" / "b" / "revue.csv"
    target.parent.mkdir(parents=True)
    run_cli(settings, "worklist", "--month", "2026-11", "--territory", "35", "--format", "csv", "--out", str(target))
    assert target.exists()
    # The web export's Content-Disposition name: only the validated territory, month and fund.
    users = UserFile(tmp_path / "users.json")
    for evil in ("../35", "35/..", "3\"5"):
        tried += 1
        with pytest.raises(Exception):  # noqa: B017 - InputError, whatever the wording
            users.add("agent.x", role="agent", territory=evil, fund="caf", secret="un secret assez long")
    users.add("agent.caf35", role="agent", territory="35", fund="caf", secret="un secret assez long")
    engine = open_engine(settings.database_url)
    app = make_app(settings, engine, tmp_path / "users.json")
    with TestClient(app, follow_redirects=False) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        client.post("/login", data={"user_id": "agent.caf35", "password": "un secret assez long",
                                    "csrf_token": token})
        for evil in ("../../x", "2026-11/../..", "2026-11\r\nX-Evil: 1"):
            tried += 1
            response = client.get("/worklist/export", params={"month": evil, "format": "csv"})
            assert response.status_code == 400 and "content-disposition" not in response.headers, evil
        response = client.get("/worklist/export", params={"month": "2026-11", "format": "csv"})
        assert re.fullmatch(r'attachment; filename="revue-35-2026-11-caf\.csv"',
                            response.headers["content-disposition"])
    engine.dispose()
    count("attacks_tried", tried)
    _ = FUNDS, load_fund_secrets


def test_a_territory_with_a_trailing_newline_is_refused() -> None:
    from services.casebook.model import check_territory
    from services.errors import InputError

    count("attacks_tried")
    with pytest.raises(InputError):
        check_territory("35\n")
