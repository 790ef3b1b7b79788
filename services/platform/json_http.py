"""JSON over HTTP between a fund and the exchange's request services (the pseudonymisation
service, contract §4.2; the key endpoint, §4.4): the fund's POST and the servers' side.

Both speak alike: a request is one JSON object POSTed with its ``Content-Length``; the answer
is ``200`` and a JSON object, or a refusal ``4xx {"reason", "message", "hint"}`` (429 for
``quota_depasse``, 409 for ``requete_rejouee``, 400 for the others). A fund's client turns a
refusal into :class:`~services.core.pseudonymisation.Refused` and anything else that goes
wrong (no answer, an answer that is not the service's) into a
:class:`~services.errors.ConfigurationError` naming the setting to check. A server reads no
body larger than its bound, nor one without a length.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar, TypeVar

from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.errors import ConfigurationError

T = TypeVar("T")

#: A refusal's HTTP status by reason; every other reason is answered 400.
REFUSAL_STATUS = {Reason.QUOTA_DEPASSE: 429, Reason.REQUETE_REJOUEE: 409}
#: The answer to a body over the bound or without a length (none of it is read).
TOO_LARGE = {"reason": Reason.LOT_TROP_VOLUMINEUX.value, "message": "request too large or without a length",
             "hint": "split the request; send Content-Length"}


def body_bound(items: int) -> int:
    """The largest body a request of ``items`` members may need: 64 bytes a member (a 43-character
    b64url value, its quotes and separator, with room to spare) and 4 KiB for the rest."""
    return 64 * items + 4096


@dataclass(frozen=True)
class JsonService:
    """A service a fund POSTs JSON to, and what its operator is told when that goes wrong."""

    #: How the errors name it ("the key endpoint").
    name: str
    #: Its base URL, as configured.
    url: str
    path: str
    timeout: float
    #: What to check when it answers an HTTP error that is not one of its refusals.
    unclear_hint: str
    #: What to do when it does not answer, or answers something that is not JSON.
    down_hint: str

    def post(self, doc: object, read: Callable[[Any], T]) -> T:
        """POST ``doc`` and give what ``read`` takes from the decoded answer. Raises
        :class:`Refused` as the service refused, :class:`ConfigurationError` otherwise (a
        member ``read`` does not find, by ``KeyError`` or ``TypeError``, counts as no answer)."""
        req = urllib.request.Request(self.url.rstrip("/") + self.path, data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return read(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            try:
                refusal = json.loads(exc.read())
                reason = Reason(refusal["reason"])
            except (ValueError, KeyError, TypeError):
                raise ConfigurationError(f"{self.name} answered HTTP {exc.code}", self.unclear_hint) from None
            raise Refused(reason, str(refusal.get("message", "")), str(refusal.get("hint", ""))) from None
        except (urllib.error.URLError, OSError, KeyError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"{self.name} at {self.url} does not answer: {exc}", self.down_hint) from None


class JsonHandler(BaseHTTPRequestHandler):
    """The servers' side: a subclass names itself (``server_version``) and answers its routes
    with these."""

    sys_version = ""
    #: The ``Cache-Control`` every answer carries (None: no such header).
    cache_control: ClassVar[str | None] = None

    def log_message(self, format: str, *args: Any) -> None:
        # Under the server's own logger, so that each service's access lines keep their name.
        logging.getLogger(type(self).__module__).debug("%s " + format, self.address_string(), *args)

    def send_json(self, status: int, doc: Mapping[str, Any] | bytes) -> None:
        """Answer ``doc`` (bytes: already JSON) with ``status``."""
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.cache_control is not None:
            self.send_header("Cache-Control", self.cache_control)
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, exc: Refused) -> None:
        self.send_json(REFUSAL_STATUS.get(exc.reason, 400),
                       {"reason": exc.reason.value, "message": exc.detail, "hint": exc.hint})

    def only(self, route: str) -> None:
        """404: this server answers ``route`` ("POST /v1/…") alone at this method or path."""
        self.send_json(404, {"reason": "introuvable", "message": f"{route} only"})

    def read_body(self, bound: int) -> bytes | None:
        """The request's body, if its ``Content-Length`` is at most ``bound``; otherwise None,
        with the refusal answered (after :meth:`body_refused`) and nothing of the body read."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= bound:
            self.body_refused()
            self.send_json(400, TOO_LARGE)
            return None
        return self.rfile.read(length)

    def body_refused(self) -> None:
        """A body over the bound is being refused (a server that counts its refusals does it here)."""
