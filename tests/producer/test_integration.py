"""The producer against the real embedded broker (Tansu), read back with an independent
client (confluent-kafka) and verified with an independent Ed25519 (PyNaCl)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import rfc8785
from click.testing import CliRunner

from services.app.cli import cli
from services.core.messages import Receipt, SourcePosition, to_wire
from services.core.reasons import Reason
from services.core.registry import load_registry
from services.core.signing import b64u_decode
from services.core.types import Fund
from services.platform.kafka import producer as kafka_producer
from services.platform.settings import Settings, load_settings
from services.platform.topics import receipt_topic, signal_topic
from services.producer.keys import init_exchange_key, init_fund_keys, registry_path
from services.producer.publish import publish_file
from services.producer.reveal import reveal
from services.producer.sdk import Publisher, SignalBuilder, SignalInput, today_paris
from services.producer.seal import token
from tests.support.extracts import make_nir, nirs_in, read_topic, write_csv, wrong_key
from tests.support.local import REPO, free_port
from tests.support.signalkeys import open_signal

pytestmark = pytest.mark.integration
TODAY = today_paris()  # the day the producer judges dates by (Europe/Paris), not UTC


def keyed(settings: Settings, fund: Fund = Fund.CAF) -> str:
    """Create the fund's keys and an exchange key; returns the fund's signing key id."""
    ids = init_fund_keys(settings.key_dir, fund)
    init_exchange_key(settings.key_dir)
    return ids.signing


def mine(bootstrap: str, fund: Fund, signing_key_id: str) -> list[tuple[bytes, bytes]]:
    """The messages of the fund's topic signed by this test's key.

    The broker is shared by the whole session: other tests put deliberately malformed or
    forged messages on the same topic, which are not ours to parse."""
    out = []
    for k, v in read_topic(bootstrap, signal_topic(fund)):
        try:
            doc = json.loads(v)
        except ValueError:
            continue
        signature = doc.get("signature") if isinstance(doc, dict) else None
        if isinstance(signature, dict) and signature.get("key_id") == signing_key_id:
            out.append((k, v))
    return out


def outbox_depth(text: str) -> dict[tuple[str, str], float]:
    """help_producer_outbox_rows, as the Prometheus client's parser reads the text."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.labels["fund"], s.labels["state"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "help_producer_outbox_rows"}


def run_cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj={"settings": settings}, catch_exceptions=False)
    return result.exit_code, result.output


