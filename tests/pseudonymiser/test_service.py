"""The pseudonymisation service over real HTTP: batches, quota, replay, bad input, the ledger,
and the fund's client (blind → service → proof → finalise)."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from services.app.bootstrap import pseudonymiser_log
from services.core import oprf
from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund
from services.ledger.store import Ledger
from services.platform.settings import Settings, load_settings
from services.producer.keys import init_exchange_key, init_fund_keys
from services.producer.pseudonym_v2 import PseudonymClient, http_transport, oprf_input
from services.pseudonymiser.keystore import KEY_INFO, init_key, load_evaluators, store_dir
from services.pseudonymiser.server import make_server, serve_in_thread
from services.pseudonymiser.service import build_service
from tests.support.local import free_port
from tests.support.processes import start_service, terminate

NIRS = ["185057800608491", "253072A07300443", "185057800608491"]


@pytest.fixture
def service_settings(tmp_path: Path) -> Iterator[Settings]:
    port = free_port()
    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                             database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}",
                             pseudonymiser_url=f"http://127.0.0.1:{port}", pseudonymiser_quota_per_day=50,
                             pseudonymiser_batch_limit=20)
    init_fund_keys(settings.key_dir, Fund.CAF)
    init_exchange_key(settings.key_dir)
    init_key(settings)
    service = build_service(settings, log=pseudonymiser_log(settings))
    server = make_server(service, store_dir(settings) / "public.json", "127.0.0.1", port)
    serve_in_thread(server)
    try:
        yield settings
    finally:
        server.shutdown()
        server.server_close()


def _counted(fund: str) -> tuple[float, float]:
    """help_pseudonymiser_evaluations_total and the quota refusals of ``fund``, so far."""
    from services.platform.metrics import REGISTRY

    evaluated = REGISTRY.get_sample_value("help_pseudonymiser_evaluations_total", {"fund": fund}) or 0.0
    refused = REGISTRY.get_sample_value("help_pseudonymiser_refusals_total",
                                        {"fund": fund, "reason": "quota_depasse"}) or 0.0
    return evaluated, refused


def _post(settings: Settings, doc: dict[str, object]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(settings.pseudonymiser_url + "/v1/evaluate", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _ledger_rows(settings: Settings) -> list[tuple[str, str | None, int, str | None, str]]:
    with Ledger.open(settings, sign=False).engine.connect() as conn:
        rows = conn.execute(text("SELECT entry FROM ledger_entries ORDER BY seq")).all()
    out = []
    for (raw,) in rows:
        doc = json.loads(raw)
        out.append((doc["action"], doc.get("fund"), doc["count"], doc.get("reason"), doc["actor"]))
    return out


def test_client_gets_the_same_pseudonym_as_the_key_holder(service_settings: Settings) -> None:
    client = PseudonymClient.from_settings(service_settings, Fund.CAF)
    client.prefetch(NIRS)
    assert client.batches == 1 and client.evaluated == 2  # one batch, duplicates asked once
    (version, ev), = load_evaluators(service_settings).items()
    for nir in NIRS:
        member = client.pseudonym(nir)
        assert member == {"key_id": version, "value": oprf.pseudonym_value_v2(ev.evaluate(oprf_input(nir)))}
        assert len(member["value"]) == 43
    # Another fund's client finds the same value (it correlates), with no key of its own.
    other = PseudonymClient.from_settings(service_settings, Fund.CPAM)
    assert other.pseudonym(NIRS[1]) == client.pseudonym(NIRS[1])
    rows = _ledger_rows(service_settings)
    assert [(a, f, c, r) for a, f, c, r, _ in rows] == [
        ("pseudonymes_calcules", "caf", 2, None), ("pseudonymes_calcules", "cpam", 1, None)]
    assert rows[0][4] == f"pseudonymiseur.{version}"
    # Never an input in the ledger: neither a NIR nor a blinded element.
    with Ledger.open(service_settings, sign=False).engine.connect() as conn:
        dump = "".join(str(r) for r in conn.execute(text("SELECT * FROM ledger_entries")).all())
    assert not any(n in dump for n in NIRS)


def test_bad_requests_are_refused_with_a_reason_and_recorded(service_settings: Settings) -> None:
    good = b64u(oprf.blind(b"x").element)
    rid = secrets.token_hex(16)
    assert _post(service_settings, {"fund": "caf", "request_id": rid, "blinded": [good]})[0] == 200
    cases = [
        ({"fund": "caf", "request_id": rid, "blinded": [good]}, 409, Reason.REQUETE_REJOUEE),
        ({"fund": "caf", "request_id": secrets.token_hex(16), "blinded": [b64u(bytes(32))]}, 400,
         Reason.ELEMENT_INVALIDE),
        ({"fund": "caf", "request_id": secrets.token_hex(16), "blinded": ["not-base64"]}, 400,
         Reason.ELEMENT_INVALIDE),
        ({"fund": "caf", "request_id": secrets.token_hex(16), "blinded": [good] * 21}, 400,
         Reason.LOT_TROP_VOLUMINEUX),
        ({"fund": "caf", "request_id": secrets.token_hex(16), "blinded": []}, 400, Reason.LOT_TROP_VOLUMINEUX),
        ({"fund": "caf", "request_id": secrets.token_hex(16), "key_version": "pk-deadbeef", "blinded": [good]},
         400, Reason.VERSION_CLE_INCONNUE),
        ({"fund": "nobody", "request_id": secrets.token_hex(16), "blinded": [good]}, 400, Reason.SCHEMA_INVALIDE),
    ]
    for doc, status, reason in cases:
        got_status, body = _post(service_settings, doc)
        assert (got_status, body["reason"]) == (status, reason.value), doc
        assert body["hint"]
    refused = [(r, c) for a, f, c, r, _ in _ledger_rows(service_settings) if a == "pseudonymisation_refusee"]
    assert refused == [("requete_rejouee", 1), ("element_invalide", 1), ("element_invalide", 1),
                       ("lot_trop_volumineux", 21), ("lot_trop_volumineux", 0), ("version_cle_inconnue", 1)]


def test_enumeration_gets_at_most_the_quota_and_the_ledger_shows_the_refusals(service_settings: Settings) -> None:
    """A fund asking 10x its quota (50/day here) gets at most its quota."""
    client = PseudonymClient.from_settings(service_settings, Fund.CAF)
    got = 0
    refusals = 0
    evaluated_before, refused_before = _counted("caf")
    for start in range(0, 500, 10):
        try:
            client.prefetch([f"1850578006{i:05d}" for i in range(start, start + 10)])
            got += 10
        except Refused as exc:
            assert exc.reason is Reason.QUOTA_DEPASSE
            refusals += 1
    assert got == 50 and refusals == 45
    evaluated, refused = _counted("caf")  # the metrics say the same
    assert (evaluated - evaluated_before, refused - refused_before) == (50, 45)
    rows = _ledger_rows(service_settings)
    assert sum(c for a, f, c, r, _ in rows if a == "pseudonymes_calcules") == 50
    assert [r for a, f, c, r, _ in rows if a == "pseudonymisation_refusee"] == ["quota_depasse"] * 45
    # Another fund's quota is its own.
    PseudonymClient.from_settings(service_settings, Fund.CPAM).prefetch(["185057800608491"])
    # A restarted service reads the day's use back from the ledger: no fresh quota, no replay.
    restarted = build_service(service_settings, log=pseudonymiser_log(service_settings))
    assert restarted.used(Fund.CAF, dt.datetime.now(dt.UTC).date()) == 50
    with pytest.raises(Refused) as caught:
        restarted.evaluate(Fund.CAF, secrets.token_hex(16), [oprf.blind(b"x").element])
    assert caught.value.reason is Reason.QUOTA_DEPASSE
    (_, raw), = Ledger.open(service_settings, sign=False).query(action="pseudonymes_calcules", limit=1)
    with pytest.raises(Refused) as caught:
        restarted.evaluate(Fund.CPAM, json.loads(raw)["ref"], [oprf.blind(b"x").element])
    assert caught.value.reason is Reason.REQUETE_REJOUEE


def test_a_service_answering_with_another_key_publishes_nothing(service_settings: Settings) -> None:
    """The fund pinned public.json; a service evaluating under another key (to tag the fund)
    fails the proof: ``preuve_invalide``, and no pseudonym comes out."""
    rogue = oprf.Evaluator.from_seed("pk-00000000", secrets.token_bytes(32), KEY_INFO)
    honest = PseudonymClient.from_settings(service_settings, Fund.CAF)

    def rogue_transport(doc: dict[str, object]) -> dict[str, object]:
        blinded = [b64u_decode(x) for x in doc["blinded"]]  # type: ignore[attr-defined]
        return {"key_version": honest.key_version, "evaluated": b64u(rogue.evaluate_batch(blinded))}

    client = PseudonymClient.from_settings(service_settings, Fund.CAF, transport=rogue_transport)
    with pytest.raises(Refused) as caught:
        client.prefetch(["185057800608491"])
    assert caught.value.reason is Reason.PREUVE_INVALIDE
    assert client.evaluated == 0


def test_asked_ahead_batches_enter_the_cache_only_once_their_proof_verified(service_settings: Settings) -> None:
    """The producer asks the next batch before building the current one (``ask``), and
    ``collect``s it later: the honest first batch is cached, the second, answered under
    another key, is refused at collection and none of its pseudonyms is cached."""
    rogue = oprf.Evaluator.from_seed("pk-00000000", secrets.token_bytes(32), KEY_INFO)
    honest = PseudonymClient.from_settings(service_settings, Fund.CAF)
    calls: list[int] = []

    def second_is_rogue(doc: dict[str, object]) -> dict[str, object]:
        calls.append(len(doc["blinded"]))  # type: ignore[arg-type]
        if len(calls) == 1:
            return http_transport(service_settings.pseudonymiser_url, 10)(doc)
        blinded = [b64u_decode(x) for x in doc["blinded"]]  # type: ignore[attr-defined]
        return {"key_version": honest.key_version, "evaluated": b64u(rogue.evaluate_batch(blinded))}

    client = PseudonymClient(Fund.CAF, honest._keys, honest.key_version, second_is_rogue)
    first = client.ask(["185057800608491"])
    second = client.ask(["253072A07300443"])
    assert client._cache == {}  # asked, not collected: nothing usable yet
    client.collect(first)
    assert set(client._cache) == {"185057800608491"}
    with pytest.raises(Refused) as caught:
        client.collect(second)
    assert caught.value.reason is Reason.PREUVE_INVALIDE
    assert set(client._cache) == {"185057800608491"} and client.evaluated == 1


def test_http_transport_says_when_the_service_is_down(tmp_path: Path) -> None:
    from services.errors import ConfigurationError

    send = http_transport(f"http://127.0.0.1:{free_port()}", 2.0)
    with pytest.raises(ConfigurationError, match="does not answer"):
        send({"fund": "caf"})


def test_quota_is_per_utc_day() -> None:
    ev = oprf.Evaluator.from_seed("pk-00000000", bytes(32))
    now = [dt.datetime(2026, 12, 7, 23, 59, tzinfo=dt.UTC)]
    from services.pseudonymiser.service import Pseudonymiser

    svc = Pseudonymiser({"pk-00000000": ev}, "pk-00000000", quota_per_day=2, batch_limit=10, clock=lambda: now[0])
    elements = [oprf.blind(b"a").element, oprf.blind(b"b").element]
    svc.evaluate(Fund.CAF, secrets.token_hex(16), elements)
    with pytest.raises(Refused):
        svc.evaluate(Fund.CAF, secrets.token_hex(16), elements[:1])
    now[0] += dt.timedelta(minutes=2)
    svc.evaluate(Fund.CAF, secrets.token_hex(16), elements)


def test_destroying_a_version_retires_it_and_is_recorded(tmp_path: Path) -> None:
    from services.core.pseudonymisation import public_path, read_public
    from services.core.registry import load_registry, registry_path
    from services.errors import InputError
    from services.pseudonymiser.keystore import destroy_key

    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                             database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}")
    init_exchange_key(settings.key_dir)
    old = init_key(settings)
    with pytest.raises(InputError, match="only active"):
        destroy_key(settings, old, pseudonymiser_log(settings).key_destroyed)
    new = init_key(settings)
    destroy_key(settings, old, pseudonymiser_log(settings).key_destroyed)
    assert not (store_dir(settings) / "seeds" / f"{old}.seed").exists()
    assert set(load_evaluators(settings)) == {new}
    assert {v.key_version: v.status for v in read_public(public_path(store_dir(settings)))} == {
        old: "retired", new: "active"}
    registry = load_registry(registry_path(settings.key_dir))
    assert not registry.exchange_key_accepted(old) and registry.exchange_key_accepted(new)
    assert registry.current_exchange_key_id() is not None and registry.current_exchange_key_id().startswith("xk-")
    assert [(a, actor) for a, _, _, _, actor in _ledger_rows(settings)] == [("rotation_cle", f"pseudonymiseur.{old}")]
    with pytest.raises(InputError):
        destroy_key(settings, old, pseudonymiser_log(settings).key_destroyed)


def test_publish_v2_needs_no_exchange_key_and_stops_cleanly_when_refused(service_settings: Settings,
                                                                        tmp_path: Path) -> None:
    """The producer's v2 path: no exchange key file at the fund; a refusal (here the quota,
    50 a day) stops the run with one line naming the reason, never a traceback, and nothing
    is built with a wrong pseudonym."""
    import pickle
    import random
    import shutil
    import subprocess
    import sys

    from services.producer.keys import exchange_dir
    from services.producer.sdk import SignalBuilder, SignalInput
    from tests.support.extracts import make_nir, write_csv

    shutil.rmtree(exchange_dir(service_settings.key_dir))
    v2 = load_settings(**{**service_settings.model_dump(), "pseudonym_scheme": "v2"})
    with pytest.raises(Exception, match="exchange key"):
        SignalBuilder(service_settings, Fund.CAF)  # v1 needs the key file it no longer has
    builder = SignalBuilder(v2, Fund.CAF)
    nir = "185057800608491"
    row = builder.build(SignalInput(nir, "separation", dt.date.today() - dt.timedelta(days=3), "35", "DOS-1"))
    (version, ev), = load_evaluators(v2).items()
    assert json.loads(row.value)["pseudonym"] == {
        "key_id": version, "value": oprf.pseudonym_value_v2(ev.evaluate(oprf_input(nir)))}
    from services.producer.consent import ConsentBuilder, ConsentInput

    consents = ConsentBuilder(v2, Fund.CAF)
    consents.prefetch([ConsentInput(nir, "HELP-2026-000123", "acces_aux_droits", "")])
    event = consents.build(ConsentInput(nir, "HELP-2026-000123", "acces_aux_droits", ""), "consentement_donne",
                           now=dt.datetime.now(dt.UTC), today=dt.date.today())
    assert json.loads(event.value)["pseudonym"] == json.loads(row.value)["pseudonym"]  # they meet
    refused = Refused(Reason.QUOTA_DEPASSE, "what", "hint")
    assert pickle.loads(pickle.dumps(refused)).reason is Reason.QUOTA_DEPASSE  # crosses worker processes

    rng = random.Random(3)
    day = (dt.date.today() - dt.timedelta(days=3)).isoformat()
    extract = write_csv(tmp_path / "extrait.csv", [f"{make_nir(rng)};separation;{day};35;DOS-{i:05d}"
                                                   for i in range(120)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELP_")}
    env.update({"HELP_VAR_DIR": str(v2.var_dir), "HELP_KEY_DIR": str(v2.key_dir), "HELP_PSEUDONYM_SCHEME": "v2",
                "HELP_PSEUDONYMISER_URL": v2.pseudonymiser_url, "HELP_DATABASE_URL": v2.database_url,
                "HELP_BOOTSTRAP_SERVERS": "127.0.0.1:1", "HELP_PSEUDONYMISER_BATCH_LIMIT": "20"})
    done = subprocess.run([sys.executable, "-m", "services.app.cli", "publish", "--fund", "caf", "--input",
                           str(extract)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "quota_depasse" in done.stderr + done.stdout and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_the_local_cache_spares_the_service_and_holds_no_nir(service_settings: Settings) -> None:
    first = PseudonymClient.from_settings(service_settings, Fund.CAF)
    first.prefetch(NIRS)
    again = PseudonymClient.from_settings(service_settings, Fund.CAF)  # a later run of the same fund
    again.prefetch([*NIRS, "295109912611193"])
    assert (again.batches, again.evaluated) == (1, 1)  # only the new person was asked
    assert [again.pseudonym(n) for n in NIRS] == [first.pseudonym(n) for n in NIRS]
    files = list(service_settings.var_dir.glob("pseudonym-cache-caf.db*"))  # the WAL too
    data = b"".join(f.read_bytes() for f in files)
    assert files and first.pseudonym(NIRS[0])["value"].encode() in data
    assert not any(n.encode() in data for n in NIRS)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_service_command_stops_on_a_signal_and_exits_0(tmp_path: Path, signum: int) -> None:
    settings = load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                             database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}")
    init_fund_keys(settings.key_dir, Fund.CAF)
    init_exchange_key(settings.key_dir)
    init_key(settings)
    port = free_port()
    log = tmp_path / "pseudonymiser.log"
    proc = start_service(settings, log, "pseudonymiser", "serve", "--port", str(port))
    try:
        deadline = time.monotonic() + 60
        while "pseudonymiser on http" not in log.read_text() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]
    finally:
        terminate(proc)


def test_a_build_job_asks_part_by_part_and_builds_what_each_line_alone_builds(
        service_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's build job asks the service a small first part, then parts of CHUNK lines,
    each asked before the previous one is built; the signals are those of each line built
    alone, each pseudonym the key holder's, and a bad NIR is refused in its place."""
    import random

    from services.producer import publish
    from services.producer.extract import Line
    from services.producer.sdk import SignalBuilder, SignalInput
    from tests.support.extracts import make_nir

    monkeypatch.setattr(publish, "FIRST_PART", 2)
    monkeypatch.setattr(publish, "CHUNK", 5)
    assert publish._parts([]) == []
    v2 = load_settings(**{**service_settings.model_dump(), "pseudonym_scheme": "v2", "pseudonymiser_cache": False})
    rng = random.Random(20)
    day = dt.date.today() - dt.timedelta(days=3)
    nirs = [make_nir(rng) for _ in range(13)]
    nirs[6] = "185057800608400"  # a wrong control key: refused, never asked
    lines = [Line(i + 2, SignalInput(n, "separation", day, "35", f"DOS-{i:05d}")) for i, n in enumerate(nirs)]
    assert [len(p) for p in publish._parts(lines)] == [2, 5, 5, 1]
    now = dt.datetime.now(dt.UTC)
    builder = SignalBuilder(v2, Fund.CAF)
    rows, rejected = publish._build_chunk(builder, lines, day + dt.timedelta(days=3), now, 6)
    assert builder._pseudonyms.batches == 4 and builder._pseudonyms.evaluated == 12

    alone = SignalBuilder(v2, Fund.CAF)
    (version, ev), = load_evaluators(v2).items()

    def comparable(value: bytes) -> dict[str, object]:
        doc = json.loads(value)
        return {k: v for k, v in doc.items() if k not in ("sealed_ref", "signature")}  # random nonce

    expected = [alone.build(line.record, today=day + dt.timedelta(days=3), now=now, partitions=6)
                for line in lines if line.line != 8]
    assert [(r.signal_id, r.key, r.partition, comparable(r.value)) for r in rows] == [
        (r.signal_id, r.key, r.partition, comparable(r.value)) for r in expected]
    assert [json.loads(r.value)["pseudonym"] for r in rows] == [
        {"key_id": version, "value": oprf.pseudonym_value_v2(ev.evaluate(oprf_input(n)))}
        for n in nirs if n != nirs[6]]
    assert [(r.line, r.reason) for r in rejected] == [(8, Reason.CLE_NIR_INVALIDE)]
