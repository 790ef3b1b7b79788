"""The exchange enforces every rule itself, whoever produced the message (``docs/rules.md``).

- Every rule the table says the exchange enforces: a message built by hand, signed with
  :mod:`services.core.signing` (never the SDK), is refused by the correlator's engine with
  the table's reason code (or, for reveal events, not entered by the audit sink).
- The table itself: no row without an enforcement or an "n/a on the wire" reason, only
  known reason codes, and every code the producer side or the correlator can give is in it.
- The SDK and the correlator answer the same code on the same dates (boundary days, 29
  February, and random days and hours, hypothesis).
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import random
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.datafile import read_yaml
from services.core.dates import (
    CLOCK_SKEW,
    MAX_AGE_YEARS,
    limits_at,
    oldest_accepted,
    paris_midnight,
    today_paris,
)
from services.core.messages import Signal, parse, sealed_digest
from services.core.policy import parse_policy
from services.core.reasons import Reason
from services.core.registry import FundKeys, Registry, load_registry
from services.core.rules import Context
from services.core.signal_seal import seal_message
from services.core.signing import sign
from services.core.types import Fund, format_timestamp
from services.correlator.engine import H_OFFSET, H_PARTITION, H_TOPIC, REPARTITION_TOPIC, Engine, Record
from services.errors import Rejected
from services.ledger.sink import EntryMaker
from services.platform.datakeys import KeyRing, KeyStore, seal
from services.platform.db import open_engine
from services.platform.partitioning import partition_for
from services.platform.settings import DEFAULT_SCHEMAS_DIR, Settings
from services.platform.topics import CONSENTS_TOPIC, DEADLETTER_TOPIC, REVEALS_TOPIC, signal_topic
from services.producer.keys import init_exchange_key, init_fund_keys, registry_path
from services.producer.sdk import F_DATE, SignalBuilder, SignalInput
from tests.correlator.core_fixtures import context
from tests.support.extracts import make_nir
from tests.support.signalkeys import LocalKeys
from tests.support.signals import RETIRED_KEY, Funds, wire

ROOT = Path(__file__).resolve().parents[2]
RULES_DOC = ROOT / "docs" / "rules.md"
#: The engine's clock in these tests (a fixed moment: the rules are judged against it).
NOW = dt.datetime(2026, 11, 20, 10, 30, tzinfo=dt.UTC)
TODAY = today_paris(NOW)
CAF, URSSAF = signal_topic(Fund.CAF), signal_topic(Fund.URSSAF)
DAY = dt.timedelta(days=1)


# ------------------------------------------------------------------------- the engine's answer
def _partition(value: bytes) -> int:
    try:
        return partition_for(json.loads(value)["pseudonym"]["value"], 8)
    except (ValueError, KeyError, TypeError):
        return 0


def answers(engine: Engine, items: list[tuple[str, bytes]]) -> list[tuple[Reason | None, str]]:
    """(reason, dead-letter detail) of each item, processed in one batch; (None, "") if accepted."""
    records = [Record(topic, _partition(value), offset, int(NOW.timestamp() * 1000), None, value,
                      _forwarded_from(CAF, offset) if topic == REPARTITION_TOPIC else {})
               for offset, (topic, value) in enumerate(items)]
    batch = engine.process(records, {}.get)
    letters = {json.loads(o.value or b"")["source"]["offset"]: json.loads(o.value or b"")
               for o in batch.outputs if o.topic == DEADLETTER_TOPIC}
    out: list[tuple[Reason | None, str]] = []
    for rec in records:
        letter = letters.get(rec.offset)
        out.append((None, "") if letter is None else (Reason(letter["reason"]), letter["detail"]))
    assert batch.accepted + batch.rejected == len(records)  # none forwarded: each judged here
    return out


FUNDS = Funds(now=NOW)


def _forwarded_from(topic: str, offset: int) -> dict[str, bytes]:
    """The headers of a record the engine forwarded to the repartition topic (its source)."""
    return {H_TOPIC: topic.encode(), H_PARTITION: b"0", H_OFFSET: str(offset).encode()}


def engine_at(now: dt.datetime, ctx: Context | None = None, funds: Funds | None = None,
              registry: Registry | None = None, **options: Any) -> Engine:
    return Engine(ctx or context(), registry or (funds or FUNDS).registry(), clock=lambda: now, **options)


def caf_key_retired() -> Registry:
    """FUNDS' registry with CAF's signing key retired (as `keys retire` leaves it)."""
    reg = FUNDS.registry()
    keys = tuple(k.model_copy(update={"status": "retired", "retired_at": "2026-11-01T00:00:00Z"})
                 for k in reg.funds[Fund.CAF].signing_keys)
    return reg.model_copy(update={"funds": {**reg.funds, Fund.CAF: FundKeys(signing_keys=keys)}})


@cache
def consent_policy_context() -> Context:
    """The real data files, but a policy where consent covers only access to rights: the
    only way to reach ``base_legale_invalide`` with a well-formed message (today every
    basis covers every purpose)."""
    data = read_yaml(DEFAULT_SCHEMAS_DIR / "policy.yaml", "policy")
    del data["bases_legales"]["consentement"]["finalites"]["prevention_perte_autonomie"]
    base = context()
    return Context(base.rules, base.taxonomy, parse_policy(data))


# ------------------------------------------------------------------------- hand-built messages
def good(**kw: Any) -> dict[str, Any]:
    return FUNDS.signal("rules-p", Fund.CAF, "impaye_loyer", **kw)


def changed(msg: dict[str, Any], **members: Any) -> dict[str, Any]:
    """``msg`` with ``members`` replaced and signed again by its fund: a fund's own message."""
    return FUNDS.resign({**msg, **members})