def test_publish_file_end_to_end(settings: Settings, bootstrap: str, tmp_path: Path) -> None:
    sig_id = keyed(settings)
    rng = random.Random(11)
    d = (TODAY - dt.timedelta(days=10)).isoformat()
    good_nirs = [make_nir(rng, dept) for dept in ("35", "2A", "2B", "61", "51", "35")]
    refs = [f"CAF35-{i:06d}" for i in range(len(good_nirs))]
    rows = [f"{n[:1]} {n[1:3]} {n[3:5]} {n[5:7]} {n[7:10]} {n[10:13]} {n[13:]};separation;{d};35;{r}"
            for n, r in zip(good_nirs, refs, strict=True)]
    rows[1] = rows[1].replace(d, (TODAY - dt.timedelta(days=3)).strftime("%d/%m/%Y"))
    bad_nir = make_nir(rng)
    rows += [
        f"{wrong_key(bad_nir)};separation;{d};35;BAD-1",                      # wrong NIR key
        f"{make_nir(rng)};licorne;{d};35;BAD-2",                               # unknown category
        f"{make_nir(rng)};impaye_cotisations;{d};35;BAD-3",                    # another fund's
        f"{make_nir(rng)};grossesse;{d};35;BAD-4",                             # SENS
        f"{make_nir(rng)};maladie_handicap_enfant;{d};35;BAD-5",               # MED
        f"{make_nir(rng)};separation;{(TODAY + dt.timedelta(days=2)).isoformat()};35;BAD-6",  # future
        f"{make_nir(rng)};separation;31/02/2026;35;BAD-7",                     # unparseable
        f"{make_nir(rng)};separation;{d};35;appeler Mme Durand",               # free text
        f"{make_nir(rng)};separation;{d}",                                     # a column short
    ]
    path = write_csv(tmp_path / "extrait.csv", rows)
    with open(path, "ab") as f:  # a line that is not UTF-8, then a valid line after it
        f.write(f"{make_nir(rng)};s\xe9paration;{d};35;BAD-8\r\n".encode("latin-1"))
        f.write(f"{good_nirs[0]};impaye_loyer;{d};35;{refs[0]}\r\n".encode())
    report = tmp_path / "rejets.csv"

    code, out = run_cli(settings, "publish", "--fund", "caf", "--input", str(path), "--reject-report", str(report))
    assert code == 2, out
    assert "lignes lues                    : 17" in out and "signalements publiés           : 7" in out
    assert "restant dans la boîte d'envoi  : 0" in out
    lines = report.read_bytes().decode("utf-8-sig").splitlines()
    assert lines[0] == "ligne;champ;motif;libelle;nir_masque"
    motifs = [ln.split(";")[2] for ln in lines[1:]]
    assert motifs == [r.value for r in (Reason.CLE_NIR_INVALIDE, Reason.CATEGORIE_INCONNUE,
                                        Reason.CATEGORIE_AUTRE_ORGANISME, Reason.CATEGORIE_MEDICALE,
                                        Reason.CATEGORIE_MEDICALE, Reason.DATE_FUTURE, Reason.DATE_INVALIDE,
                                        Reason.TEXTE_LIBRE, Reason.LIGNE_MAL_FORMEE, Reason.ENCODAGE_INVALIDE)]
    assert not nirs_in(report.read_bytes()) and wrong_key(bad_nir) not in report.read_text("utf-8-sig")

    messages = mine(bootstrap, Fund.CAF, sig_id)
    assert len(messages) == 7
    registry = load_registry(registry_path(settings.key_dir))
    entry = next(e for e in registry.funds[Fund.CAF].signing_keys if e.key_id == sig_id)
    verify_key = nacl.signing.VerifyKey(b64u_decode(entry.public_key))
    everything = b"".join(k + v for k, v in read_topic(bootstrap, signal_topic(Fund.CAF)))
    assert nirs_in(everything) == []
    for n in good_nirs:
        assert n.encode() not in everything
    for r in [*refs, "BAD-1", "CAF35"]:
        assert r.encode() not in everything
    for key, value in messages:
        signal = open_signal(settings, value)
        assert key == signal.pseudonym.value.encode()
        message = json.loads(value)
        unsigned = {k: v for k, v in message.items() if k != "signature"}
        verify_key.verify(rfc8785.dumps(unsigned), b64u_decode(message["signature"]["value"]))
    assert {open_signal(settings, v).territory for _, v in messages} == {"35"}

    # The same file again: nothing new on the topic.
    code, out = run_cli(settings, "publish", "--fund", "caf", "--input", str(path), "--reject-report", str(report))
    assert code == 2 and "déjà connus (relance, ignorés) : 7" in out
    assert len(mine(bootstrap, Fund.CAF, sig_id)) == 7


def test_whole_file_errors_exit_1(settings: Settings, tmp_path: Path) -> None:
    keyed(settings)
    empty = tmp_path / "vide.csv"
    empty.write_bytes(b"")
    code, out = run_cli(settings, "publish", "--fund", "caf", "--input", str(empty))
    assert code == 1 and "Fichier vide" in out
    missing = write_csv(tmp_path / "m.csv", ["x"], header="nir;categorie;date_observation;departement")
    code, out = run_cli(settings, "publish", "--fund", "caf", "--input", str(missing))
    assert code == 1 and "reference_dossier" in out


def _env(settings: Settings, bootstrap: str) -> dict[str, str]:
    return {**os.environ, "HELP_BOOTSTRAP_SERVERS": bootstrap, "HELP_VAR_DIR": str(settings.var_dir),
            "HELP_KEY_DIR": str(settings.key_dir), "HELP_SIGNAL_KEYS_URL": settings.signal_keys_url,
            "PYTHONPATH": str(REPO)}


def test_kill_9_mid_file_then_rerun_publishes_each_line_once(settings: Settings, bootstrap: str,
                                                              tmp_path: Path) -> None:
    sig_id = keyed(settings)
    rng = random.Random(5)
    n = 16_000
    d = (TODAY - dt.timedelta(days=1)).isoformat()
    path = write_csv(tmp_path / "gros.csv", [f"{make_nir(rng)};perte_logement;{d};61;K-{i}" for i in range(n)])
    cmd = [sys.executable, "-m", "services.app.cli", "publish", "--fund", "caf", "--input", str(path)]
    env = _env(settings, bootstrap)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = settings.var_dir / "outbox" / "caf.db"
    deadline = time.monotonic() + 60
    sent = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=10) as conn:
                    sent = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is not there yet
                sent = 0
            if sent >= 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the publish finished before it could be killed: make the file bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < sent < n

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    ids = collections.Counter(json.loads(v)["signal_id"] for _, v in mine(bootstrap, Fund.CAF, sig_id))
    assert len(ids) == n and set(ids.values()) == {1}


