"""Scheme v2's contract between a fund and the pseudonymisation service.

What the service publishes and every fund pins: its key versions (``public.json``, written by
the service's key store, :mod:`services.pseudonymiser.keystore`), and how it refuses a batch
(:class:`Refused`, with a :class:`~services.core.reasons.Reason`). The fund's side is
:mod:`services.producer.pseudonym_v2`; the service's is :mod:`services.pseudonymiser`.

Layout of the key store (``Settings.pseudonymiser_key_dir``, default ``<key_dir>/pseudonymiser``)::

    seeds/<key_version>.seed   32 random bytes, 0600 (the service's alone)
    public.json                {"suite": "ristretto255-SHA512", "versions": [{"key_version",
                                "public_key" (b64url of 32 bytes), "status", "created_at"}]}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from services.core.reasons import Reason
from services.core.signing import b64u_decode
from services.errors import ConfigurationError, Rejected

VERSION_PATTERN = re.compile(r"^pk-[0-9a-f]{8}$")


@dataclass(frozen=True)
class PublicVersion:
    key_version: str
    public_key: bytes
    status: str
    created_at: str


def public_path(folder: Path) -> Path:
    return folder / "public.json"


def read_public(path: Path) -> list[PublicVersion]:
    """The published versions (what a fund pins); :class:`ConfigurationError` if unreadable."""
    try:
        doc = json.loads(path.read_bytes())
        out = [PublicVersion(v["key_version"], b64u_decode(v["public_key"]), v["status"], v["created_at"])
               for v in doc["versions"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cannot read the pseudonymiser's public keys {path}: {exc}",
                                 "create them with `help-exchange pseudonymiser init-key`, "
                                 "or copy the service's public.json") from exc
    if any(not VERSION_PATTERN.fullmatch(v.key_version) or len(v.public_key) != 32 for v in out):
        raise ConfigurationError(f"{path}: a key version or public key is malformed", "restore the file")
    return out


def current_version(versions: list[PublicVersion]) -> PublicVersion:
    active = [v for v in versions if v.status == "active"]
    if not active:
        raise ConfigurationError("the pseudonymiser publishes no active key version",
                                 "create one with `help-exchange pseudonymiser init-key`")
    return max(active, key=lambda v: (v.created_at, v.key_version))


def previous_version(versions: list[PublicVersion]) -> str | None:
    """During an overlap window (two active versions or more): the newest active version
    before the current one, which a signal's ``pseudonym_previous`` names (contract §4.3)."""
    active = sorted((v for v in versions if v.status == "active"), key=lambda v: (v.created_at, v.key_version))
    return active[-2].key_version if len(active) >= 2 else None


class Refused(Rejected):
    """A batch refused: ``reason`` says why (``detail``, in words); nothing was evaluated.

    The field is the request as a whole; the message keeps the form the operators know,
    ``"<reason code>: <what>"``."""

    def __init__(self, reason: Reason, what: str, hint: str) -> None:
        super().__init__(reason, "request", f"{reason.value}: {what}", hint)
        self.detail = what
        self._parts = (reason, what, hint)

    def __reduce__(self) -> tuple[type[Refused], tuple[Reason, str, str]]:  # type: ignore[override]
        """Picklable (it crosses from the producer's worker processes)."""
        return (type(self), self._parts)