def signal_item(msg: dict[str, Any], topic: str = CAF) -> tuple[str, bytes]:
    return topic, wire(msg)


def consent_item(msg: dict[str, Any]) -> tuple[str, bytes]:
    return CONSENTS_TOPIC, wire(msg)


@dataclass(frozen=True)
class Case:
    """Messages for one rule; the last is the one judged (the others set the person up)."""

    items: Callable[[], list[tuple[str, bytes]]]
    #: the start of the dead letter's detail, where it names the field
    detail: str = ""
    ctx: Callable[[], Context] = context
    #: the registry the exchange trusts for this case (default: every fund's key active)
    registry: Callable[[], Registry] = FUNDS.registry
    #: more of the engine's options (sealing)
    options: Callable[[], dict[str, Any]] = dict


class KeysGone:
    """A key table where every key was destroyed: nothing sealed opens (what
    :class:`~services.platform.datakeys.KeyRing` answers then, tests/consent)."""

    def seal(self, pseudonym_value: bytes, topic: str, plaintext: bytes) -> bytes:
        return seal(b"k" * 32, topic, b"s" * 16, 1, plaintext)

    def open(self, pseudonym_value: bytes | None, topic: str, raw: bytes) -> bytes | None:
        return None

    def erase(self, pseudonym_value: bytes) -> None:
        pass

    def data_key(self, pseudonym_value: bytes, subject: bytes, epoch: int) -> bytes | None:
        return None

    def subject(self, pseudonym_value: bytes) -> bytes:
        return b"s" * 16


def _forward_sealed_then_erased() -> list[tuple[str, bytes]]:
    """A signal forwarded to its person's partition, sealed, read back after the key went."""
    return [(REPARTITION_TOPIC, KeysGone().seal(b"", REPARTITION_TOPIC, wire(good())))]


@cache
def _key_table() -> tuple[KeyRing, LocalKeys]:
    """A key table (SQLite, in a temporary folder) and the key endpoint over it."""
    folder = Path(tempfile.mkdtemp(prefix="rules-keys-"))
    store = KeyStore(open_engine(f"sqlite:///{folder / 'keys.db'}"))
    return KeyRing(store, b"m" * 32), LocalKeys(store, b"m" * 32)