def test_broker_down_rows_wait_then_flush_sends_once(settings: Settings, bootstrap: str, tmp_path: Path) -> None:
    sig_id = keyed(settings)
    rng = random.Random(9)
    d = (TODAY - dt.timedelta(days=5)).isoformat()
    path = write_csv(tmp_path / "x.csv", [f"{make_nir(rng)};ouverture_rsa;{d};35;R-{i}" for i in range(50)])
    down = load_settings(bootstrap_servers=f"127.0.0.1:{free_port()}", var_dir=settings.var_dir,
                         key_dir=settings.key_dir, request_timeout_ms=2000,
                         signal_keys_url=settings.signal_keys_url)
    summary = asyncio.run(publish_file(down, Fund.CAF, path, tmp_path / "r.csv"))
    assert summary.exit_code == 1 and summary.left == 50 and summary.sent == 0 and summary.broker_error
    assert any("boîte d'envoi" in ln for ln in summary.lines())
    code, out = run_cli(settings, "outbox", "status", "--fund", "caf")
    assert code == 1 and "50 en attente" in out
    code, out = run_cli(settings, "outbox", "status", "--fund", "caf", "--prometheus")
    assert code == 0 and outbox_depth(out) == {("caf", "pending"): 50, ("caf", "awaiting_receipt"): 0}
    code, out = run_cli(down, "outbox", "flush", "--fund", "caf")
    assert code == 1 and "50 restant" in out

    code, out = run_cli(settings, "outbox", "flush", "--fund", "caf")
    assert code == 0 and "50 signalements publiés, 0 restant" in out, out
    prom = tmp_path / "textfile" / "help-outbox-caf.prom"
    code, out = run_cli(settings, "outbox", "status", "--fund", "caf", "--textfile", str(prom))
    assert code == 0 and "0 en attente" in out  # (no receipt read yet: all 50 await theirs)
    assert outbox_depth(prom.read_text()) == {("caf", "pending"): 0, ("caf", "awaiting_receipt"): 50}
    code, out = run_cli(settings, "outbox", "flush", "--fund", "caf")
    assert code == 0 and "0 signalements publiés" in out
    code, out = run_cli(settings, "publish", "--fund", "caf", "--input", str(path))
    assert code == 0 and "déjà connus (relance, ignorés) : 50" in out
    ids = collections.Counter(json.loads(v)["signal_id"] for _, v in mine(bootstrap, Fund.CAF, sig_id))
    assert len(ids) == 50 and set(ids.values()) == {1}


