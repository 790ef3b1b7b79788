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
from http.server import ThreadingHTTPServer

import sqlalchemy.exc

from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.signing import b64u
from services.core.types import Fund
from services.platform.json_http import JsonHandler, body_bound
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
    bound = body_bound(service.batch_limit)

    class Handler(JsonHandler):
        server_version = "help-exchange-signal-keys"
        cache_control = "no-store"

        def do_GET(self) -> None:
            self.only(f"POST {PATH}")

        def do_POST(self) -> None:
            if self.path != PATH:
                self.only(f"POST {PATH}")
                return
            body = self.read_body(bound)
            if body is None:
                return
            try:
                fund, pseudonyms = _parse(body)
                keys = service.keys(fund, pseudonyms)
            except Refused as exc:
                self.refuse(exc)
                return
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.error("key table unavailable: %s", type(exc).__name__)
                self.send_json(503, {"reason": "indisponible", "message": "the key table cannot be reached",
                                     "hint": "try again in a moment"})
                return
            self.send_json(200, {"keys": [{"pseudonym": k.pseudonym, "subject": k.subject.hex(), "epoch": k.epoch,
                                           "key": b64u(k.key)} for k in keys]})

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="signal-keys", daemon=True)
    thread.start()
    return thread