def _sealed_elsewhere() -> list[tuple[str, bytes]]:
    """A signal sealed with the person's right key, but for the topic of another fund."""
    _, keys = _key_table()
    msg = good()
    subject, epoch, key = keys(Fund.CAF, msg["pseudonym"]["value"])
    unsigned = {k: v for k, v in msg.items() if k != "signature"}
    return [signal_item(FUNDS.resign(seal_message(key, URSSAF, subject, epoch, unsigned)))]


def _duplicate_member() -> list[tuple[str, bytes]]:
    raw = wire(good())
    return [(CAF, raw[:-1] + b',"category":"impaye_loyer"}')]


CASES: dict[str, Case] = {
    "message-size": Case(lambda: [(CAF, wire(good()) + b" " * 20_000)], "/:size_over"),
    "json": Case(_duplicate_member, "/:duplicate_member_name"),
    "schema-version": Case(lambda: [signal_item(good(schema_version="2.0"))], "/schema_version"),
    "fund-known": Case(lambda: [signal_item({**good(), "fund": "pole-emploi"})], "/fund"),
    "fund-topic": Case(lambda: [signal_item(FUNDS.signal("rules-p", Fund.URSSAF, "impaye_cotisations"))],
                       "/fund:not_topic_owner"),
    "signing-key": Case(lambda: [signal_item(good(signer=Fund.CPAM))], "/signature/key_id"),
    "signing-key-retired": Case(lambda: [signal_item(good())], "/signature/key_id", registry=caf_key_retired),
    "signature": Case(lambda: [signal_item({**good(), "territory": "52"})], "/signature/value"),
    "schema": Case(lambda: [signal_item(changed(good(), note="x"))]),
    "free-text": Case(lambda: [signal_item(changed(good(), category="impayé de loyer"))], "/category"),
    "emitter-of-fund": Case(lambda: [signal_item(changed(good(), emitter="cpam-51"))]),
    "category-known": Case(lambda: [signal_item(FUNDS.signal("rules-p", Fund.CAF, "categorie_bidon"))],
                           "/category"),
    "category-own": Case(lambda: [signal_item(FUNDS.signal("rules-p", Fund.CAF, "impaye_cotisations"))],
                         "/category"),
    "category-nm": Case(lambda: [signal_item(FUNDS.signal("rules-p", Fund.CAF, "maladie_handicap_enfant"))],
                        "/category"),
    "observed-format": Case(lambda: [signal_item(changed(good(), observed_on=f"{TODAY:%d/%m/%Y}"))],
                            "/observed_on"),
    "observed-future": Case(lambda: [signal_item(good(observed_on=TODAY + DAY))], "/observed_on:in_future"),
    "observed-too-old": Case(lambda: [signal_item(good(observed_on=oldest_accepted(TODAY) - DAY))],
                             "/observed_on:older_than_2_years"),
    "emitted-future": Case(lambda: [signal_item(changed(good(), emitted_at=format_timestamp(
        NOW + CLOCK_SKEW + dt.timedelta(seconds=1))))], "/emitted_at:in_future"),
    "emitted-too-old": Case(lambda: [signal_item(changed(good(), emitted_at=format_timestamp(
        NOW - dt.timedelta(days=3 * 365))))], "/emitted_at:older_than_2_years"),
    "observed-after-emitted": Case(lambda: [signal_item(changed(good(), emitted_at=format_timestamp(
        paris_midnight(TODAY) - dt.timedelta(seconds=1))))], "/observed_on:after_emitted_at"),
    "territory": Case(lambda: [signal_item(good(territory="2C"))], "/territory"),
    "purpose-known": Case(lambda: [signal_item(good(purpose="controle"))], "/purpose"),
    "purpose-allowed": Case(lambda: [signal_item(good(purpose="prevention_perte_autonomie"))],
                            "/legal_basis:finalite_non_autorisee"),
    "consent-ref": Case(lambda: [signal_item(good(legal_basis={"code": "consentement",
                                                               "consent_ref": "help 2026"}))],
                        "/legal_basis"),
    "basis-allowed": Case(lambda: [signal_item(FUNDS.signal(
        "rules-p", Fund.CAF, "deces_conjoint", purpose="prevention_perte_autonomie",
        legal_basis={"code": "consentement", "consent_ref": "HELP-2026-000001"}))],
        "/legal_basis:base_legale_invalide", consent_policy_context),
    "conditions": Case(lambda: [signal_item(FUNDS.signal(
        "rules-p", Fund.CAF, "deces_conjoint", purpose="prevention_perte_autonomie"))],
        "/legal_basis:condition_non_remplie"),
    "consent-on-record": Case(lambda: [signal_item(good(legal_basis={
        "code": "consentement", "consent_ref": "HELP-2026-000001"}))], "/legal_basis:consentement_absent"),
    "pseudonym-key": Case(lambda: [signal_item(good(key_id=RETIRED_KEY))], "/pseudonym/key_id"),
    "pseudonym-link": Case(lambda: [signal_item(good(pseudonym_previous={"key_id": "xk-20991231-zzzz",
                                                                        "value": "L" * 43}))],
                           "/pseudonym_previous/key_id:unknown"),
    "duplicate": Case(lambda: [signal_item(m := good()), signal_item(m)], "/signal_id:already_accepted"),
    "forward-erased": Case(_forward_sealed_then_erased, "/:forward_erased", options=lambda: {"sealer": KeysGone()}),
    "sealed-form": Case(lambda: [signal_item(good())], "/sealed:missing", options=lambda: {"accept_clear": False}),
    "sealed-opens": Case(_sealed_elsewhere, "/sealed/value:does_not_open",
                         options=lambda: {"sealer": _key_table()[0]}),
    "objection": Case(lambda: [consent_item(FUNDS.consent("rules-p", "opposition", fund=Fund.CAF)),
                               signal_item(good())], "/pseudonym:objection_on_record"),
    "consent-withdrawn": Case(lambda: [consent_item(FUNDS.consent("rules-p", "consentement_retire", fund=Fund.CAF)),
                                       signal_item(good())], "/purpose:consent_withdrawn"),
    "consent-date-format": Case(lambda: [consent_item(FUNDS.consent(
        "rules-p", "consentement_donne", effective_at=TODAY.isoformat()))], "/effective_at"),
    "consent-date-future": Case(lambda: [consent_item(FUNDS.consent(
        "rules-p", "consentement_donne", effective_at=format_timestamp(paris_midnight(TODAY + DAY))))],
        "/effective_at:in_future"),
}