def test_recovery_reads_the_topic_only_when_rows_are_pending(settings: Settings, bootstrap: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a pending row can have been sent without its mark: a run that starts with none
    sets the partitions' baseline from the end offsets and reads nothing; one that finds
    rows left pending (here by a run that had no broker) reads the topic from the marks."""
    from services.producer import sdk
    from services.producer.outbox import Outbox

    keyed(settings)
    reads: list[int] = []
    real = sdk.read_to_end

    def counted(cons: Any, ends: Any, **kwargs: Any) -> Any:
        reads.append(len(ends))
        return real(cons, ends, **kwargs)

    monkeypatch.setattr(sdk, "read_to_end", counted)
    rng = random.Random(31)
    d = (TODAY - dt.timedelta(days=2)).isoformat()
    first = write_csv(tmp_path / "a.csv", [f"{make_nir(rng)};separation;{d};35;RA-{i}" for i in range(30)])
    summary = asyncio.run(publish_file(settings, Fund.CAF, first, tmp_path / "ra.csv", workers=0))
    assert summary.exit_code == 0 and summary.sent == 30
    assert reads == []
    with Outbox.for_fund(settings.var_dir, Fund.CAF) as box:
        marks = box.partition_marks(signal_topic(Fund.CAF))
    assert len(marks) > 1 and sorted(marks) == list(range(len(marks)))  # every partition has its mark

    down = load_settings(bootstrap_servers=f"127.0.0.1:{free_port()}", var_dir=settings.var_dir,
                         key_dir=settings.key_dir, request_timeout_ms=2000, signal_keys_url=settings.signal_keys_url)
    second = write_csv(tmp_path / "b.csv", [f"{make_nir(rng)};separation;{d};35;RB-{i}" for i in range(20)])
    assert asyncio.run(publish_file(down, Fund.CAF, second, tmp_path / "rb.csv", workers=0)).left == 20
    code, out = run_cli(settings, "outbox", "flush", "--fund", "caf")
    assert code == 0 and "20 signalements publiés, 0 restant" in out, out
    assert reads == [len(marks)]


def test_resend_to_a_broker_that_has_them_sends_none_again(settings: Settings, bootstrap: str, tmp_path: Path) -> None:
    """``outbox resend --since`` when the broker answering already holds the signals (it lost
    nothing, or an earlier resend reached it): the recovery reads each partition from its
    first record, so a signal in any record batch is found, not only those of the last
    batch (from which the embedded broker's end offset would start) or the last record
    (Apache Kafka's). Four runs put the signals in several record batches per partition."""
    from services.producer.sdk import resend_outbox

    sig_id = keyed(settings)
    rng = random.Random(41)
    d = (TODAY - dt.timedelta(days=3)).isoformat()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    for run in range(4):
        lines = [f"{make_nir(rng)};separation;{d};35;RS{run}-{i}" for i in range(40)]
        path = write_csv(tmp_path / f"r{run}.csv", lines)
        assert asyncio.run(publish_file(settings, Fund.CAF, path, tmp_path / f"r{run}.rej", workers=0)).sent == 40
    result = asyncio.run(resend_outbox(Publisher(settings, Fund.CAF), since))
    assert (result.queued, result.sent, result.left, result.error) == (160, 0, 0, None)
    ids = collections.Counter(json.loads(v)["signal_id"] for _, v in mine(bootstrap, Fund.CAF, sig_id))
    assert len(ids) == 160 and set(ids.values()) == {1}


def test_worker_processes_publish_the_same(settings: Settings, bootstrap: str, tmp_path: Path) -> None:
    sig_id = keyed(settings, Fund.URSSAF)
    rng = random.Random(21)
    d = (TODAY - dt.timedelta(days=4)).isoformat()
    rows = [f"{make_nir(rng)};cessation_activite;{d};51;U-{i}" for i in range(2500)]
    rows[7] = rows[7].replace("cessation_activite", "arret_maladie_long")
    path = write_csv(tmp_path / "u.csv", rows)
    code, out = run_cli(settings, "publish", "--fund", "urssaf", "--input", str(path), "--workers", "2")
    assert code == 2 and "signalements publiés           : 2499" in out and "other" not in out, out
    messages = mine(bootstrap, Fund.URSSAF, sig_id)
    assert len({json.loads(v)["signal_id"] for _, v in messages}) == len(messages) == 2499


def test_sdk_publish_and_local_refusal(settings: Settings, bootstrap: str) -> None:
    sig_id = keyed(settings, Fund.CARSAT)
    rng = random.Random(2)
    d = TODAY - dt.timedelta(days=2)

    async def go() -> tuple[int, list[Reason]]:
        async with Publisher(settings, Fund.CARSAT) as pub:
            result = await pub.publish([
                SignalInput(make_nir(rng), "veuvage_pension_reversion", d, "51", "CARSAT-1"),
                SignalInput(make_nir(rng), "retour_domicile_apres_hospitalisation", d, "51", "CARSAT-2"),
            ])
            return result.sent, [e.reason for _, e in result.rejected]

    sent, reasons = asyncio.run(go())
    assert sent == 1 and reasons == [Reason.CATEGORIE_MEDICALE]
    assert len(mine(bootstrap, Fund.CARSAT, sig_id)) == 1


def test_receipts_command(settings: Settings, bootstrap: str) -> None:
    ok_id, ko_id = os.urandom(16).hex(), os.urandom(16).hex()

    def receipt(signal_id: str, reason: Reason | None) -> bytes:
        return to_wire(Receipt(
            schema_version="1.0", receipt_id=os.urandom(16).hex(), fund=Fund.URSSAF, signal_id=signal_id,
            status="rejete" if reason else "accepte", reason=reason,
            source=SourcePosition(topic=signal_topic(Fund.URSSAF), partition=0, offset=1),
            processed_at=dt.datetime.now(dt.UTC)))

    async def produce() -> None:
        prod = kafka_producer(settings, bootstrap)
        await prod.start()
        try:
            await prod.send_and_wait(receipt_topic(Fund.URSSAF), receipt(ok_id, None))
            await prod.send_and_wait(receipt_topic(Fund.URSSAF), receipt(ko_id, Reason.SIGNATURE_INVALIDE))
            await prod.send_and_wait(receipt_topic(Fund.URSSAF), b"not json")
        finally:
            await prod.stop()

    asyncio.run(produce())
    code, out = run_cli(settings, "receipts", "--fund", "urssaf")
    assert code == 0, out
    assert f"{ok_id}  accepté" in out
    assert f"{ko_id}  rejeté : {Reason.SIGNATURE_INVALIDE.label} (signature_invalide)" in out
    assert "illisible" in out


def test_reveal_opens_only_own_tokens(offline_settings: Settings, tmp_path: Path) -> None:
    keyed(offline_settings, Fund.CAF)
    init_fund_keys(offline_settings.key_dir, Fund.CPAM)
    rng = random.Random(4)
    d = TODAY - dt.timedelta(days=2)
    caf = SignalBuilder(offline_settings, Fund.CAF)
    cpam = SignalBuilder(offline_settings, Fund.CPAM)
    own = open_signal(offline_settings,
                      caf.build(SignalInput(make_nir(rng), "separation", d, "35", "CAF-REF-1")).value).sealed_ref
    other = open_signal(offline_settings, cpam.build(SignalInput(make_nir(rng), "non_recours_c2s_puma", d, "35",
                                                 "CPAM-REF-9")).value).sealed_ref
    forged_value = own.value[:-4] + ("AAAA" if not own.value.endswith("AAAA") else "BBBB")
    export = tmp_path / "liste.csv"
    export.write_text("\ufeffsituation;organisme;reference\r\n"
                      f"s1;caf;{token(own.key_id, own.value)}\r\n"
                      f"s1;cpam;{token(other.key_id, other.value)}\r\n"
                      f"s2;caf;{token(own.key_id, forged_value)}\r\n", encoding="utf-8", newline="")
    out = tmp_path / "revele.csv"
    # Not sent (no broker in this test): the one reveal record waits in the fund's outbox.
    summary = asyncio.run(reveal(offline_settings, Fund.CAF, export, out, actor="agent.caf-35.0042",
                                 connect=False))
    text = "\n".join(summary.lines())
    assert "1 références ouvertes, 1 d'autres organismes" in text and "1 non vérifiées" in text
    assert summary.exit_code == 1 and "1 révélation(s) inscrite(s) dans la boîte d'envoi, 0 publiée(s), " \
        "1 en attente" in text
    revealed = out.read_bytes().decode("utf-8")
    assert revealed.startswith("\ufeff") and "s1;caf;CAF-REF-1\r\n" in revealed
    assert token(other.key_id, other.value) in revealed and "CPAM-REF-9" not in revealed
    assert token(own.key_id, forged_value) in revealed
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_batch_producer_places_keys_as_kafka_and_reports_positions(settings: Settings, bootstrap: str) -> None:
    """librdkafka with ``murmur2_random`` puts a keyed message where Kafka's default
    partitioner (ours, aiokafka's, Java's) does, and reports each message's position."""
    from services.platform.batch_producer import BatchProducer, Delivered
    from services.platform.partitioning import partition_for
    from services.producer.outbox import Row

    topic = signal_topic(Fund.CAF)
    rows = [Row(os.urandom(16).hex(), "2026-01-01", os.urandom(16).hex().encode(), b"{}") for _ in range(200)]

    async def go() -> tuple[int | None, list[object]]:
        prod = BatchProducer(settings, bootstrap)
        await prod.start()
        try:
            return await prod.partitions_for(topic), await prod.send(topic, rows)
        finally:
            await prod.stop()

    partitions, results = asyncio.run(go())
    assert partitions and partitions > 1
    assert all(isinstance(r, Delivered) for r in results)
    positions = {(r.partition, r.offset) for r in results}  # type: ignore[union-attr]
    assert len(positions) == len(rows)  # one position each
    assert [r.partition for r in results] == [  # type: ignore[union-attr]
        partition_for(row.key.decode(), partitions) for row in rows]
    found = {(k, v) for k, v in read_topic(bootstrap, topic) if k in {r.key for r in rows}}
    assert found == {(r.key, r.value) for r in rows}


def test_batch_producer_without_broker_is_unreachable(settings: Settings) -> None:
    from services.errors import BrokerUnreachable
    from services.platform.batch_producer import BatchProducer

    quiet = load_settings(var_dir=settings.var_dir, key_dir=settings.key_dir, request_timeout_ms=1500)
    prod = BatchProducer(quiet, f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnreachable):
        asyncio.run(prod.start())
