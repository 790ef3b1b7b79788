"""What the two JSON-over-HTTP services (the key endpoint, the pseudonymisation service) and
their clients in the producer say, to the byte: statuses, headers, bodies, the errors a fund
gets, the refusals counted, the daily quota's refusals. These are the answers each gave
before they shared their plumbing; they must not move."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy.exc

from services.core import oprf
from services.core.oprf import MAX_BATCH
from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.types import Fund
from services.errors import ConfigurationError
from services.platform.metrics import REGISTRY
from services.producer import pseudonym_v2, signal_keys
from services.pseudonymiser.server import make_server as pseudonymiser_server
from services.pseudonymiser.service import Answer, Pseudonymiser
from services.signalkeys.server import make_server as signal_keys_server
from services.signalkeys.service import FundKey, SignalKeyService
from tests.support.local import free_port

PSEUDONYM = "A" * 43
Raw = tuple[int, list[tuple[str, str]], bytes]


def _ask(port: int, method: str, path: str, body: bytes | None = None, *, length: str | None = None) -> Raw:
    """A raw request: the status, the headers but Date, the body's bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if length is not None:
            conn.putheader("Content-Length", length)
        elif body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body if length is None else None)
        resp = conn.getresponse()
        return resp.status, [(k, v) for k, v in resp.getheaders() if k != "Date"], resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def _running(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _headers(server: str, body: bytes, *, no_store: bool) -> list[tuple[str, str]]:
    """(``Server`` is the name, a space and the empty Python version.)"""
    out = [("Server", server + " "), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return [*out, ("Cache-Control", "no-store")] if no_store else out


# ------------------------------------------------------------------ the key endpoint
class KeysStub:
    """The endpoint's service, answering or raising what a test says."""

    batch_limit = 4

    def __init__(self) -> None:
        self.raise_: BaseException | None = None

    def keys(self, fund: Fund, pseudonyms: Sequence[str]) -> list[FundKey]:
        if self.raise_ is not None:
            raise self.raise_
        return [FundKey(p, bytes(range(16)), 3, bytes(32)) for p in pseudonyms]


@pytest.fixture
def keys_stub() -> Iterator[tuple[KeysStub, int]]:
    stub = KeysStub()
    with _running(signal_keys_server(stub, "127.0.0.1", free_port())) as port:  # type: ignore[arg-type]
        yield stub, port


def _keys_answer(status: int, body: bytes) -> Raw:
    return status, _headers("help-exchange-signal-keys", body, no_store=True), body


def test_the_key_endpoint_s_answers_are_pinned(keys_stub: tuple[KeysStub, int]) -> None:
    stub, port = keys_stub
    elsewhere = b'{"reason": "introuvable", "message": "POST /v1/signal-keys only"}'
    assert _ask(port, "GET", "/v1/signal-keys") == _keys_answer(404, elsewhere)
    assert _ask(port, "POST", "/v1/other", b"{}") == _keys_answer(404, elsewhere)
    too_large = (b'{"reason": "lot_trop_volumineux", "message": "request too large or without a length", '
                 b'"hint": "split the request; send Content-Length"}')
    assert _ask(port, "POST", "/v1/signal-keys", length=str(64 * 4 + 4096 + 1)) == _keys_answer(400, too_large)
    assert _ask(port, "POST", "/v1/signal-keys", length="many") == _keys_answer(400, too_large)
    not_json = (b'{"reason": "schema_invalide", "message": "the request is not {fund, pseudonyms: '
                b'[string, \\u2026]}", "hint": "send the JSON request of docs/contract.md \\u00a74.4"}')
    assert _ask(port, "POST", "/v1/signal-keys", b"[1") == _keys_answer(400, not_json)
    assert _ask(port, "POST", "/v1/signal-keys", b'{"fund": "caf", "pseudonyms": [1]}') == _keys_answer(
        400, not_json)
    good = json.dumps({"fund": "caf", "pseudonyms": [PSEUDONYM]}).encode()
    assert _ask(port, "POST", "/v1/signal-keys", good) == _keys_answer(
        200, b'{"keys": [{"pseudonym": "' + PSEUDONYM.encode() + b'", "subject": "000102030405060708090a0b0c0d0e0f", '
        b'"epoch": 3, "key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}')
    stub.raise_ = Refused(Reason.QUOTA_DEPASSE, "too many", "wait")
    assert _ask(port, "POST", "/v1/signal-keys", good) == _keys_answer(
        429, b'{"reason": "quota_depasse", "message": "too many", "hint": "wait"}')
    stub.raise_ = Refused(Reason.SCHEMA_INVALIDE, "bad", "fix")
    assert _ask(port, "POST", "/v1/signal-keys", good) == _keys_answer(
        400, b'{"reason": "schema_invalide", "message": "bad", "hint": "fix"}')
    stub.raise_ = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("gone"))
    assert _ask(port, "POST", "/v1/signal-keys", good) == _keys_answer(
        503, b'{"reason": "indisponible", "message": "the key table cannot be reached", '
        b'"hint": "try again in a moment"}')


# ------------------------------------------------------------------ the pseudonymisation service
class EvaluateStub:
    def __init__(self) -> None:
        self.raise_: BaseException | None = None
        self.asked: list[tuple[Fund, str, list[bytes], str | None]] = []

    def evaluate(self, fund: Fund, request_id: str, blinded: Sequence[bytes], key_version: str | None = None,
                 ) -> Answer:
        self.asked.append((fund, request_id, list(blinded), key_version))
        if self.raise_ is not None:
            raise self.raise_
        return Answer("pk-00000000", b"\x01\x02")


@pytest.fixture
def evaluate_stub(tmp_path: Path) -> Iterator[tuple[EvaluateStub, int]]:
    stub = EvaluateStub()
    public = tmp_path / "public.json"
    public.write_bytes(b'{"suite": "x", "versions": []}\n')
    with _running(pseudonymiser_server(stub, public, "127.0.0.1", free_port())) as port:  # type: ignore[arg-type]
        yield stub, port


def _evaluate_answer(status: int, body: bytes) -> Raw:
    return status, _headers("help-exchange-pseudonymiser", body, no_store=False), body


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("help_pseudonymiser_refusals_total", {"fund": "", "reason": reason}) or 0.0


def test_the_pseudonymisation_service_s_answers_are_pinned(evaluate_stub: tuple[EvaluateStub, int]) -> None:
    stub, port = evaluate_stub
    assert _ask(port, "GET", "/v1/keys") == _evaluate_answer(200, b'{"suite": "x", "versions": []}\n')
    assert _ask(port, "GET", "/v1/evaluate") == _evaluate_answer(
        404, b'{"reason": "introuvable", "message": "GET /v1/keys only"}')
    assert _ask(port, "POST", "/v1/keys", b"{}") == _evaluate_answer(
        404, b'{"reason": "introuvable", "message": "POST /v1/evaluate only"}')
    too_large = (b'{"reason": "lot_trop_volumineux", "message": "request too large or without a length", '
                 b'"hint": "split the request; send Content-Length"}')
    before = _refused("lot_trop_volumineux")
    assert _ask(port, "POST", "/v1/evaluate", length=str(64 * MAX_BATCH + 4096 + 1)) == _evaluate_answer(
        400, too_large)
    assert _ask(port, "POST", "/v1/evaluate", length="-1") == _evaluate_answer(400, too_large)
    assert _refused("lot_trop_volumineux") == before + 2  # counted, the fund unread
    before = _refused("schema_invalide")
    assert _ask(port, "POST", "/v1/evaluate", b'{"fund": "caf"}') == _evaluate_answer(
        400, b'{"reason": "schema_invalide", "message": "the request is not {fund, request_id, '
        b'blinded[, key_version]}", "hint": "send the JSON request of docs/contract.md \\u00a74.2"}')
    assert _refused("schema_invalide") == before + 1
    good = json.dumps({"fund": "caf", "request_id": "0" * 32, "blinded": ["A" * 43, "short"]}).encode()
    assert _ask(port, "POST", "/v1/evaluate", good) == _evaluate_answer(
        200, b'{"key_version": "pk-00000000", "evaluated": "AQI"}')
    assert stub.asked[-1] == (Fund.CAF, "0" * 32, [bytes(32), b""], None)
    for reason, status in ((Reason.REQUETE_REJOUEE, 409), (Reason.QUOTA_DEPASSE, 429),
                           (Reason.VERSION_CLE_INCONNUE, 400)):
        stub.raise_ = Refused(reason, "no", "later")
        before = _refused(reason.value)
        assert _ask(port, "POST", "/v1/evaluate", good) == _evaluate_answer(
            status, b'{"reason": "' + reason.value.encode() + b'", "message": "no", "hint": "later"}')
        assert _refused(reason.value) == before  # the service counts its own


# ------------------------------------------------------------------ the clients
class Canned(BaseHTTPRequestHandler):
    """Answers each POST with the status and body the test set, and keeps what it was sent."""

    answer: ClassVar[tuple[int, bytes]] = (200, b"{}")
    seen: ClassVar[list[tuple[str, str | None, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers["Content-Type"], body))
        status, data = type(self).answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[type[Canned], str]]:
    handler = type("Answers", (Canned,), {"seen": []})
    with _running(ThreadingHTTPServer(("127.0.0.1", free_port()), handler)) as port:
        yield handler, f"http://127.0.0.1:{port}/"


Send = Callable[[str], Callable[[], object]]
CLIENTS: dict[str, tuple[Send, str, str, str, str]] = {
    # name: (call, path, the peer's name, answered-HTTP hint, does-not-answer hint)
    "signal-keys": (lambda url: lambda: signal_keys.http_transport(url, 5)(Fund.CAF, [PSEUDONYM]),
                    "/v1/signal-keys", "the key endpoint",
                    "check HELP_SIGNAL_KEYS_URL, or try again in a moment",
                    "start it (`help-exchange signal-keys serve`) or fix HELP_SIGNAL_KEYS_URL; "
                    "the lines are not lost: publish the file again"),
    "pseudonymiser": (lambda url: lambda: pseudonym_v2.http_transport(url, 5)({"fund": "caf", "blinded": []}),
                      "/v1/evaluate", "the pseudonymisation service",
                      "check HELP_PSEUDONYMISER_URL",
                      "start it (`help-exchange pseudonymiser serve`) or fix HELP_PSEUDONYMISER_URL"),
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_client_posts_json_and_turns_refusals_and_silence_into_our_errors(
        client: str, canned: tuple[type[Canned], str]) -> None:
    handler, url = canned
    call, path, name, answered_hint, down_hint = CLIENTS[client]
    handler.answer = (200, b'{"keys": [{"k": 1}], "key_version": "v"}')
    got = call(url)()
    assert got == ([{"k": 1}] if client == "signal-keys" else {"keys": [{"k": 1}], "key_version": "v"})
    sent_path, sent_type, sent = handler.seen[-1]
    assert sent_path == path and sent_type == "application/json"
    assert json.loads(sent) == ({"fund": "caf", "pseudonyms": [PSEUDONYM]} if client == "signal-keys"
                                else {"fund": "caf", "blinded": []})

    handler.answer = (429, b'{"reason": "quota_depasse", "message": "m", "hint": "h"}')
    with pytest.raises(Refused) as refused:
        call(url)()
    assert (refused.value.reason, refused.value.detail, refused.value.hint) == (Reason.QUOTA_DEPASSE, "m", "h")
    handler.answer = (400, b'{"reason": "schema_invalide"}')
    with pytest.raises(Refused) as refused:
        call(url)()
    assert (refused.value.reason, refused.value.detail, refused.value.hint) == (Reason.SCHEMA_INVALIDE, "", "")

    for status, body in ((502, b"<html>bad gateway</html>"), (404, b'{"reason": "introuvable"}'),
                         (503, b'["indisponible"]')):
        handler.answer = (status, body)
        with pytest.raises(ConfigurationError) as unclear:
            call(url)()
        assert (unclear.value.what, unclear.value.hint) == (f"{name} answered HTTP {status}", answered_hint)

    # (the pseudonymisation service's client let these out as they came, a JSONDecodeError
    # or an AttributeError further on, until both clients shared one call)
    for body, why in ((b"not json", "Expecting value: line 1 column 1 (char 0)"),
                      (b"[]", "list indices must be integers or slices, not str" if client == "signal-keys"
                       else "the answer is not a JSON object")):
        handler.answer = (200, body)
        with pytest.raises(ConfigurationError) as garbled:
            call(url)()
        assert (garbled.value.what, garbled.value.hint) == (f"{name} at {url} does not answer: {why}", down_hint)

    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigurationError) as down:
        call(nobody)()
    assert down.value.what.startswith(f"{name} at {nobody} does not answer: ") and "refused" in down.value.what
    assert down.value.hint == down_hint


def test_the_key_client_says_an_answer_without_keys_does_not_answer(canned: tuple[type[Canned], str]) -> None:
    handler, url = canned
    handler.answer = (200, b'{"evaluated": "x"}')
    with pytest.raises(ConfigurationError) as missing:
        signal_keys.http_transport(url, 5)(Fund.CAF, [PSEUDONYM])
    assert missing.value.what == f"the key endpoint at {url} does not answer: 'keys'"


# ------------------------------------------------------------------ the daily quota
class Store:
    """A key table that hands every person epoch 1 of a zero key, or fails when told."""

    def __init__(self) -> None:
        self.fail = False

    def current(self, subjects: set[bytes]) -> dict[bytes, tuple[int, bytes]]:
        if self.fail:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("gone"))
        return {s: (1, bytes(32)) for s in subjects}