# ------------------------------------------------------------------------- reveals (audit sink)
def _reveal(**members: Any) -> bytes:
    message = {"schema_version": "1.0", "event_id": "ab" * 16, "fund": "caf", "emitter": "caf-35",
               "actor": "agent.caf-35.0042", "purpose": "acces_aux_droits", "case_number": None,
               "sealed_digest": sealed_digest("S" * 60), "revealed_at": format_timestamp(NOW)}
    message.update(members)
    return json.dumps(sign(message, FUNDS.keys[Fund.CAF], FUNDS.key_id(Fund.CAF))).encode()


def _entered(value: bytes) -> list[Any] | None:
    """The audit sink's entries for a reveal event, None if it does not parse (skipped)."""
    maker = EntryMaker(FUNDS.registry())
    try:
        return maker.entries(Record(REVEALS_TOPIC, 0, 0, 0, b"caf", value))
    except ValueError:  # pydantic's ValidationError: apply_records skips the record
        return None


LEDGER_CASES: dict[str, Callable[[], None]] = {}


def _ledger_case(rule: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(check: Callable[[], None]) -> Callable[[], None]:
        LEDGER_CASES[rule] = check
        return check
    return register


@_ledger_case("reveal-schema")
def _reveal_schema() -> None:
    assert _entered(_reveal()) not in (None, [])  # the well-formed one is entered
    for bad in ({"actor": "Jean Dupont"}, {"emitter": "cpam-35"}, {"purpose": "controle"},
                {"case_number": "dossier 42"}, {"sealed_digest": "x"}):
        assert _entered(_reveal(**bad)) is None, bad


@_ledger_case("reveal-signature")
def _reveal_signature() -> None:
    forged = json.loads(_reveal())
    forged["actor"] = "agent.caf-35.0666"
    assert _entered(json.dumps(forged).encode()) == []


@_ledger_case("reveal-case")
def _reveal_case() -> None:
    # Proved against a real casebook in tests/ledger/test_reveal.py (right case, wrong case,
    # unknown case, another fund's seal): here, the sink without a casebook enters no case.
    from tests.ledger import test_reveal

    assert callable(test_reveal.test_the_sink_enters_the_case_only_when_the_seal_proves_it)
    (entry,) = _entered(_reveal(case_number="35-2026-11-0001")) or [None]
    assert entry is not None and entry.case_id is None


# ------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Row:
    id: str
    rule: str
    sdk: str
    sdk_codes: tuple[str, ...]
    exchange: str
    exchange_cell: str
    exchange_codes: tuple[str, ...]

    @property
    def not_on_wire(self) -> bool:
        return self.exchange.startswith("n/a on the wire")

    @property
    def by_ledger(self) -> bool:
        return self.exchange.startswith("ledger sink")

    @property
    def by_service(self) -> bool:
        """A rule of the pseudonymisation service's requests (scheme v2), not of a message."""
        return self.exchange.startswith("pseudonymisation service")


_CODE = re.compile(r"`([a-z0-9_]+)`")
ENFORCERS = ("checks", "engine", "ledger sink", "pseudonymisation service")
LEDGER_OUTCOMES = ("not entered", "entered without a case")


def parse_table(text: str) -> list[Row]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| id |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 7, line
        rows.append(Row(cells[0].strip("`"), cells[1], cells[3], tuple(_CODE.findall(cells[4])),
                        cells[5], cells[6], tuple(_CODE.findall(cells[6]))))
    return rows


def table_problems(rows: list[Row]) -> list[str]:
    """What is wrong with the table: empty when every rule has its enforcement or its reason."""
    problems = []
    known = {r.value for r in Reason}
    ids = [r.id for r in rows]
    problems += [f"rule id {i} twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for row in rows:
        if row.not_on_wire:
            why = row.exchange.partition(":")[2].strip()
            if len(why) < 20:
                problems.append(f"{row.id}: 'n/a on the wire' needs its reason")
        elif not row.exchange.startswith(ENFORCERS):
            problems.append(f"{row.id}: no exchange enforcement ({row.exchange!r})")
        elif row.by_ledger:
            if row.exchange_cell not in LEDGER_OUTCOMES:
                problems.append(f"{row.id}: the ledger sink's outcome must be one of {LEDGER_OUTCOMES}")
        elif not row.exchange_codes:
            problems.append(f"{row.id}: enforced by the exchange but with no reason code")
        for code in (*row.sdk_codes, *row.exchange_codes):
            if code not in known:
                problems.append(f"{row.id}: {code} is not a reason code of services/core/reasons.py")
        if not row.sdk:
            problems.append(f"{row.id}: says nothing of the SDK")
    return problems


def reasons_used(*paths: Path) -> set[str]:
    """Every ``Reason.X`` named in the Python files under ``paths``."""
    found = set()
    for path in paths:
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and node.value.id == "Reason" and node.attr.isupper()):
                    found.add(Reason[node.attr].value)
    return found


SHARED = (ROOT / "services" / "core" / "policy.py", ROOT / "services" / "core" / "dates.py")


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return parse_table(RULES_DOC.read_text(encoding="utf-8"))


def test_every_rule_has_an_exchange_enforcement_or_a_reason(rows: list[Row]) -> None:
    assert len(rows) >= 30
    assert table_problems(rows) == []


def test_the_table_check_can_fail() -> None:
    good_row = "| `a` | r | f | yes | `date_future` | engine: x | `date_future` |"
    header = "| id | rule | field | SDK / CLI | SDK code | exchange | exchange code |\n| --- |\n"
    assert table_problems(parse_table(header + good_row)) == []
    for bad, expected in [
        (good_row.replace("engine: x", ""), "no exchange enforcement"),
        (good_row.replace("engine: x", "n/a on the wire: no"), "needs its reason"),
        (good_row.replace("| `date_future` |", "| — |").replace("`date_future` |", "— |"), "no reason code"),
        (good_row.replace("`date_future` |", "`date_passee` |"), "not a reason code"),
        (good_row.replace("engine: x | `date_future`", "ledger sink: y | `date_future`"), "outcome"),
        (good_row + "\n" + good_row, "twice"),
    ]:
        problems = table_problems(parse_table(header + bad))
        assert any(expected in p for p in problems), (bad, problems)


def test_every_code_the_producer_side_gives_is_in_the_table(rows: list[Row]) -> None:
    in_table = {c for r in rows for c in (*r.sdk_codes, *r.exchange_codes)}
    producer = reasons_used(ROOT / "services" / "producer", *SHARED)
    assert producer - in_table == set()
    assert {"date_future", "date_trop_ancienne", "texte_libre", "nir_invalide"} <= producer  # the scan works


def test_every_code_the_exchange_gives_is_in_its_column(rows: list[Row]) -> None:
    exchange = {c for r in rows for c in r.exchange_codes}
    correlator = reasons_used(ROOT / "services" / "correlator", *SHARED)
    assert correlator - exchange == set()
    assert {"doublon", "signature_invalide", "date_future"} <= correlator


def test_every_enforced_rule_has_a_hand_built_case(rows: list[Row]) -> None:
    # An "n/a on the wire" row may still name the code a message trying it gets (free text:
    # the schema): that answer is tested too.
    answered = {r.id for r in rows if r.exchange_codes and not r.by_ledger and not r.by_service}
    assert {r.id for r in rows if not r.not_on_wire and not r.by_ledger and not r.by_service} <= answered
    assert set(CASES) == answered
    assert set(LEDGER_CASES) == {r.id for r in rows if r.by_ledger}


def test_every_rule_of_the_pseudonymisation_service_is_refused_in_its_tests(rows: list[Row]) -> None:
    """The service's rules are judged on its requests, not on messages: each one's code must
    be what a test of the service (tests/pseudonymiser) sees it answer."""
    service = [r for r in rows if r.by_service]
    assert len(service) >= 5
    tests = (ROOT / "tests" / "pseudonymiser" / "test_service.py").read_text(encoding="utf-8")
    for row in service:
        for code in row.exchange_codes:
            assert f"Reason.{code.upper()}" in tests, (row.id, code)


def _rows() -> Iterator[Row]:
    yield from parse_table(RULES_DOC.read_text(encoding="utf-8"))


@pytest.mark.parametrize("row", [r for r in _rows() if r.id in CASES], ids=lambda r: r.id)
def test_a_hand_built_message_is_refused_with_the_tables_code(row: Row) -> None:
    case = CASES[row.id]
    engine = engine_at(NOW, case.ctx(), registry=case.registry(), **case.options())
    *before, (reason, detail) = answers(engine, case.items())
    assert all(r is None for r, _ in before), before  # the set-up messages are accepted
    assert reason is not None and reason.value == row.exchange_codes[0], (row.id, reason, detail)
    assert detail.startswith(case.detail), (row.id, detail)
    assert "rules-p" not in detail


@pytest.mark.parametrize("rule", sorted(LEDGER_CASES))
def test_a_hand_built_reveal_is_not_entered(rule: str) -> None:
    LEDGER_CASES[rule]()


def test_the_good_message_of_each_case_is_accepted() -> None:
    """The cases differ from an accepted message only by the rule they break."""
    engine = engine_at(NOW)
    assert answers(engine, [signal_item(good()), consent_item(FUNDS.consent(
        "rules-q", "consentement_donne", effective_at=format_timestamp(NOW + CLOCK_SKEW)))]) == [
        (None, ""), (None, "")]
    # emitted exactly at the edges, observed on the edge days: all accepted
    edges = [changed(good(observed_on=TODAY), emitted_at=format_timestamp(NOW + CLOCK_SKEW)),
             changed(FUNDS.signal("rules-q", Fund.CAF, "separation", observed_on=oldest_accepted(TODAY)),
                     emitted_at=format_timestamp(paris_midnight(oldest_accepted(TODAY))))]
    assert answers(engine_at(NOW), [signal_item(m) for m in edges]) == [(None, ""), (None, "")]


def test_a_redelivery_after_the_date_turned_is_answered_as_the_first_time() -> None:
    """Accepted at 23:59 (Paris) on the last day its observation date was young enough, the
    signal is redelivered at 00:01 after a crash: same position, same answer."""
    last_day = dt.date(2026, 11, 20)
    before = paris_midnight(last_day + DAY) - dt.timedelta(minutes=1)
    after = before + dt.timedelta(minutes=2)
    funds = Funds(now=before)
    msg = funds.signal("rules-r", Fund.CAF, "impaye_loyer", observed_on=oldest_accepted(last_day))
    rec = Record(CAF, _partition(wire(msg)), 5, int(before.timestamp() * 1000), None, wire(msg))
    table: dict[bytes, bytes] = {}
    first = Engine(context(), funds.registry(), clock=lambda: before).process([rec], table.get)
    table.update({k: v for k, (_, v) in first.writes.items()})
    again = Engine(context(), funds.registry(), clock=lambda: after).process([rec], table.get)
    assert first.accepted == again.accepted == 1
    # the same record at another position is a new message, judged now: too old
    other = rec._replace(offset=6)
    late = Engine(context(), funds.registry(), clock=lambda: after).process([other], table.get)
    assert late.rejected == 1
    (letter,) = [json.loads(o.value or b"") for o in late.outputs if o.topic == DEADLETTER_TOPIC]
    assert letter["reason"] == "date_trop_ancienne"


# ------------------------------------------------------------------------- SDK and correlator agree
@pytest.fixture(scope="module")
def producer_side(tmp_path_factory: pytest.TempPathFactory) -> tuple[SignalBuilder, Engine, list[dt.datetime]]:
    """The CAF's SDK (real keys) and an engine trusting its registry, with a settable clock."""
    from services.platform.settings import load_settings

    var = tmp_path_factory.mktemp("rules-sdk")
    keyed: Settings = load_settings(var_dir=var, key_dir=var / "keys", database_url=f"sqlite:///{var / 'c.db'}")
    init_fund_keys(keyed.key_dir, Fund.CAF)
    init_exchange_key(keyed.key_dir)
    clock = [NOW]
    engine = Engine(context(), load_registry(registry_path(keyed.key_dir)), clock=lambda: clock[0])
    return SignalBuilder(keyed, Fund.CAF), engine, clock


def sdk_answer(builder: SignalBuilder, observed: dt.date, now: dt.datetime,
               nir: str) -> tuple[Reason | None, bytes | None]:
    """The SDK's reason for ``observed`` judged at ``now``, or its signed signal."""
    try:
        row = builder.build(SignalInput(nir, "impaye_loyer", observed, "35", "DOS-1"),
                            today=today_paris(now), now=now)
    except Rejected as exc:
        assert exc.field == F_DATE
        return exc.reason, None
    return None, row.value


def both_answers(side: tuple[SignalBuilder, Engine, list[dt.datetime]], observed: dt.date,
                 now: dt.datetime, nir: str) -> tuple[Reason | None, Reason | None]:
    """(SDK, correlator) on ``observed`` at ``now``. The correlator judges the SDK's own bytes
    when the SDK built them, else a hand-built signal with that date emitted at ``now``."""
    builder, engine, clock = side
    sdk, value = sdk_answer(builder, observed, now, nir)
    if value is None:
        funds = Funds(now=now)
        value = wire(funds.signal("rules-s", Fund.CAF, "impaye_loyer", observed_on=observed))
        engine = Engine(context(), funds.registry(), clock=lambda: now)
    clock[0] = now
    record = Record(CAF, _partition(value), 0, int(now.timestamp() * 1000), None, value)
    batch = engine.process([record], {}.get)  # a person of its own every time: no doublon
    letters = [json.loads(o.value or b"") for o in batch.outputs if o.topic == DEADLETTER_TOPIC]
    exchange = Reason(letters[0]["reason"]) if letters else None
    return sdk, exchange


BOUNDARIES = [  # (today in Paris, observed_on, expected)
    (dt.date(2026, 11, 20), dt.date(2026, 11, 20), None),
    (dt.date(2026, 11, 20), dt.date(2026, 11, 21), Reason.DATE_FUTURE),
    (dt.date(2026, 11, 20), dt.date(2024, 11, 20), None),                   # exactly 2 years ago
    (dt.date(2026, 11, 20), dt.date(2024, 11, 19), Reason.DATE_TROP_ANCIENNE),
    (dt.date(2028, 2, 29), dt.date(2026, 2, 28), None),                     # from a 29 February
    (dt.date(2028, 2, 29), dt.date(2026, 2, 27), Reason.DATE_TROP_ANCIENNE),
    (dt.date(2028, 2, 29), dt.date(2028, 3, 1), Reason.DATE_FUTURE),
    (dt.date(2026, 2, 28), dt.date(2024, 2, 29), None),                     # a 29 February observed
    (dt.date(2026, 3, 1), dt.date(2024, 2, 29), Reason.DATE_TROP_ANCIENNE),
    (dt.date(2026, 3, 1), dt.date(2024, 3, 1), None),
]


@pytest.mark.parametrize(("today", "observed", "expected"), BOUNDARIES, ids=lambda v: str(v))
@pytest.mark.parametrize("hour", [0, 12, 23])
def test_sdk_and_correlator_agree_on_the_boundary_days(
        producer_side: tuple[SignalBuilder, Engine, list[dt.datetime]], today: dt.date,
        observed: dt.date, expected: Reason | None, hour: int) -> None:
    now = (paris_midnight(today) + dt.timedelta(hours=hour, minutes=30))
    assert today_paris(now) == today
    nir = make_nir(random.Random(1), "35")
    assert both_answers(producer_side, observed, now, nir) == (expected, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day=st.dates(min_value=dt.date(2025, 1, 1), max_value=dt.date(2031, 12, 31)),
       minutes=st.integers(min_value=0, max_value=24 * 60 - 1),
       offset=st.one_of(st.integers(min_value=-800, max_value=3),
                        st.sampled_from([0, 1, -365 * MAX_AGE_YEARS, -365 * MAX_AGE_YEARS - 1,
                                         -365 * MAX_AGE_YEARS + 1, -366 * MAX_AGE_YEARS])))
def test_sdk_and_correlator_agree_on_any_day_and_hour(
        producer_side: tuple[SignalBuilder, Engine, list[dt.datetime]], day: dt.date, minutes: int,
        offset: int) -> None:
    now = paris_midnight(day) + dt.timedelta(minutes=minutes)
    today = today_paris(now)
    observed = today + dt.timedelta(days=offset)
    nir = make_nir(random.Random(offset), "35")
    sdk, exchange = both_answers(producer_side, observed, now, nir)
    assert sdk == exchange
    assert (sdk is None) == (oldest_accepted(today) <= observed <= today)
    assert limits_at(now).today == today


def test_an_sdk_signal_is_parsed_with_the_values_it_was_built_with(
        producer_side: tuple[SignalBuilder, Engine, list[dt.datetime]]) -> None:
    builder, _, _ = producer_side
    _, value = sdk_answer(builder, TODAY, NOW, make_nir(random.Random(2), "35"))
    assert value is not None
    signal = parse(Signal, value)
    assert signal.emitted_at == NOW and signal.observed_on == TODAY
