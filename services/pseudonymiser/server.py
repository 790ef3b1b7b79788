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
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.core.oprf import MAX_BATCH
from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund
from services.platform import metrics
from services.pseudonymiser.service import Pseudonymiser

log = logging.getLogger(__name__)
_STATUS = {Reason.QUOTA_DEPASSE: 429, Reason.REQUETE_REJOUEE: 409}


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
    max_body = 64 * MAX_BATCH + 4096

    class Handler(BaseHTTPRequestHandler):
        server_version = "help-exchange-pseudonymiser"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, doc: dict[str, Any] | bytes) -> None:
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path != "/v1/keys":
                self._send(404, {"reason": "introuvable", "message": "GET /v1/keys only"})
                return
            self._send(200, public_json.read_bytes())

        def do_POST(self) -> None:
            if self.path != "/v1/evaluate":
                self._send(404, {"reason": "introuvable", "message": "POST /v1/evaluate only"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= max_body:
                metrics.REFUSALS.labels("", Reason.LOT_TROP_VOLUMINEUX.value).inc()  # (fund not read)
                self._send(400, {"reason": Reason.LOT_TROP_VOLUMINEUX.value,
                                 "message": "request too large or without a length",
                                 "hint": "split the request; send Content-Length"})
                return
            body = self.rfile.read(length)
            try:
                fund, request_id, version, blinded = _parse(body)
            except Refused as exc:  # (the service counts its own refusals)
                metrics.REFUSALS.labels("", exc.reason.value).inc()
                self._send(400, {"reason": exc.reason.value, "message": exc.detail, "hint": exc.hint})
                return
            try:
                answer = service.evaluate(fund, request_id, blinded, version)
            except Refused as exc:
                self._send(_STATUS.get(exc.reason, 400),
                           {"reason": exc.reason.value, "message": exc.detail, "hint": exc.hint})
                return
            self._send(200, {"key_version": answer.key_version, "evaluated": b64u(answer.evaluated)})

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="pseudonymiser", daemon=True)
    thread.start()
    return thread
