"""The fund's side of scheme v2: blind, ask the service in batches, check the proof, finalise.

The fund holds no pseudonymisation key. It pins the service's public keys (``public.json``,
checked like the registry: see docs/keys.md) and refuses any answer whose proof does not
verify under the pinned key of the version it names (``preuve_invalide``): nothing is
published with a wrong pseudonym. Pseudonyms of the fund's own people are cached in memory
for the run and, unless ``HELP_PSEUDONYMISER_CACHE=false``, in a local file
(:mod:`services.producer.pseudonym_cache`, no NIR stored), so a person already seen costs nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.core.oprf import Blinded, OprfError, blind, finalize_batch, pseudonym_value_v2
from services.core.pseudonymisation import Refused, current_version, previous_version, public_path, read_public
from services.core.reasons import Reason
from services.core.signing import b64u, b64u_decode
from services.core.types import Fund
from services.platform.json_http import JsonService
from services.platform.settings import Settings
from services.producer.pseudonym import PseudonymSource
from services.producer.pseudonym_cache import PseudonymCache

#: The OPRF input: a domain-separation prefix, one NUL, then the 15 ASCII bytes of the NIR.
PREFIX_V2 = b"help-exchange/pseudonym/v2\x00"

Transport = Callable[[dict[str, object]], dict[str, object]]


def oprf_input(nir: str) -> bytes:
    return PREFIX_V2 + nir.encode("ascii")


def http_transport(url: str, timeout: float) -> Transport:
    service = JsonService("the pseudonymisation service", url, "/v1/evaluate", timeout,
                          unclear_hint="check HELP_PSEUDONYMISER_URL",
                          down_hint="start it (`help-exchange pseudonymiser serve`) or fix HELP_PSEUDONYMISER_URL")

    def send(request: dict[str, object]) -> dict[str, object]:
        return service.post(request, _object)

    return send


def _object(answer: Any) -> dict[str, object]:
    if not isinstance(answer, dict):
        raise TypeError("the answer is not a JSON object")
    return answer


@dataclass
class Asked:
    """Batches sent to the service and not collected yet (:meth:`PseudonymClient.ask`): per
    batch, the memo it fills, its key version, the NIRs, their blinded states (kept here,
    never sent) and the answer to come."""

    batches: list[tuple[dict[str, dict[str, str]], str, list[str], list[Blinded], Future[dict[str, object]]]] = \
        field(default_factory=list)


class PseudonymClient:
    """Pseudonyms v2 of one fund's people: ``{"key_id", "value"}`` members, batched and cached.

    :meth:`ask` blinds and sends without waiting (the round trip runs in a thread of its
    own, the service's evaluation in its process); :meth:`collect` waits, checks each batch's
    proof and unblinds. So a caller can have the service work on the next batch while it
    signs and sends the current one. Nothing enters the cache before its proof verified.

    During a rotation's overlap window (the pinned ``public.json`` lists two active versions
    or more) every person is also asked under the previous version, and :meth:`previous`
    gives the ``pseudonym_previous`` link (contract §4.3); during a v1 → v2 migration window
    (``HELP_PSEUDONYM_MIGRATION=v1``) the link is the v1 pseudonym, computed with the v1
    exchange key the fund still holds until the window ends."""

    def __init__(self, fund: Fund, public_keys: dict[str, bytes], current: str, transport: Transport,
                 *, batch_limit: int = 4096, cache: PseudonymCache | None = None,
                 previous_version: str | None = None, link_v1: PseudonymSource | None = None) -> None:
        self.fund = fund
        self.key_version = current
        #: The version the link names (the newest active one before ``current``), or None.
        self.previous_version = previous_version
        self._link_v1 = link_v1 if previous_version is None else None
        self._keys = public_keys
        self._send = transport
        self._limit = batch_limit
        self._cache: dict[str, dict[str, str]] = {}
        self._previous: dict[str, dict[str, str]] = {}
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
        current = current_version(versions).key_version
        link_v1: PseudonymSource | None = None
        if settings.pseudonym_migration == "v1":
            from services.producer.keys import load_exchange_key
            from services.producer.pseudonym import HmacSource

            link_v1 = HmacSource(*load_exchange_key(settings.key_dir))
        return cls(fund, keys, current,
                   transport or http_transport(settings.pseudonymiser_url, settings.pseudonymiser_timeout_s),
                   batch_limit=settings.pseudonymiser_batch_limit, cache=cache,
                   previous_version=previous_version(versions), link_v1=link_v1)

    def prefetch(self, nirs: Iterable[str]) -> None:
        """Ask the service for every normalised NIR of ``nirs`` not cached yet (and, in an
        overlap window, under the previous version too), and wait."""
        self.collect(self.ask(nirs))

    def ask(self, nirs: Iterable[str]) -> Asked:
        """Blind every normalised NIR of ``nirs`` not cached yet (nor in the local cache file),
        under the current version and, in an overlap window, the previous one, and send the
        batches without waiting for the answers (:meth:`collect` them)."""
        wanted = list(dict.fromkeys(nirs))
        asked = Asked()
        self._ask(asked, self._cache, self.key_version, wanted)
        if self.previous_version is not None:
            self._ask(asked, self._previous, self.previous_version, wanted)
        return asked

    def _ask(self, asked: Asked, memo: dict[str, dict[str, str]], version: str, nirs: list[str]) -> None:
        todo = [n for n in nirs if n not in memo]
        if todo and self._stored is not None:
            known = self._stored.get_many(version, todo)
            for nir, value in known.items():
                memo[nir] = {"key_id": version, "value": value}
            todo = [n for n in todo if n not in known]
        if todo and self._sender is None:
            # One thread: the round trips leave in order; the CPU work (blind, verify) stays here.
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pseudonymiser-client")
        for start in range(0, len(todo), self._limit):
            chunk = todo[start:start + self._limit]
            blinded = [blind(oprf_input(n)) for n in chunk]
            request: dict[str, object] = {"fund": self.fund.value, "request_id": secrets.token_hex(16),
                                          "key_version": version, "blinded": [b64u(b.element) for b in blinded]}
            assert self._sender is not None
            asked.batches.append((memo, version, chunk, blinded, self._sender.submit(self._send, request)))

    def collect(self, asked: Asked) -> None:
        """Wait for the answers of ``asked``, check each batch's proof, unblind, and cache.
        Raises :class:`Refused` (``preuve_invalide``, or the service's refusal) and caches
        nothing of a batch whose proof does not verify."""
        for memo, version, chunk, blinded, answer in asked.batches:
            got = dict(zip(chunk, self._finalize(blinded, version, answer.result()), strict=True))
            for nir, value in got.items():
                memo[nir] = {"key_id": version, "value": value}
            if self._stored is not None:
                self._stored.put_many(version, got)
        asked.batches.clear()

    def pseudonym(self, nir: str) -> dict[str, str]:
        """The ``pseudonym`` member of the normalised ``nir`` (asked alone if not prefetched)."""
        found = self._cache.get(nir)
        if found is None:
            self.prefetch([nir])
            found = self._cache[nir]
        return found

    def previous(self, nir: str) -> dict[str, str] | None:
        """The ``pseudonym_previous`` member of ``nir``: None outside a window."""
        if self.previous_version is None:
            return None if self._link_v1 is None else self._link_v1.pseudonym(nir)
        found = self._previous.get(nir)
        if found is None:
            self.prefetch([nir])
            found = self._previous[nir]
        return found

    def _finalize(self, blinded: list[Blinded], version: str, answer: dict[str, object]) -> list[str]:
        answered = answer.get("key_version")
        evaluated = answer.get("evaluated")
        key = self._keys.get(answered) if isinstance(answered, str) else None
        if key is None or answered != version or not isinstance(evaluated, str):
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
