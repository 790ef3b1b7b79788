"""Issue #14: a second producer, in Node.js (tests/interop/node), written from the contract
documents and test vectors alone, against the real embedded broker and a real correlator
worker, beside the Python CLI.

- The Node producer reproduces every test vector of schemas/vectors byte for byte.
- Carsat publishes with the Node producer (its own key folder, its own Ed25519 key pair,
  registered with ``help-exchange keys register``), CAF and Urssaf with ``help-exchange
  publish``, for the same people: the correlator opens exactly the situations that need one
  Node signal and one CLI signal, and none for the people only one side knows.
- ``help-exchange reveal --fund carsat`` opens the seals the Node producer made (the tokens
  taken from the situations the correlator published), and only those.
- Every bad-input class, sent by the Node producer, gets its receipt with the expected
  reason and a dead letter, without stopping the worker; sent again once the cause is fixed,
  each is accepted (nothing is lost).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.platform.settings import Settings, load_settings
from services.producer.sdk import today_paris
from tests.correlator.harness import Collector, start_worker, stop
from tests.support.local import REPO, embedded_broker
from tests.support.signalkeys import key_endpoint

pytestmark = pytest.mark.integration

NODE_DIR = REPO / "tests" / "interop" / "node"
Position = tuple[str, int, int]
Row = tuple[str, str, str, str, str] | tuple[str, str, str, str, str, str, str]
HEADER = "nir;categorie;date_observation;departement;reference_dossier;consentement;finalite"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: the interop test needs node >= 20 and npm (see README)")
    if not (NODE_DIR / "node_modules" / "@platformatic" / "kafka").is_dir():
        pytest.fail("the Node producer's packages are missing: `make test` installs them "
                    "(npm ci --prefix tests/interop/node)")
    return node


def nir(serial: int, *, yy: int = 85, month: int = 5, dept: str = "35") -> str:
    """A valid NIR (key computed as docs/contract.md §3 says), distinct per ``serial``."""
    body = f"{1 + serial % 2}{yy:02d}{month:02d}{dept}{serial % 1000:03d}{(serial * 37) % 1000:03d}"
    key = 97 - int(body.replace("2A", "19").replace("2B", "18")) % 97
    return f"{body}{key:02d}"


def spaced(n: str) -> str:
    """As a back-office prints it: 1 85 05 35 006 084 91."""
    return f"{n[0]} {n[1:3]} {n[3:5]} {n[5:7]} {n[7:10]} {n[10:13]} {n[13:]}"


def dotted(n: str) -> str:
    """Another back-office's habit: dots, and a lower-case Corsican département."""
    return f"{n[0]}.{n[1:3]}.{n[3:5]}.{n[5:7].lower()}.{n[7:10]}.{n[10:13]}.{n[13:]}"


