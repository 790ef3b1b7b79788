"""The key endpoint over real HTTP (contract §4.4): batched keys derived per fund, the same
person's key for every fund's request until an erasure replaces it, get-or-create against
the correlator making keys, the daily quota, bad requests, and the ledger."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from services.app.bootstrap import signal_keys_log
from services.core.signal_seal import fund_key
from services.core.signing import b64u_decode
from services.core.types import Fund
from services.ledger.store import Ledger
from services.platform.datakeys import KeyRing, KeyStore, subject_of
from services.platform.db import open_engine
from services.platform.markers import marker_key
from services.platform.settings import Settings, load_settings
from services.signalkeys.server import PATH, make_server, serve_in_thread
from services.signalkeys.service import SignalKeyService
from tests.support.local import free_port
from tests.support.signals import Funds

FUNDS = Funds()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                         database_url=f"sqlite:///{tmp_path / 'var' / 'exchange.db'}",
                         signal_keys_quota_per_day=10, signal_keys_batch_limit=4)


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    port = free_port()
    service = SignalKeyService(KeyStore(open_engine(settings.database_url)), marker_key(settings),
                               quota_per_day=settings.signal_keys_quota_per_day,
                               batch_limit=settings.signal_keys_batch_limit, log=signal_keys_log(settings))
    server = make_server(service, "127.0.0.1", port)
    serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        server.shutdown()
        server.server_close()


def _ask(url: str, body: object) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _keys(settings: Settings) -> dict[str, dict[int, bytes]]:
    with open_engine(settings.database_url).connect() as conn:
        found: dict[str, dict[int, bytes]] = {}
        for subject, epoch, key in conn.execute(text("SELECT subject, epoch, key FROM exchange_data_keys")):
            found.setdefault(subject, {})[epoch] = bytes(key)
        return found


def test_a_batch_gets_each_person_s_current_key_derived_for_the_fund(settings: Settings, url: str) -> None:
    p, q = FUNDS.pseudonym("p"), FUNDS.pseudonym("q")
    status, doc = _ask(url, {"fund": "caf", "pseudonyms": [p, q, p]})
    assert status == 200
    keys = doc["keys"]
    assert isinstance(keys, list) and [k["pseudonym"] for k in keys] == [p, q, p]
    assert keys[0] == keys[2] and keys[0]["key"] != keys[1]["key"]
    stored = _keys(settings)
    secret = marker_key(settings)
    for k in keys:
        subject = subject_of(secret, k["pseudonym"].encode())
        assert k["subject"] == subject.hex()
        data_key = stored[subject.hex()][k["epoch"]]
        # derived, never the data key itself; another fund gets another key
        assert b64u_decode(k["key"]) == fund_key(data_key, Fund.CAF) != data_key
    _, urssaf = _ask(url, {"fund": "urssaf", "pseudonyms": [p]})
    assert urssaf["keys"][0]["epoch"] == keys[0]["epoch"]  # type: ignore[index]
    assert urssaf["keys"][0]["key"] != keys[0]["key"]  # type: ignore[index]
    # the same key again while the person's key stands
    assert _ask(url, {"fund": "caf", "pseudonyms": [p]})[1]["keys"][0] == keys[0]  # type: ignore[index]


def test_the_correlator_s_key_is_the_one_handed_and_an_erasure_replaces_it(settings: Settings, url: str) -> None:
    store = KeyStore(open_engine(settings.database_url))
    ring = KeyRing(store, marker_key(settings))
    p = FUNDS.pseudonym("p")
    ring.prefetch([p.encode()])
    ring.seal(p.encode(), "persons", b"{}")  # the correlator saw the person first
    (subject, epoch, key), = ring.take_new()
    store.insert([(subject, epoch, key)])
    _, doc = _ask(url, {"fund": "caf", "pseudonyms": [p]})
    handed = doc["keys"][0]  # type: ignore[index]
    assert handed["epoch"] == epoch and b64u_decode(handed["key"]) == fund_key(key, "caf")
    ring.erase(p.encode())
    ring.seal(p.encode(), "persons", b"{}")  # what remains, under a new key
    store.insert(ring.take_new())
    store.destroy(ring.take_retired())
    _, doc = _ask(url, {"fund": "caf", "pseudonyms": [p]})
    assert doc["keys"][0]["epoch"] == epoch + 1  # type: ignore[index]


def test_get_or_create_gives_one_key_to_concurrent_requests(settings: Settings) -> None:
    secret = marker_key(settings)
    services = [SignalKeyService(KeyStore(open_engine(settings.database_url)), secret, quota_per_day=1000,
                                 batch_limit=100) for _ in range(4)]
    people = [FUNDS.pseudonym(f"c{i}") for i in range(50)]
    answers: list[list[tuple[int, bytes]]] = [[] for _ in services]
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            answers[i] = [(k.epoch, k.key) for k in services[i].keys(Fund.CAF, people)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(services))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(a == answers[0] for a in answers)
    assert sum(len(v) for v in _keys(settings).values()) == 50


def test_quota_limits_and_bad_requests_are_refused_and_entered(settings: Settings, url: str) -> None:
    people = [FUNDS.pseudonym(f"q{i}") for i in range(5)]
    assert _ask(url, {"fund": "caf", "pseudonyms": people})[1]["reason"] == "lot_trop_volumineux"
    assert _ask(url, {"fund": "caf", "pseudonyms": []})[1]["reason"] == "lot_trop_volumineux"
    assert _ask(url, {"fund": "caf", "pseudonyms": ["not a pseudonym"]})[1]["reason"] == "schema_invalide"
    assert _ask(url, {"fund": "nobody", "pseudonyms": people[:1]})[0] == 400
    for _ in range(2):
        assert _ask(url, {"fund": "caf", "pseudonyms": people[:4]})[0] == 200
    status, doc = _ask(url, {"fund": "caf", "pseudonyms": people[:4]})
    assert status == 429 and doc["reason"] == "quota_depasse"
    assert _ask(url, {"fund": "msa", "pseudonyms": people[:4]})[0] == 200  # per fund
    rows = [json.loads(raw) for _, raw in Ledger.open(settings, sign=False).query(limit=100)]
    entered = sorted((r["action"], r["fund"], r["count"], r.get("reason")) for r in rows
                     if r["action"].startswith("cles_signal"))
    assert entered == sorted([("cles_signal_refusees", "caf", 5, "lot_trop_volumineux"),
                              ("cles_signal_refusees", "caf", 0, "lot_trop_volumineux"),
                              ("cles_signal_refusees", "caf", 1, "schema_invalide"),
                              ("cles_signal_remises", "caf", 4, None), ("cles_signal_remises", "caf", 4, None),
                              ("cles_signal_refusees", "caf", 4, "quota_depasse"),
                              ("cles_signal_remises", "msa", 4, None)])
    text_of_ledger = json.dumps(rows)
    assert not any(p in text_of_ledger for p in people)  # never a pseudonym
    # a restart does not give the fund a fresh quota
    again = SignalKeyService(KeyStore(open_engine(settings.database_url)), marker_key(settings), quota_per_day=10,
                             batch_limit=4, log=signal_keys_log(settings))
    assert again.used(Fund.CAF, dt.datetime.now(dt.UTC).date()) == 8


def test_get_or_create_and_tombstones_on_both_databases(db_url: str) -> None:
    """SQLite and PostgreSQL alike: a made key is kept (ON CONFLICT DO NOTHING), a destroyed
    epoch stays as a tombstone, and the next key takes the epoch after it."""
    (Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
     if db_url.startswith("sqlite") else None)
    store = KeyStore(open_engine(db_url))
    subject = b"\x05" * 16
    (epoch, key), = store.current([subject]).values()
    assert epoch == 1 and len(key) == 32 and store.current([subject])[subject] == (1, key)
    store.destroy([(subject, 2)])
    assert store.load([subject]) == {subject: {1: b""}}  # the tombstone: the epoch, no key
    (epoch, again), = store.current([subject]).values()
    assert epoch == 2 and again != key
    ring = KeyRing(store, b"m" * 32)
    ring._fill({subject})
    assert ring._keys[subject] == {2: again} and ring._next[subject] == 3
    store.engine.dispose()
