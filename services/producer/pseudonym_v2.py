"""The fund's side of scheme v2: blind, ask the service in batches, check the proof, finalise.

The fund holds no pseudonymisation key. It pins the service's public keys (``public.json``,
checked like the registry: see docs/keys.md) and refuses any answer whose proof does not
verify under the pinned key of the version it names (``preuve_invalide``): nothing is
published with a wrong pseudonym. Pseudonyms of the fund's own people are cached in memory
for the run and, unless ``HELP_PSEUDONYMISER_CACHE=false``, in a local file
(:mod:`services.producer.pseudonym_cache`, no NIR stored), so a person already seen costs nothing.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from services.core.oprf import Blinded, OprfError, blind, finalize_batch, pseudonym_value_v2
from services.core.pseudonymisation import Refused, current_version, public_path, read_public
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund
from services.errors import ConfigurationError
from services.platform.settings import Settings
from services.producer.pseudonym_cache import PseudonymCache

#: The OPRF input: a domain-separation prefix, one NUL, then the 15 ASCII bytes of the NIR.
PREFIX_V2 = b"help-exchange/pseudonym/v2\x00"

Transport = Callable[[dict[str, object]], dict[str, object]]


def oprf_input(nir: str) -> bytes:
    return PREFIX_V2 + nir.encode("ascii")


def http_transport(url: str, timeout: float) -> Transport:
    endpoint = url.rstrip("/") + "/v1/evaluate"

    def send(request: dict[str, object]) -> dict[str, object]:
        data = json.dumps(request).encode()
        req = urllib.request.Request(endpoint, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                doc: dict[str, object] = json.loads(resp.read())
                return doc
        except urllib.error.HTTPError as exc:
            try:
                refusal = json.loads(exc.read())
                reason = Reason(refusal["reason"])
            except (ValueError, KeyError, TypeError):
                raise ConfigurationError(f"the pseudonymisation service answered HTTP {exc.code}",
                                         "check HELP_PSEUDONYMISER_URL") from None
            raise Refused(reason, str(refusal.get("message", "")), str(refusal.get("hint", ""))) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigurationError(f"the pseudonymisation service at {url} does not answer: {exc}",
                                     "start it (`help-exchange pseudonymiser serve`) or fix "
                                     "HELP_PSEUDONYMISER_URL") from None

    return send


@dataclass
class Asked:
    """Batches sent to the service and not collected yet (:meth:`PseudonymClient.ask`): per
    batch, the NIRs, their blinded states (kept here, never sent) and the answer to come."""

    batches: list[tuple[list[str], list[Blinded], Future[dict[str, object]]]] = field(default_factory=list)


class PseudonymClient:
    """Pseudonyms v2 of one fund's people: ``{"key_id", "value"}`` members, batched and cached.

    :meth:`ask` blinds and sends without waiting (the round trip runs in a thread of its
    own, the service's evaluation in its process); :meth:`collect` waits, checks each batch's
    proof and unblinds. So a caller can have the service work on the next batch while it
    signs and sends the current one. Nothing enters the cache before its proof verified."""

    def __init__(self, fund: Fund, public_keys: dict[str, bytes], current: str, transport: Transport,
                 *, batch_limit: int = 4096, cache: PseudonymCache | None = None) -> None:
        self.fund = fund
        self.key_version = current
        self._keys = public_keys
        self._send = transport
        self._limit = batch_limit
        self._cache: dict[str, dict[str, str]] = {}
        self._stored = cache
        #: Batches asked and elements evaluated (for the bench and the report).
        self.batches = 0
        self.evaluated = 0
        self._sender: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings, fund: Fund, transport: Transport | None = None) -> PseudonymClient:
        versions = read_public(public_path(settings.pseudonymiser_store))
        keys = {v.key_version: v.public_key for v in versions if v.status == "active"}
        cache = (PseudonymCache.for_fund(settings.var_dir, settings.key_dir, fund)
                 if settings.pseudonymiser_cache else None)
        return cls(fund, keys, current_version(versions).key_version,
                   transport or http_transport(settings.pseudonymiser_url, settings.pseudonymiser_timeout_s),
                   batch_limit=settings.pseudonymiser_batch_limit, cache=cache)

    def prefetch(self, nirs: Iterable[str]) -> None:
        """Ask the service for every normalised NIR of ``nirs`` not cached yet, and wait."""
        self.collect(self.ask(nirs))

    def ask(self, nirs: Iterable[str]) -> Asked:
        """Blind every normalised NIR of ``nirs`` not cached yet (nor in the local cache file)
        and send the batches, without waiting for the answers (:meth:`collect` them)."""
        todo = list(dict.fromkeys(n for n in nirs if n not in self._cache))
        if todo and self._stored is not None:
            known = self._stored.get_many(self.key_version, todo)
            for nir, value in known.items():
                self._cache[nir] = {"key_id": self.key_version, "value": value}
            todo = [n for n in todo if n not in known]
        asked = Asked()
        if todo and self._sender is None:
            # One thread: the round trips leave in order; the CPU work (blind, verify) stays here.
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pseudonymiser-client")
        for start in range(0, len(todo), self._limit):
            chunk = todo[start:start + self._limit]
            blinded = [blind(oprf_input(n)) for n in chunk]
            request: dict[str, object] = {"fund": self.fund.value, "request_id": secrets.token_hex(16),
                       "key_version": self.key_version, "blinded": [b64u(b.element) for b in blinded]}
            assert self._sender is not None
            asked.batches.append((chunk, blinded, self._sender.submit(self._send, request)))
        return asked

    def collect(self, asked: Asked) -> None:
        """Wait for the answers of ``asked``, check each batch's proof, unblind, and cache.
        Raises :class:`Refused` (``preuve_invalide``, or the service's refusal) and caches
        nothing of a batch whose proof does not verify."""
        for chunk, blinded, answer in asked.batches:
            got = dict(zip(chunk, self._finalize(blinded, answer.result()), strict=True))
            for nir, value in got.items():
                self._cache[nir] = {"key_id": self.key_version, "value": value}
            if self._stored is not None:
                self._stored.put_many(self.key_version, got)
        asked.batches.clear()

    def pseudonym(self, nir: str) -> dict[str, str]:
        """The ``pseudonym`` member of the normalised ``nir`` (asked alone if not prefetched)."""
        found = self._cache.get(nir)
        if found is None:
            self.prefetch([nir])
            found = self._cache[nir]
        return found

    def _finalize(self, blinded: list[Blinded], answer: dict[str, object]) -> list[str]:
        version = answer.get("key_version")
        evaluated = answer.get("evaluated")
        key = self._keys.get(version) if isinstance(version, str) else None
        if key is None or version != self.key_version or not isinstance(evaluated, str):
            raise Refused(Reason.PREUVE_INVALIDE, "the service answered under a key version not pinned here",
                          "check the service's public.json against the one the fund pinned")
        try:
            outputs = finalize_batch(blinded, b64u_decode(evaluated), key)
        except (OprfError, ValueError):
            raise Refused(Reason.PREUVE_INVALIDE, "the service's proof does not verify under the pinned key",
                          "stop and warn the exchange operator: nothing was published") from None
        self.batches += 1
        self.evaluated += len(blinded)
        return [pseudonym_value_v2(o) for o in outputs]