def extract(path: Path, rows: list[Row]) -> Path:
    lines = [HEADER] + [";".join((*r, "", "")[:7]) for r in rows]
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Exchange:
    """A private broker, a key folder shared by the exchange operator and the funds, one worker."""

    settings: Settings
    tmp: Path
    env: dict[str, str]
    node: str
    carsat_key: str
    worker: subprocess.Popen[bytes] | None = None
    calls: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers or ""

    def cli(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """``help-exchange ARGS`` as an operator or a fund runs it (a process of its own)."""
        done = subprocess.run([sys.executable, "-m", "services.app.cli", *args], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=120)
        self.calls.append(f"help-exchange {' '.join(args)} -> {done.returncode}")
        assert done.returncode in ok, f"help-exchange {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def node_run(self, *args: str, ok: tuple[int, ...] = (0,)) -> list[dict[str, Any]]:
        """``node producer.mjs ARGS``; its JSON lines."""
        done = subprocess.run([self.node, str(NODE_DIR / "producer.mjs"), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        self.calls.append(f"node producer.mjs {' '.join(args)} -> {done.returncode}")
        assert done.returncode in ok, (f"node producer.mjs {' '.join(args)}: {done.returncode}\n"
                                       f"{done.stdout}\n{done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def node_publish(self, name: str, rows: list[Row], *flags: str, ok: tuple[int, ...] = (0,)) -> list[dict[str, Any]]:
        path = extract(self.tmp / f"{name}.csv", rows)
        # Sealed, as the exchange requires by default (contract §2.1), with its key endpoint.
        sealing = () if "--signal-keys" in flags else ("--signal-keys", self.settings.signal_keys_url)
        return self.node_run("publish", "--fund", "carsat", "--input", str(path), "--key-dir",
                             str(self.settings.key_dir), "--bootstrap", self.bootstrap, *sealing, *flags, ok=ok)

    def alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    def worker_log(self) -> str:
        log = self.tmp / "worker.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    node = node_binary()
    tmp = tmp_path_factory.mktemp("node-interop")
    with embedded_broker(tmp / "broker") as bootstrap, key_endpoint(load_settings(
            bootstrap_servers=bootstrap, var_dir=tmp / "var", key_dir=tmp / "var" / "keys",
            database_url=f"sqlite:///{tmp / 'var' / 'casebook.db'}", session_timeout_ms=6000)) as settings:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELP_")}
        env.update(HELP_BOOTSTRAP_SERVERS=bootstrap, HELP_KEY_DIR=str(settings.key_dir),
                   HELP_VAR_DIR=str(settings.var_dir), HELP_DATABASE_URL=settings.database_url,
                   HELP_TERRITORY="35", HELP_SIGNAL_KEYS_URL=settings.signal_keys_url)
        ex = Exchange(settings, tmp, env, node, carsat_key="")
        # The exchange operator makes the exchange key; CAF and Urssaf use the Python tools.
        ex.cli("keys", "init-exchange")
        ex.cli("keys", "init", "--fund", "caf")
        ex.cli("keys", "init", "--fund", "urssaf")
        # Carsat's back-office is the Node producer: its key folder and key pair are made in
        # Node; the operator registers the public key (PEM) it hands over.
        made = ex.node_run("init", "--fund", "carsat", "--key-dir", str(settings.key_dir))[0]
        ex.carsat_key = made["signing"]
        ex.cli("keys", "register", "--fund", "carsat", "--public-key", made["public_key"],
               "--key-id", made["signing"])
        ex.worker = start_worker(settings, "corr-node-interop", tmp / "worker.log")
        try:
            yield ex
        finally:
            stop(ex.worker)


async def accepted_with_its_situation(collector: Collector, exchange: Exchange,
                                     result: dict[str, Any]) -> Position:
    """Wait until the Node producer's signal ``result`` has its receipt and a situation names its
    pseudonym; the receipt must say accepted. Its position on the topic."""
    position = (result["topic"], result["partition"], result["offset"])
    await collector.until(lambda c: position in c.receipted and any(
        s["pseudonym"]["value"] == result["pseudonym"] for s in c.latest_situations().values()),
        timeout=90, alive=exchange.alive)
    receipt = collector.receipt_for(*position)
    assert receipt is not None and receipt["status"] == "accepte", receipt
    return position


def sent(results: list[dict[str, Any]]) -> list[Position]:
    return [(r["topic"], r["partition"], r["offset"]) for r in results if r["status"] == "envoye"]


def at(receipt: dict[str, Any]) -> Position:
    s = receipt["source"]
    return s["topic"], s["partition"], s["offset"]


# ----------------------------------------------------------------------------- vectors
def test_node_producer_reproduces_every_vector() -> None:
    node = node_binary()
    done = subprocess.run([node, str(NODE_DIR / "vectors.mjs")], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " 0 difference(s)" in done.stdout and int(done.stdout.split()[-6]) > 200, done.stdout


# ----------------------------------------------------------------------------- correlation
@dataclass
class Correlated:
    node_results: list[dict[str, Any]]
    situations: dict[str, dict[str, Any]]  # latest event by situation id
    expected: dict[str, dict[str, Any]]  # by pseudonym
    refs: dict[str, str]  # carsat reference by Node pseudonym


@pytest.fixture(scope="module")
def correlated(exchange: Exchange) -> Correlated:
    """CAF and Urssaf (Python CLI) and Carsat (Node) publish for the same people."""
    today = today_paris()
    d = (today - dt.timedelta(days=3)).isoformat()
    d_fr = (today - dt.timedelta(days=2)).strftime("%d/%m/%Y")
    people = {i: nir(400 + i) for i in range(8)}
    people[2] = nir(402, dept="2A")  # Corsica: the two sides write it differently
    people[7] = nir(407, yy=58, month=3)  # 55 or more: prevention of the loss of autonomy
    # person -> (CLI fund, CLI category, CLI purpose) and whether Carsat (Node) signals them.
    cli_side = {0: ("caf", "impaye_loyer", ""), 1: ("caf", "separation", ""),
                2: ("caf", "perte_logement", ""), 3: ("urssaf", "impaye_cotisations", ""),
                4: ("caf", "parent_isole", ""),  # CAF only: no situation
                7: ("caf", "deces_conjoint", "prevention_perte_autonomie")}
    node_side = {0: ("exoneration_csg", ""), 1: ("veuvage_pension_reversion", ""),
                 2: ("passage_retraite_rupture_ressources", ""), 3: ("exoneration_csg", ""),
                 5: ("veuvage_pension_reversion", ""),  # Carsat only: no situation
                 7: ("veuvage_pension_reversion", "prevention_perte_autonomie")}
    for fund in ("caf", "urssaf"):
        rows: list[Row] = [(spaced(people[p]), cat, d, "35", f"{fund.upper()}-{p:04d}", "", purpose)
                           for p, (f, cat, purpose) in cli_side.items() if f == fund]
        exchange.cli("publish", "--fund", fund, "--input", str(extract(exchange.tmp / f"{fund}.csv", rows)))
    node_rows: list[Row] = [(dotted(people[p]), cat, d_fr, "2a" if p == 2 else "35", f"CARSAT/{p:03d}.R", "", purpose)
                            for p, (cat, purpose) in node_side.items()]

    async def run() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        collector = Collector(exchange.bootstrap, exchange.settings.database_url)
        await collector.start()
        try:
            results = exchange.node_publish("carsat", node_rows)
            positions = sent(results)
            assert len(positions) == len(node_rows), results
            await collector.until(lambda c: set(positions) <= c.receipted and len(c.latest_situations()) >= 5,
                                  timeout=90, alive=exchange.alive)
            await asyncio.sleep(2.0)  # anything extra would arrive now
            await collector.poll()
            for pos in positions:
                receipt = collector.receipt_for(*pos)
                assert receipt is not None and receipt["status"] == "accepte", (pos, receipt)
            return results, collector.latest_situations()
        finally:
            await collector.stop()

    try:
        results, situations = asyncio.run(run())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{exchange.calls}\n{exchange.worker_log()}") from None
    pseudonym_of = {p: r["pseudonym"] for p, r in zip(node_side, results, strict=True)}
    expected: dict[str, dict[str, Any]] = {}
    for p, (cat, purpose) in node_side.items():
        if p not in cli_side:
            continue
        fund, cli_cat, _ = cli_side[p]
        rules = {"situation_partagee"}
        if fund == "urssaf":
            rules.add("help_travailleur_independant")
        if purpose == "prevention_perte_autonomie":
            rules.add("prevention_perte_autonomie")
        expected[pseudonym_of[p]] = {"funds": {fund, "carsat"}, "categories": {(fund, cli_cat), ("carsat", cat)},
                                     "rules": rules, "territory": "2A" if p == 2 else "35"}
    refs = {pseudonym_of[p]: f"CARSAT/{p:03d}.R" for p in node_side}
    return Correlated(results, situations, expected, refs)


def test_node_and_cli_signals_of_the_same_people_open_exactly_the_expected_situations(
        correlated: Correlated) -> None:
    got = {s["pseudonym"]["value"]: s for s in correlated.situations.values()}
    assert len(got) == len(correlated.situations), "one situation per person"
    assert set(got) == set(correlated.expected), (len(got), len(correlated.expected))
    for pseudonym, want in correlated.expected.items():
        s = got[pseudonym]
        assert set(s["funds"]) == want["funds"], s
        assert {(c["fund"], c["code"]) for c in s["categories"]} == want["categories"], s
        assert set(s["rules"]) == want["rules"], s
        assert s["kind"] in ("ouverte", "mise_a_jour"), s


def test_reveal_opens_the_seals_the_node_producer_made(exchange: Exchange, correlated: Correlated) -> None:
    rows = ["situation;organisme;reference"]
    for s in correlated.situations.values():
        rows += [f"{s['situation_id']};{r['fund']};scelle:{r['sealed_ref']['key_id']}:{r['sealed_ref']['value']}"
                 for r in s["refs"]]
    export = exchange.tmp / "revue.csv"
    export.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = exchange.tmp / "revue-carsat.csv"
    exchange.cli("reveal", "--fund", "carsat", "--input", str(export), "--out", str(out),
                 "--actor", "agent.carsat-35.0001")
    revealed = out.read_text(encoding="utf-8-sig").splitlines()
    carsat = [line.split(";") for line in revealed[1:] if line.split(";")[1] == "carsat"]
    others = [line.split(";") for line in revealed[1:] if line.split(";")[1] != "carsat"]
    by_situation = {s["situation_id"]: s["pseudonym"]["value"] for s in correlated.situations.values()}
    assert len(carsat) == len(correlated.expected) and others
    for situation_id, _, reference in carsat:
        assert reference == correlated.refs[by_situation[situation_id]]
    assert all(ref.startswith("scelle:") for _, _, ref in others)  # the other funds' stay sealed


# ----------------------------------------------------------------------------- bad input
async def test_every_bad_input_class_from_the_node_producer_is_answered_and_nothing_is_lost(
        exchange: Exchange) -> None:
    assert exchange.worker is not None
    today = today_paris()
    d = (today - dt.timedelta(days=1)).isoformat()
    future = (today + dt.timedelta(days=2)).isoformat()
    stale = (today - dt.timedelta(days=3 * 366)).isoformat()
    p = {name: nir(600 + i) for i, name in enumerate(
        ("forged", "replay", "topic", "partition", "oversize", "future", "stale", "retired", "unknown"))}

    def row(name: str, date: str = d) -> list[Row]:
        return [(p[name], "exoneration_csg", date, "35", f"BAD-{name.upper()}")]

    # Two more Carsat key pairs made in Node: one registered then retired, one not registered.
    retired = exchange.node_run("keygen", "--fund", "carsat", "--key-dir", str(exchange.settings.key_dir))[0]
    exchange.cli("keys", "register", "--fund", "carsat", "--public-key", retired["public_key"],
                 "--key-id", retired["signing"])
    exchange.cli("keys", "retire", "--fund", "carsat", "--key-id", retired["signing"])
    unknown = exchange.node_run("keygen", "--fund", "carsat", "--key-dir", str(exchange.settings.key_dir))[0]

    collector = Collector(exchange.bootstrap, exchange.settings.database_url)
    await collector.start()
    alive = exchange.alive
    try:
        # The partner of the misrouted-partition person, from CAF (CLI).
        partner: list[Row] = [(p["partition"], "impaye_loyer", d, "35", "CAF-P")]
        exchange.cli("publish", "--fund", "caf", "--input", str(extract(exchange.tmp / "caf-partner.csv", partner)))
        home = (await asyncio.to_thread(exchange.node_publish, "probe", row("partition"), "--dry-run"))[0]
        wrong_partition = (home["partition"] + 1) % 8
        bad: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}
        cases: list[tuple[str, list[Row], tuple[str, ...], list[str]]] = [
            ("forged", row("forged"), ("--forge-signature",), ["signature_invalide"]),
            ("replay", row("replay"), ("--repeat", "2"), ["", "doublon"]),
            ("topic", row("topic"), ("--topic-fund", "caf"), ["topic_incorrect"]),
            ("partition", row("partition"), ("--partition", str(wrong_partition)), [""]),
            ("oversize", row("oversize"), ("--pad-bytes", "17000"), ["message_trop_volumineux"]),
            ("future", row("future", future), ("--unchecked-dates",), ["date_future"]),
            ("stale", row("stale", stale), ("--unchecked-dates",), ["date_trop_ancienne"]),
            ("retired", row("retired"), ("--signing-key-id", retired["signing"]), ["cle_signature_retiree"]),
            ("unknown", row("unknown"), ("--signing-key-id", unknown["signing"]), ["cle_signature_inconnue"]),
        ]
        for name, rows, flags, reasons in cases:
            bad[name] = (await asyncio.to_thread(exchange.node_publish, name, rows, *flags), reasons)
        positions = [pos for results, _ in bad.values() for pos in sent(results)]
        assert len(positions) == 10, bad
        await collector.until(lambda c: set(positions) <= c.receipted, timeout=90, alive=alive)
        for name, (results, reasons) in bad.items():
            for pos, reason in zip(sent(results), reasons, strict=True):
                receipt = collector.receipt_for(*pos)
                assert receipt is not None, (name, pos)
                owner = pos[0].split(".")[2]  # the topic's fund gets the receipt (§11)
                assert receipt["fund"] == owner, (name, receipt)
                if not reason:
                    assert (receipt["status"], receipt["reason"]) == ("accepte", None), (name, receipt)
                    continue
                assert (receipt["status"], receipt["reason"]) == ("rejete", reason), (name, receipt)
                letters = [x for x in collector.deadletters.values() if at(x) == pos]
                assert len(letters) == 1 and letters[0]["reason"] == reason, (name, letters)
                raw = base64.b64decode(letters[0]["raw"])
                assert b"BAD-" not in raw and p[name].encode() not in raw  # sealed and pseudonymised
        assert alive(), exchange.worker_log()

        # Fix each cause and send again: every one is accepted, none lost.
        exchange.cli("keys", "register", "--fund", "carsat", "--public-key", unknown["public_key"],
                     "--key-id", unknown["signing"])
        fixes = [
            ("forged", row("forged"), ()),
            ("topic", row("topic"), ()),
            ("oversize", row("oversize"), ()),
            ("future", row("future"), ()),
            ("stale", row("stale"), ()),
            ("retired", row("retired"), ()),  # signed with the current key
            ("unknown", row("unknown"), ("--signing-key-id", unknown["signing"])),  # now registered
        ]
        fixed = {name: await asyncio.to_thread(exchange.node_publish, f"{name}-fixed", rows, *flags)
                 for name, rows, flags in fixes}
        again = [pos for results in fixed.values() for pos in sent(results)]
        await collector.until(lambda c: set(again) <= c.receipted
                              and any(s["pseudonym"]["value"] == home["pseudonym"]
                                      for s in c.latest_situations().values()), timeout=90, alive=alive)
        for name, results in fixed.items():
            receipt = collector.receipt_for(*sent(results)[0])
            assert receipt is not None and (receipt["status"], receipt["reason"]) == ("accepte", None), (name, receipt)
        # The record on the wrong partition was forwarded, accepted and correlated with CAF's.
        situation = next(s for s in collector.latest_situations().values()
                         if s["pseudonym"]["value"] == home["pseudonym"])
        assert set(situation["funds"]) == {"caf", "carsat"}
        # The Node producer reads its own receipts too: one per signal it sent on its topic.
        ids = sorted({r["signal_id"] for results in fixed.values() for r in results
                      if r["topic"] == "help.signals.carsat.v1"})
        mine = await asyncio.to_thread(exchange.node_run, "receipts", "--fund", "carsat", "--bootstrap",
                                       exchange.bootstrap, "--signal-ids", ",".join(ids), "--timeout", "30",
                                       "--until-accepted")
        assert {r["signal_id"] for r in mine if r["status"] == "accepte"} == set(ids)
        assert alive(), exchange.worker_log()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{exchange.calls}\n{exchange.worker_log()}") from None
    finally:
        await collector.stop()


# ----------------------------------------------------------------------------- sealed signals
async def test_the_node_producer_seals_with_the_key_endpoint_and_the_correlator_opens(exchange: Exchange) -> None:
    """Contract §2.1 and §4.4 from the documents alone: the Node producer asks the exchange's
    key endpoint, seals the person members, signs; the worker opens them and correlates the
    signal with a CAF one of the same person (a situation opens); the topic holds no
    category, date, département or sealed reference in clear."""
    d = (today_paris() - dt.timedelta(days=3)).isoformat()
    person = nir(611)
    collector = Collector(exchange.bootstrap, exchange.settings.database_url)
    await collector.start()
    try:
        exchange.cli("publish", "--fund", "caf", "--input",
                     str(extract(exchange.tmp / "caf-sealed.csv", [(person, "separation", d, "35", "CAF-SEALED")])))
        results = await asyncio.to_thread(exchange.node_publish, "sealed", [(person, "veuvage_pension_reversion", d,
                                                                            "35", "CARSAT/SEALED")],
                                          "--signal-keys", exchange.settings.signal_keys_url)
        (result,) = results
        assert result["status"] == "envoye" and result["sealed"] is True, result
        position = await accepted_with_its_situation(collector, exchange, result)
    finally:
        await collector.stop()
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": exchange.bootstrap, "group.id": "sealed-probe",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(position[0], position[1], position[2])])
        msg = consumer.poll(10)
        assert msg is not None and not msg.error()
        raw = msg.value() or b""
    finally:
        consumer.close()
    wire = json.loads(raw)
    assert wire["signal_id"] == result["signal_id"] and "sealed" in wire
    assert not {"category", "observed_on", "territory", "sealed_ref"} & set(wire)
    assert b"veuvage" not in raw and b"CARSAT" not in raw


# ----------------------------------------------------------------------------- key rotation
def test_a_rotation_through_the_node_producer_keeps_the_link(exchange: Exchange) -> None:
    """Contract §4.3 from the documents alone: CAF and Urssaf (Python CLI) open a situation
    under the current exchange key; the operator adds a newer one; Carsat's Node producer,
    given the previous key (``--previous-key-id``), sends the person under the new key with
    the link. The correlator moves the person's state: one situation, which keeps its id and
    now names the new pseudonym, with all three funds. (Runs last in the module: it leaves a
    newer exchange key current.)"""
    from services.producer.pseudonym import pseudonym_value

    registry = json.loads((exchange.settings.key_dir / "registry.json").read_text())
    active = sorted((k for k in registry["exchange_keys"] if k.get("status", "active") == "active"),
                    key=lambda k: (k["created_at"], k["key_id"]))
    old_id = active[-1]["key_id"]
    old_key = (exchange.settings.key_dir / "exchange" / f"{old_id}.key").read_bytes()
    d = (today_paris() - dt.timedelta(days=3)).isoformat()
    person = nir(733)
    old_value = pseudonym_value(old_key, person)

    async def run() -> dict[str, Any]:
        collector = Collector(exchange.bootstrap, exchange.settings.database_url)
        await collector.start()
        try:
            for fund, cat in (("caf", "separation"), ("urssaf", "impaye_cotisations")):
                exchange.cli("publish", "--fund", fund, "--input", str(extract(
                    exchange.tmp / f"{fund}-rotation.csv", [(person, cat, d, "35", f"{fund.upper()}-ROT")])))
            await collector.until(lambda c: any(s["pseudonym"]["value"] == old_value
                                                for s in c.latest_situations().values()),
                                  timeout=90, alive=exchange.alive)
            (before,) = [s for s in collector.latest_situations().values() if s["pseudonym"]["value"] == old_value]
            exchange.cli("keys", "init-exchange")  # the operator announces a newer key: both active
            refused = exchange.node_run("publish", "--fund", "carsat", "--input", str(extract(
                exchange.tmp / "carsat-rotation-bad.csv", [(person, "exoneration_csg", d, "35", "CARSAT/ROT")])),
                "--key-dir", str(exchange.settings.key_dir), "--bootstrap", exchange.bootstrap,
                "--previous-key-id", "xk-20000101-0000", ok=(1,))
            assert refused == []  # a link the exchange would refuse: nothing sent
            (result,) = await asyncio.to_thread(
                exchange.node_publish, "carsat-rotation", [(person, "exoneration_csg", d, "35", "CARSAT/ROT")],
                "--previous-key-id", old_id)
            assert result["status"] == "envoye" and result["pseudonym_previous"] == old_value, result
            assert result["pseudonym"] != old_value
            await accepted_with_its_situation(collector, exchange, result)
            await asyncio.sleep(2.0)  # anything extra would arrive now
            await collector.poll()
            mine = [s for s in collector.latest_situations().values()
                    if s["pseudonym"]["value"] in (old_value, result["pseudonym"])]
            assert len(mine) == 1, mine  # one situation: none split, none doubled
            (after,) = mine
            assert after["situation_id"] == before["situation_id"] and after["version"] > before["version"]
            assert after["pseudonym"]["value"] == result["pseudonym"]
            assert set(after["funds"]) == {"caf", "urssaf", "carsat"}
            return after
        finally:
            await collector.stop()

    try:
        asyncio.run(run())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{exchange.calls}\n{exchange.worker_log()}") from None
