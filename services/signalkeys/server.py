"""The key endpoint over HTTP (``help-exchange signal-keys serve``): JSON in, JSON out.

``POST /v1/signal-keys`` ``{"fund", "pseudonyms": [pseudonym value, …]}`` → ``200 {"keys":
[{"pseudonym", "subject" (32 hex), "epoch", "key" (b64url of 32 bytes)}, …]}`` in the order
asked, or ``4xx {"reason", "message", "hint"}`` (429 for ``quota_depasse``, 400 otherwise,
503 if the key table cannot be reached). Contract §4.4.

Authenticated as the pseudonymisation service is: in production the fund is the one its
TLS client certificate names (the reverse proxy terminates mutual TLS and passes the fund);
this embedded server takes it from the body.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy.exc

from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.signing import b64u
from services.core.types import Fund
from services.signalkeys.service import SignalKeyService

log = logging.getLogger(__name__)
PATH = "/v1/signal-keys"


def _parse(body: bytes) -> tuple[Fund, list[str]]:
    try:
        doc = json.loads(body)
        fund = Fund(doc["fund"])
        items = doc["pseudonyms"]
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise Refused(Reason.SCHEMA_INVALIDE, "the request is not {fund, pseudonyms: [string, …]}",
                      "send the JSON request of docs/contract.md §4.4") from None
    return fund, items


def make_server(service: SignalKeyService, host: str, port: int) -> ThreadingHTTPServer:
    max_body = 64 * service.batch_limit + 4096

    class Handler(BaseHTTPRequestHandler):
        server_version = "help-exchange-signal-keys"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, status: int, exc: Refused) -> None:
            self._send(status, {"reason": exc.reason.value, "message": exc.detail, "hint": exc.hint})

        def do_GET(self) -> None:
            self._send(404, {"reason": "introuvable", "message": f"POST {PATH} only"})

        def do_POST(self) -> None:
            if self.path != PATH:
                self._send(404, {"reason": "introuvable", "message": f"POST {PATH} only"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= max_body:
                self._send(400, {"reason": Reason.LOT_TROP_VOLUMINEUX.value,
                                 "message": "request too large or without a length",
                                 "hint": "split the request; send Content-Length"})
                return
            try:
                fund, pseudonyms = _parse(self.rfile.read(length))
                keys = service.keys(fund, pseudonyms)
            except Refused as exc:
                self._refuse(429 if exc.reason is Reason.QUOTA_DEPASSE else 400, exc)
                return
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.error("key table unavailable: %s", type(exc).__name__)
                self._send(503, {"reason": "indisponible", "message": "the key table cannot be reached",
                                 "hint": "try again in a moment"})
                return
            self._send(200, {"keys": [{"pseudonym": k.pseudonym, "subject": k.subject.hex(), "epoch": k.epoch,
                                       "key": b64u(k.key)} for k in keys]})

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="signal-keys", daemon=True)
    thread.start()
    return thread