class Today:
    def __init__(self, used: dict[tuple[str, dt.date], int]) -> None:
        self.used = used

    def batch(self, **entry: object) -> None:
        pass

    def today(self, now: dt.datetime) -> dict[tuple[str, dt.date], int]:
        return self.used


def test_the_key_endpoint_s_quota_refuses_in_its_words_and_gives_back_what_it_did_not_answer() -> None:
    now = dt.datetime(2026, 12, 7, 23, 59, tzinfo=dt.UTC)
    store = Store()
    service = SignalKeyService(store, b"s" * 32, quota_per_day=5, batch_limit=4,  # type: ignore[arg-type]
                               log=Today({("caf", now.date()): 2}), clock=lambda: now)
    assert service.used(Fund.CAF, now.date()) == 2  # taken back from the ledger
    store.fail = True
    with pytest.raises(sqlalchemy.exc.OperationalError):
        service.keys(Fund.CAF, [PSEUDONYM] * 3)
    assert service.used(Fund.CAF, now.date()) == 2  # not answered: given back
    store.fail = False
    service.keys(Fund.CAF, [PSEUDONYM] * 3)
    with pytest.raises(Refused) as refused:
        service.keys(Fund.CAF, [PSEUDONYM])
    assert (refused.value.reason, refused.value.detail, refused.value.hint) == (
        Reason.QUOTA_DEPASSE, "caf: 5 of 5 keys used today, 1 more asked",
        "wait for tomorrow (UTC) or have the operator raise HELP_SIGNAL_KEYS_QUOTA_PER_DAY")
    assert service.used(Fund.MSA, now.date()) == 0 and service.keys(Fund.MSA, [PSEUDONYM])


