"""The fund's side of the key endpoint (contract §4.4): the keys its signals are sealed with.

Asked in batches (one request per batch of signals to build, pseudonyms the cache does not
hold), kept in a bounded in-memory cache for the run only (never in a file: a key is held
as long as the signals it seals wait in the outbox, where each row keeps its own until its
receipt, :mod:`.outbox`). A key the exchange replaced (an erasure) is forgotten when a
receipt says so (:meth:`SignalKeyClient.forget`), and asked again.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from services.core.signing import b64u_decode
from services.core.types import Fund
from services.errors import ConfigurationError
from services.platform.json_http import JsonService
from services.platform.settings import Settings

#: (fund, pseudonym values) -> the endpoint's answers, in order.
Transport = Callable[[Fund, list[str]], list[dict[str, object]]]
#: Persons whose keys a run keeps at most (about 0.2 KB each).
CACHE_MAX = 200_000
_PACKED = struct.Struct(">16sI32s")


class FundKey(NamedTuple):
    """A person's key for this fund: ``subject`` and ``epoch`` go into the sealed member."""

    subject: bytes
    epoch: int
    key: bytes

    def pack(self) -> bytes:
        """52 bytes, as the outbox keeps it beside the row it sealed."""
        return _PACKED.pack(self.subject, self.epoch, self.key)

    @classmethod
    def unpack(cls, raw: bytes) -> FundKey:
        subject, epoch, key = _PACKED.unpack(raw)
        return cls(subject, epoch, key)


def http_transport(url: str, timeout: float) -> Transport:
    endpoint = JsonService("the key endpoint", url, "/v1/signal-keys", timeout,
                           unclear_hint="check HELP_SIGNAL_KEYS_URL, or try again in a moment",
                           down_hint="start it (`help-exchange signal-keys serve`) or fix HELP_SIGNAL_KEYS_URL; "
                                     "the lines are not lost: publish the file again")

    def send(fund: Fund, pseudonyms: list[str]) -> list[dict[str, object]]:
        return endpoint.post({"fund": fund.value, "pseudonyms": pseudonyms}, _keys)

    return send


def _keys(answer: Any) -> list[dict[str, object]]:
    keys: list[dict[str, object]] = answer["keys"]
    return keys


class SignalKeyClient:
    """One fund's keys, by pseudonym value: asked in batches, cached (bounded)."""

    def __init__(self, fund: Fund, transport: Transport, *, batch_limit: int = 4096,
                 cache_max: int = CACHE_MAX) -> None:
        self.fund = fund
        self._transport = transport
        self.batch_limit = batch_limit
        self.cache_max = cache_max
        self._cache: OrderedDict[str, FundKey] = OrderedDict()
        #: requests sent (for the benchmarks and the tests)
        self.requests = 0

    @classmethod
    def from_settings(cls, settings: Settings, fund: Fund) -> SignalKeyClient:
        return cls(fund, http_transport(settings.signal_keys_url, settings.signal_keys_timeout_s),
                   batch_limit=settings.signal_keys_batch_limit)

    def prefetch(self, pseudonyms: Iterable[str]) -> None:
        """Ask for the keys of these persons that are not cached, in batches."""
        missing = list(dict.fromkeys(p for p in pseudonyms if p not in self._cache))
        for i in range(0, len(missing), self.batch_limit):
            chunk = missing[i:i + self.batch_limit]
            self.requests += 1
            answers = self._transport(self.fund, chunk)
            if len(answers) != len(chunk):
                raise ConfigurationError(f"the key endpoint answered {len(answers)} keys for {len(chunk)} pseudonyms",
                                         "check HELP_SIGNAL_KEYS_URL names the exchange's key endpoint")
            for asked, answer in zip(chunk, answers, strict=True):
                try:
                    found = FundKey(bytes.fromhex(str(answer["subject"])), int(str(answer["epoch"])),
                                    b64u_decode(str(answer["key"])))
                    ok = answer["pseudonym"] == asked and len(found.subject) == 16 and len(found.key) == 32
                except (KeyError, ValueError):
                    ok = False
                if not ok:
                    raise ConfigurationError("the key endpoint's answer is malformed",
                                             "check HELP_SIGNAL_KEYS_URL names the exchange's key endpoint")
                self._cache[asked] = found
        while len(self._cache) > self.cache_max:
            self._cache.popitem(last=False)

    def key(self, pseudonym: str) -> FundKey:
        """The key for this person (asked alone if not prefetched)."""
        found = self._cache.get(pseudonym)
        if found is None:
            self.prefetch([pseudonym])
            found = self._cache[pseudonym]
        return found

    def forget(self, pseudonyms: Iterable[str]) -> None:
        """These persons' keys were replaced: ask again next time."""
        for p in pseudonyms:
            self._cache.pop(p, None)
