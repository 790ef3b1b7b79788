"""The pseudonym: HMAC-SHA256 of the normalised NIR under the current exchange key.

Every producer holds the same exchange key, so the same person gets the same pseudonym at
every fund and the correlator can join their signals without ever seeing a NIR. The key
id travels with the value so that keys can rotate: the registry lists the ids still
accepted. Value: base64url without padding of the 32-byte MAC (43 characters).
"""

from __future__ import annotations

import hashlib
import hmac

from services.core.signing import b64u

PREFIX = b"help-exchange/pseudonym/v1\x00"


def pseudonym_value(exchange_key: bytes, nir: str) -> str:
    """The pseudonym of the already normalised ``nir`` (see :func:`services.producer.nir.normalise`)."""
    return b64u(hmac.digest(exchange_key, PREFIX + nir.encode("ascii"), hashlib.sha256))


def pseudonym(exchange_key_id: str, exchange_key: bytes, nir: str) -> dict[str, str]:
    """The ``pseudonym`` member of a signal."""
    return {"key_id": exchange_key_id, "value": pseudonym_value(exchange_key, nir)}
