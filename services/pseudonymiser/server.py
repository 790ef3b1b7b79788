"""The service over HTTP (``help-exchange pseudonymiser serve``): JSON in, JSON out.

``POST /v1/evaluate`` ``{"fund", "request_id" (32 hex, fresh per batch), "key_version"
(optional), "blinded": [b64url of 32 bytes, …]}`` → ``200 {"key_version", "evaluated":
b64url of the batch answer (elements and one proof)}``, or ``4xx {"reason", "message",
"hint"}`` (429 for ``quota_depasse``, 409 for ``requete_rejouee``, 400 otherwise).
``GET /v1/keys`` → the public key versions (``public.json``).

In production the fund is the one its TLS client certificate names (the reverse proxy
terminates mutual TLS and passes the fund); this embedded server takes it from the body.
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from services.core.oprf import MAX_BATCH
from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund
from services.platform import metrics
from services.platform.json_http import JsonHandler, body_bound
from services.pseudonymiser.service import Pseudonymiser


def _parse(body: bytes) -> tuple[Fund, str, str | None, list[bytes]]:
    try:
        doc = json.loads(body)
        fund = Fund(doc["fund"])
        request_id = doc["request_id"]
        version = doc.get("key_version")
        items = doc["blinded"]
        if not isinstance(request_id, str) or not isinstance(items, list) or not (
                version is None or isinstance(version, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise Refused(Reason.SCHEMA_INVALIDE, "the request is not {fund, request_id, blinded[, key_version]}",
                      "send the JSON request of docs/contract.md §4.2") from None
    try:
        blinded = [b64u_decode(x) if isinstance(x, str) and len(x) == 43 else b"" for x in items]
    except ValueError:
        blinded = [b""]
    return fund, request_id, version, blinded


def make_server(service: Pseudonymiser, public_json: Path, host: str, port: int) -> ThreadingHTTPServer:
    # Room for the RFC's largest batch, so that a batch over this service's own limit is
    # refused by the service, with its reason, and recorded; larger bodies are not read.
    bound = body_bound(MAX_BATCH)

    class Handler(JsonHandler):
        server_version = "help-exchange-pseudonymiser"

        def do_GET(self) -> None:
            if self.path != "/v1/keys":
                self.only("GET /v1/keys")
                return
            self.send_json(200, public_json.read_bytes())

        def do_POST(self) -> None:
            if self.path != "/v1/evaluate":
                self.only("POST /v1/evaluate")
                return
            body = self.read_body(bound)
            if body is None:
                return
            try:
                fund, request_id, version, blinded = _parse(body)
            except Refused as exc:  # (the service counts its own refusals)
                metrics.REFUSALS.labels("", exc.reason.value).inc()
                self.refuse(exc)
                return
            try:
                answer = service.evaluate(fund, request_id, blinded, version)
            except Refused as exc:
                self.refuse(exc)
                return
            self.send_json(200, {"key_version": answer.key_version, "evaluated": b64u(answer.evaluated)})

        def body_refused(self) -> None:
            metrics.REFUSALS.labels("", Reason.LOT_TROP_VOLUMINEUX.value).inc()  # (fund not read)

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="pseudonymiser", daemon=True)
    thread.start()
    return thread