def test_the_pseudonymiser_s_quota_refuses_in_its_words_and_gives_back_what_it_did_not_evaluate() -> None:
    now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    ev = oprf.Evaluator.from_seed("pk-00000000", bytes(32))
    service = Pseudonymiser({"pk-00000000": ev}, "pk-00000000", quota_per_day=5, batch_limit=10,
                            clock=lambda: now)
    service.restore({("caf", now.date()): 1}, [])
    service.restore({("caf", now.date()): 1}, [])
    assert service.used(Fund.CAF, now.date()) == 2  # restored counts add up
    with pytest.raises(Refused) as malformed:
        service.evaluate(Fund.CAF, "1" * 32, [b"\x00" * 31])
    assert malformed.value.reason is Reason.ELEMENT_INVALIDE
    assert service.used(Fund.CAF, now.date()) == 2  # not evaluated: given back
    element = oprf.blind(b"a").element
    service.evaluate(Fund.CAF, "2" * 32, [element] * 3)
    with pytest.raises(Refused) as refused:
        service.evaluate(Fund.CAF, "3" * 32, [element])
    assert (refused.value.reason, refused.value.detail, refused.value.hint) == (
        Reason.QUOTA_DEPASSE, "caf: 5 of 5 evaluations used today, 1 more asked",
        "wait for tomorrow (UTC) or have the operator raise HELP_PSEUDONYMISER_QUOTA_PER_DAY")
